"""Crash safety with real processes (SPEC §5 Durability): SIGKILL a worker, start another.

A worker killed at any point loses no recorded step; the next worker resumes every
unfinished instance; step bodies run at least once, and a step whose result was
recorded never runs again. The workflows are in app.py; each step body journals its
executions, so the tests count them (harness.assert_consistent checks the lot).

Workers use a 30 s lease unless a test says otherwise: a takeover well within that
shows that a new worker on the same host freed the dead worker's leases at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from typing import Any

from stepstone import Instance, InstanceDetail
from stepstone.instances import StepDetail

from .harness import Cluster, assert_consistent, eventually, pass_time_until

TAKEOVER = 10.0
"""Seconds within which a new worker finishes what a dead one left (the lease is 30 s)."""
PROMPT = 1.0
"""Seconds within which a timer that fell due while no worker ran fires once one starts
(shorter than the timers of the tests, so that a timer started afresh would be caught)."""


def step_of(detail: InstanceDetail, name: str) -> StepDetail | None:
    return next((s for s in detail.steps if s.name == name), None)


async def waiting_in(inst: Instance, name: str) -> StepDetail | None:
    """The step `name` once the instance is suspended in it (sleep, event wait or retry wait)."""
    detail = await inst.describe()
    step = step_of(detail, name)
    if detail.status == "waiting" and step is not None and step.status == "waiting":
        return step
    return None


async def body_started(cluster: Cluster, inst: Instance, step: str) -> bool:
    return bool(cluster.runs(inst.id, step))


def multistep_output(n: int) -> dict[str, int]:
    a = n + 1
    return {"a": a, "left": 2 * a, "right": 3 * a, "slow": 5 * a, "c": 50 * a}


async def test_instances_a_worker_created_for_itself_are_taken_over_when_it_dies(cluster: Cluster) -> None:
    first = await cluster.start_worker(create=4)
    ids = [f"own-{n}" for n in range(4)]

    async def all_in_slow_step() -> bool:
        return all(cluster.runs(instance_id, "slow") for instance_id in ids)

    # Created leased to the first worker, they run there without being claimed: kill it mid-step.
    await eventually(all_in_slow_step, timeout=TAKEOVER, what="every instance's slow step to start")
    cluster.kill(first)
    client = await cluster.client()
    instances = [await client.workflow("crash-multistep").get(instance_id) for instance_id in ids]
    assert {(await inst.status()).status for inst in instances} == {"running"}

    second = await cluster.start_worker()
    rerun = 0
    for n, inst in enumerate(instances):
        final = await inst.wait(timeout=TAKEOVER)
        assert final.status == "complete" and final.output == multistep_output(n)
        await assert_consistent(inst, cluster.journal(), cluster.killed)
        assert [r.pid for r in cluster.runs(inst.id, "a")] == [first.pid]
        slow = [r.pid for r in cluster.runs(inst.id, "slow")]
        assert slow in ([first.pid], [first.pid, second.pid])  # killed mid-body, or just after it ended
        rerun += slow == [first.pid, second.pid]
    assert rerun >= 1, "the first worker was killed after every slow step had ended"
    cluster.assert_no_errors()


async def test_step_killed_mid_body_runs_again_and_recorded_steps_do_not(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-multistep").create(id="mid-step", params={"n": 1, "slow": 1.5})

    slow_started = functools.partial(body_started, cluster, inst, "slow")
    await eventually(slow_started, timeout=TAKEOVER, what="the slow step to start")
    cluster.kill(first)
    detail = await inst.describe()
    assert detail.status == "running"
    assert sorted((s.name, s.status) for s in detail.steps) == [
        ("a", "complete"),
        ("left", "complete"),
        ("right", "complete"),
    ]

    second = await cluster.start_worker()
    final = await inst.wait(timeout=TAKEOVER)

    assert final.status == "complete" and final.output == multistep_output(1)
    await assert_consistent(inst, cluster.journal(), cluster.killed)
    assert [r.pid for r in cluster.runs(inst.id, "slow")] == [first.pid, second.pid]
    for name in ("a", "left", "right"):
        assert [r.pid for r in cluster.runs(inst.id, name)] == [first.pid], name
    assert [r.pid for r in cluster.runs(inst.id, "c")] == [second.pid]
    cluster.assert_no_errors()


async def test_concurrent_branches_resumed_after_a_kill_keep_their_own_steps(cluster: Cluster) -> None:
    # Live, branch 1 calls "process" first (#1); branch 0 calls it second and is killed in
    # it. The next worker's replay has branch 0 call "process" first: it must run its own
    # step again, not take branch 1's recorded result.
    first = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-branches").create(id="branches", params={"slow": 30})
    await eventually(
        functools.partial(body_started, cluster, inst, "process-0"), timeout=TAKEOVER, what="branch 0's process"
    )
    cluster.kill(first)
    detail = await inst.describe()
    assert sorted((s.name, s.count, s.status) for s in detail.steps) == [
        ("fetch", 1, "complete"),
        ("fetch", 2, "complete"),
        ("process", 1, "complete"),
    ]

    second = await cluster.start_worker()
    final = await inst.wait(timeout=TAKEOVER)
    assert (final.status, final.output) == ("complete", [[0, "p0"], [1, "p1"]])
    for label in ("fetch-0", "fetch-1", "process-1"):
        assert [r.pid for r in cluster.runs(inst.id, label)] == [first.pid], label
    assert [r.pid for r in cluster.runs(inst.id, "process-0")] == [first.pid, second.pid]
    done = await inst.describe()
    assert sorted((s.name, s.status) for s in done.steps) == [
        ("fetch", "complete"), ("fetch", "complete"), ("process", "complete"), ("process", "complete"),
    ]  # fmt: skip
    cluster.assert_no_errors()


async def test_sleep_that_fell_due_while_no_worker_ran_fires_promptly(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-sleeper").create(id="sleeper", params={"nap": 1.5})

    nap = await eventually(lambda: waiting_in(inst, "nap"), timeout=TAKEOVER, what="the instance to sleep")
    assert nap.due is not None
    due = nap.due.timestamp()
    cluster.kill(first)
    await pass_time_until(due + 0.5)
    assert (await inst.status()).status == "waiting"

    second = await cluster.start_worker()
    started = time.time()
    final = await inst.wait(timeout=TAKEOVER)

    assert final.status == "complete"
    assert isinstance(final.output, dict) and final.output["before"] == "awake"
    [after] = cluster.runs(inst.id, "after")
    assert after.pid == second.pid
    assert due <= after.time < started + PROMPT, f"woke {after.time - started:.2f} s after the worker started"
    detail = await assert_consistent(inst, cluster.journal(), cluster.killed)
    assert [(s.kind, s.name, s.status) for s in detail.steps] == [
        ("do", "before", "complete"),
        ("sleep", "nap", "complete"),
        ("do", "after", "complete"),
    ]
    assert [r.pid for r in cluster.runs(inst.id, "before")] == [first.pid]
    cluster.assert_no_errors()


async def test_retry_wait_that_fell_due_while_no_worker_ran_fires_promptly(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    delay = 1.5
    inst = await client.workflow("crash-retrier").create(id="retrier", params={"failures": 2, "delay": delay})

    flaky = await eventually(lambda: waiting_in(inst, "flaky"), timeout=TAKEOVER, what="the first retry wait")
    assert [a.attempt for a in flaky.attempts] == [1] and flaky.due is not None
    due = flaky.due.timestamp()
    cluster.kill(first)
    await pass_time_until(due + 0.5)
    assert (await inst.status()).status == "waiting"

    second = await cluster.start_worker()
    started = time.time()
    final = await inst.wait(timeout=TAKEOVER)

    assert final.status == "complete" and final.output == {"flaky": 3, "after": 103}
    runs = cluster.runs(inst.id, "flaky")
    assert [(r.attempt, r.pid) for r in runs] == [(1, first.pid), (2, second.pid), (3, second.pid)]
    assert runs[1].time < started + PROMPT, f"retried {runs[1].time - started:.2f} s after the worker started"
    assert runs[2].time - runs[1].time >= delay, "the second retry did not wait its delay"
    detail = await assert_consistent(inst, cluster.journal(), cluster.killed)
    step = step_of(detail, "flaky")
    assert step is not None and [a.outcome for a in step.attempts] == ["error", "error", "ok"]
    cluster.assert_no_errors()


async def test_event_wait_survives_a_kill_and_no_event_is_lost(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    approval = client.workflow("crash-approval")
    down = await approval.create(id="sent-while-down", params={"tag": "down"})
    up = await approval.create(id="sent-after-restart", params={"tag": "up"})
    for inst in (down, up):
        await eventually(functools.partial(waiting_in, inst, "approval"), timeout=TAKEOVER, what=f"{inst} to wait")
    cluster.kill(first)

    # With no worker running: an event for a waiting instance, and a new instance whose
    # event arrives before its wait even starts.
    await down.send_event("approve", {"by": "ada"})
    early = await approval.create(id="sent-before-wait", params={"tag": "early"})
    await early.send_event("approve", {"by": "bob"})

    second = await cluster.start_worker()
    await down.wait(timeout=TAKEOVER)
    await early.wait(timeout=TAKEOVER)
    await up.send_event("approve", {"by": "cy"})
    await up.wait(timeout=TAKEOVER)

    for inst, tag, by in ((down, "down", "ada"), (up, "up", "cy"), (early, "early", "bob")):
        status = await inst.status()
        assert status.status == "complete", (inst, status)
        assert status.output == {
            "before": tag.upper(),
            "event": {"by": by},
            "after": f"{tag.upper()} approved by {by}",
        }
        detail = await assert_consistent(inst, cluster.journal(), cluster.killed)
        wait = step_of(detail, "approval")
        assert wait is not None and wait.status == "complete" and wait.result is not None
        [after] = cluster.runs(inst.id, "after")
        assert after.pid == second.pid
    for inst in (down, up):
        assert [r.pid for r in cluster.runs(inst.id, "before")] == [first.pid]
    cluster.assert_no_errors()


async def test_kill_between_step_end_and_its_record_runs_the_step_again_once(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-suicide").create(id="suicide")

    await cluster.died(first, timeout=TAKEOVER)
    # The kill races the record (see app.Suicide): either the result was lost, and the
    # body runs again in the next worker, or it was recorded first and never runs again.
    recorded_first = step_of(await inst.describe(), "fatal") is not None
    assert [r.pid for r in cluster.runs(inst.id, "fatal")] == [first.pid]

    second = await cluster.start_worker()
    final = await inst.wait(timeout=TAKEOVER)

    assert final.status == "complete" and final.output == {"before": 1, "fatal": 2, "after": 3}
    await assert_consistent(inst, cluster.journal(), cluster.killed)
    expected = [first.pid] if recorded_first else [first.pid, second.pid]
    assert [r.pid for r in cluster.runs(inst.id, "fatal")] == expected
    assert [r.pid for r in cluster.runs(inst.id, "before")] == [first.pid]
    assert len(cluster.runs(inst.id, "after")) == 1
    cluster.assert_no_errors()


async def test_kill_after_an_event_is_taken_and_before_its_record_takes_it_again(cluster: Cluster) -> None:
    first = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-taken-then-killed").create(id="taken")
    await eventually(functools.partial(waiting_in, inst, "approval"), timeout=TAKEOVER, what="the wait")
    await inst.send_event("approve", {"by": "ada"})
    await cluster.died(first, timeout=TAKEOVER)
    # The kill races the record of the step, as in Suicide, and may race that of the event
    # taken (a commit the step does not wait for), which cannot come after the step's.
    detail = await inst.describe()
    recorded_first = step_of(detail, "after") is not None
    wait = step_of(detail, "approval")
    assert wait is not None and (wait.status == "complete" or not recorded_first)

    second = await cluster.start_worker()
    final = await inst.wait(timeout=TAKEOVER)

    assert final.status == "complete"
    assert final.output == {"event": {"by": "ada"}, "after": "approved by ada"}
    detail = await assert_consistent(inst, cluster.journal(), cluster.killed)
    wait = step_of(detail, "approval")
    assert wait is not None and wait.status == "complete" and wait.result is not None
    expected = [first.pid] if recorded_first else [first.pid, second.pid]
    assert [r.pid for r in cluster.runs(inst.id, "after")] == expected
    cluster.assert_no_errors()


async def test_worker_on_another_host_takes_over_when_the_lease_expires(cluster: Cluster) -> None:
    lease = 2.0
    first = await cluster.start_worker(lease_seconds=lease)
    client = await cluster.client()
    inst = await client.workflow("crash-multistep").create(id="cross-host", params={"n": 2, "slow": 1.0})

    slow_started = functools.partial(body_started, cluster, inst, "slow")
    await eventually(slow_started, timeout=TAKEOVER, what="the slow step to start")
    killed_at = cluster.kill(first)
    # Another host cannot tell whether the first worker's pid is alive: it must wait
    # for the lease (renewed every lease/3 s) to run out.
    second = await cluster.start_worker(lease_seconds=lease, host=f"elsewhere-{os.getpid()}")
    final = await inst.wait(timeout=lease + TAKEOVER)

    assert final.status == "complete" and final.output == multistep_output(2)
    await assert_consistent(inst, cluster.journal(), cluster.killed)
    runs = cluster.runs(inst.id, "slow")
    assert [r.pid for r in runs] == [first.pid, second.pid]
    retaken = runs[1].time - killed_at
    assert lease * 2 / 3 - 0.1 <= retaken <= lease + PROMPT, f"taken over {retaken:.2f} s after the kill"
    cluster.assert_no_errors()


# -- chaos ---------------------------------------------------------------------------------


def _batch(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Instances to create, by workflow: quick and slow steps, sleeps, retries, events, a suicide."""
    return {
        "crash-multistep": [{"id": f"m{i}", "params": {"n": i, "slow": rng.uniform(0.1, 1.0)}} for i in range(14)],
        "crash-sleeper": [{"id": f"s{i}", "params": {"nap": rng.uniform(0.2, 2.5)}} for i in range(8)],
        "crash-retrier": [
            {"id": f"r{i}", "params": {"failures": rng.choice([1, 2]), "delay": rng.uniform(0.2, 1.0)}}
            for i in range(8)
        ],
        "crash-approval": [{"id": f"e{i}", "params": {"tag": f"t{i}"}} for i in range(8)],
        "crash-suicide": [{"id": f"k{i}", "params": {}} for i in range(2)],
    }


def _expected_output(workflow: str, params: dict[str, Any], output: Any) -> Any:
    """The output an instance must end with (a sleeper's wake time is whatever it reports)."""
    if workflow == "crash-multistep":
        return multistep_output(params["n"])
    if workflow == "crash-sleeper":
        return {"before": "awake", "woke_at": output["woke_at"]}
    if workflow == "crash-retrier":
        return {"flaky": params["failures"] + 1, "after": params["failures"] + 101}
    if workflow == "crash-approval":
        tag, by = params["tag"].upper(), params["tag"]
        return {"before": tag, "event": {"by": by}, "after": f"{tag} approved by {by}"}
    return {"before": 1, "fatal": 2, "after": 3}


async def test_random_kills_lose_no_step_and_repeat_none_needlessly(cluster: Cluster) -> None:
    seed = int(os.environ.get("STEPSTONE_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    context = f"(seed {seed}; STEPSTONE_CRASH_SEED={seed} replays the same random choices)"
    workers = 2

    for _ in range(workers):
        await cluster.start_worker()
    client = await cluster.client()
    params: dict[Instance, tuple[str, dict[str, Any]]] = {}
    batch = _batch(rng)
    for workflow, items in batch.items():
        for inst, item in zip(await client.workflow(workflow).create_batch(items), items, strict=True):
            params[inst] = (workflow, item["params"])
    events = {inst: rng.uniform(0.0, 4.0) for inst, (workflow, _) in params.items() if workflow == "crash-approval"}
    begun = time.monotonic()

    async def tend(until: float) -> None:
        """Until monotonic `until`: send the events that are due, keep `workers` workers running."""
        while True:
            for inst, at in list(events.items()):
                if time.monotonic() - begun >= at:
                    await inst.send_event("approve", {"by": params[inst][1]["tag"]})
                    del events[inst]
            cluster.reap_dead()
            while len(cluster.live()) < workers:
                await cluster.start_worker()
            if time.monotonic() >= until:
                return
            await asyncio.sleep(0.05)

    kills = rng.randint(3, 5)
    for _ in range(kills):
        await tend(time.monotonic() + rng.uniform(0.3, 1.5))
        while not (live := cluster.live()):  # a suicide may have just struck
            await tend(time.monotonic())
        cluster.kill(rng.choice(live))
    await tend(begun + 4.0)

    async def all_ended() -> bool:
        await tend(time.monotonic())
        statuses = await asyncio.gather(*(inst.status() for inst in params))
        errored = [(inst, s) for inst, s in zip(params, statuses, strict=True) if s.status in ("errored", "terminated")]
        assert not errored, f"{errored} {context}"
        return all(s.status == "complete" for s in statuses)

    await eventually(all_ended, timeout=45, what=f"every instance to complete {context}")

    journal = cluster.journal()
    assert len(cluster.killed) >= kills, context  # and the suicides: one death may serve both
    for inst, (workflow, p) in params.items():
        status = await inst.status()
        assert status.output == _expected_output(workflow, p, status.output), f"{inst} {p} {context}"
        detail = await assert_consistent(inst, journal, cluster.killed)
        nap = step_of(detail, "nap")
        if nap is not None:
            assert nap.due is not None and status.output["woke_at"] >= nap.due.timestamp(), f"{inst} {context}"
    cluster.assert_no_errors()

"""Many worker processes on one store, SIGKILLed and replaced at random moments.

Four workers share the store: two on this host, with a 30 s lease, whose dead
neighbours' leases are freed at once by the pid check of a worker started on the same
host; and two that pretend to run on hosts of their own, with a 2 s lease, whose
instances only another worker can take over, once their leases expire. A few hundred
instances (steps run concurrently, slow steps, durable sleeps, retries, events sent by
the test at random times) are created up front and while workers are killed and
replaced. Afterwards, from the store and the step bodies' journal (app.py):

- every instance is complete with the output its params call for;
- every step is recorded once, each attempt from the last run of its body, which ran
  again only where a killed worker had run it (harness.assert_consistent);
- no step ran again once recorded: every run of a step began before the first run of
  the step that follows it (which waits for that record);
- no step body ran on two workers at once: a body ran again only after the worker
  that ran it before was dead;
- both ways of taking over a dead worker's instances were used.

The random choices come from a seed printed on failure; STEPSTONE_CRASH_SEED=SEED
replays them (the timing of processes varies from run to run).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from stepstone import Instance

from .harness import Cluster, JournalLine, WorkerProcess, assert_consistent, eventually

Kind = Literal["local", "remote"]
FLEET: dict[Kind, int] = {"local": 2, "remote": 2}
LEASES: dict[Kind, float] = {"local": 30.0, "remote": 2.0}
CHAOS = 8.0
"""Seconds during which instances are created, events sent and workers killed."""
KILL_GRACE = 2.0
"""A worker is killed at its moment if it is running a slow step (else up to this many
seconds later, once it is; or then anyway), so that kills cut step bodies short."""
SETTLE = 30.0
"""Seconds for every instance to complete after that."""
LOCAL_TAKEOVER = 10.0
"""Seconds within which a body cut short on this host runs again: far less than the
local lease, as the replacement worker frees a dead neighbour's leases when it starts."""

# The steps of each workflow, in groups run one after the other (a group's steps run
# concurrently): a step's body starts only once the group before it is recorded.
STEP_ORDER: dict[str, list[tuple[str, ...]]] = {
    "crash-multistep": [("a",), ("left", "right"), ("slow",), ("c",)],
    "crash-sleeper": [("before",), ("after",)],
    "crash-retrier": [("flaky",), ("after",)],
    "crash-approval": [("before",), ("after",)],
}


def seed_from_env() -> int:
    return int(os.environ.get("STEPSTONE_CRASH_SEED") or random.SystemRandom().randrange(2**32))


@dataclass
class Item:
    workflow: str
    id: str
    params: dict[str, Any]
    create_at: float
    """Seconds into the chaos."""
    event_at: float | None = None
    """Seconds into the chaos at which its `approve` event is sent (approval instances)."""


def plan_instances(rng: random.Random) -> list[Item]:
    """Three hundred instances, a fifth created at once, the rest at random moments."""
    items = (
        [Item("crash-multistep", f"m{i}", {"n": i, "slow": rng.uniform(0.1, 1.5)}, 0.0) for i in range(100)]
        + [Item("crash-sleeper", f"s{i}", {"nap": rng.uniform(0.2, 3.0)}, 0.0) for i in range(60)]
        + [
            Item("crash-retrier", f"r{i}", {"failures": rng.choice([1, 2]), "delay": rng.uniform(0.1, 1.0)}, 0.0)
            for i in range(60)
        ]
        + [Item("crash-approval", f"e{i}", {"tag": f"t{i}"}, 0.0) for i in range(80)]
    )
    for item in items:
        if rng.random() < 0.8:
            item.create_at = rng.uniform(0.0, CHAOS - 1.0)
        if item.workflow == "crash-approval":  # sometimes before its wait begins
            item.event_at = item.create_at + rng.uniform(0.0, CHAOS / 2)
    return items


def plan_kills(rng: random.Random) -> list[tuple[float, Kind]]:
    """When to kill a worker of which kind: at least two of each."""
    kinds: list[Kind] = ["local", "remote", "local", "remote"]
    kinds += [rng.choice(["local", "remote"]) for _ in range(rng.randint(0, 2))]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(0.5, CHAOS) for _ in kinds)
    return list(zip(times, kinds, strict=True))


def expected_output(item: Item, output: Any) -> Any:
    """The output an instance must end with (a sleeper's wake time is whatever it reports)."""
    p = item.params
    if item.workflow == "crash-multistep":
        a = p["n"] + 1
        return {"a": a, "left": 2 * a, "right": 3 * a, "slow": 5 * a, "c": 50 * a}
    if item.workflow == "crash-sleeper":
        return {"before": "awake", "woke_at": output["woke_at"]}
    if item.workflow == "crash-retrier":
        return {"flaky": p["failures"] + 1, "after": p["failures"] + 101}
    tag = p["tag"].upper()
    return {"before": tag, "event": {"by": p["tag"]}, "after": f"{tag} approved by {p['tag']}"}


@dataclass
class Fleet:
    """Keeps FLEET's workers running: replaces each dead one by a new one of its kind."""

    cluster: Cluster
    kinds: dict[int, Kind] = field(default_factory=dict)
    """The kind of every worker started, by pid."""
    starting: dict[Kind, set[asyncio.Task[WorkerProcess]]] = field(default_factory=lambda: defaultdict(set))
    hosts: itertools.count[int] = field(default_factory=itertools.count)

    def live(self, kind: Kind) -> list[WorkerProcess]:
        return [w for w in self.cluster.live() if self.kinds.get(w.pid) == kind]

    async def _start(self, kind: Kind) -> WorkerProcess:
        # Each remote worker is a host of its own: nobody can check its pid.
        host = f"remote-{os.getpid()}-{next(self.hosts)}" if kind == "remote" else None
        worker = await self.cluster.start_worker(lease_seconds=LEASES[kind], host=host)
        self.kinds[worker.pid] = kind
        return worker

    def replenish(self) -> None:
        """Start (without waiting for them) the workers that are missing."""
        assert not self.cluster.reap_dead(), "a worker died though nobody killed it"
        for kind, wanted in FLEET.items():
            self.starting[kind] = {task for task in self.starting[kind] if not task.done()}
            for _ in range(wanted - len(self.live(kind)) - len(self.starting[kind])):
                self.starting[kind].add(asyncio.create_task(self._start(kind)))

    async def ready(self) -> None:
        """Wait for the workers being started (raising if one failed to start)."""
        for tasks in self.starting.values():
            for task in tasks:
                await task

    def close(self) -> None:
        for tasks in self.starting.values():
            for task in tasks:
                task.cancel()


def in_slow_steps(cluster: Cluster, workers: list[WorkerProcess], slow: dict[str, float]) -> list[WorkerProcess]:
    """The workers running the slow step of a crash-multistep instance (`slow`: its seconds, by id),
    with a tenth of a second of it left at least."""
    now = time.time()
    running = {
        line.pid
        for line in cluster.journal()
        if line.step == "slow" and line.instance in slow and line.time + slow[line.instance] - 0.1 > now
    }
    return [w for w in workers if w.pid in running]


def assert_no_step_ran_after_it_was_recorded(inst: Instance, workflow: str, mine: list[JournalLine]) -> None:
    for earlier, later in itertools.pairwise(STEP_ORDER[workflow]):
        last_start = max(line.time for line in mine if line.step in earlier)
        next_start = min(line.time for line in mine if line.step in later)
        assert last_start < next_start, f"{inst}: a step of {earlier} ran after {later} began: {mine}"


def takeovers(
    inst: Instance, mine: list[JournalLine], kill_times: dict[int, float]
) -> list[tuple[JournalLine, JournalLine]]:
    """The runs of a body that ran again: each must begin after the worker that ran it before died.

    Returns the pairs (run cut short by a kill, next run).
    """
    cut_short = []
    attempts: dict[tuple[str, int], list[JournalLine]] = defaultdict(list)
    for line in mine:
        attempts[line.step, line.attempt].append(line)
    for runs in attempts.values():
        runs.sort(key=lambda line: line.time)
        for before, after in itertools.pairwise(runs):
            died = kill_times.get(before.pid)
            assert died is not None and died <= after.time, (
                f"{inst}: {after} began while {before} could still run (its worker was killed at {died})"
            )
            cut_short.append((before, after))
    return cut_short


async def test_workers_killed_at_random_lose_nothing_and_never_run_a_step_twice_at_once(cluster: Cluster) -> None:
    seed = seed_from_env()
    rng = random.Random(seed)
    context = f"(seed {seed}; STEPSTONE_CRASH_SEED={seed} replays the same random choices)"
    items = plan_instances(rng)
    kills = plan_kills(rng)

    fleet = Fleet(cluster)
    try:
        fleet.replenish()
        await fleet.ready()
        client = await cluster.client()
        handles: dict[str, Instance] = {}
        to_create = sorted(items, key=lambda item: item.create_at)
        to_send = sorted((i for i in items if i.event_at is not None), key=lambda i: i.event_at or 0.0)
        slow = {item.id: item.params["slow"] for item in items if item.workflow == "crash-multistep"}
        begun = time.monotonic()

        async def tend() -> None:
            """Create the instances and send the events that are due; replace dead workers."""
            now = time.monotonic() - begun
            due = [item for item in to_create if item.create_at <= now]
            del to_create[: len(due)]
            for workflow in sorted({item.workflow for item in due}):
                batch = [item for item in due if item.workflow == workflow]
                created = await client.workflow(workflow).create_batch(
                    [{"id": item.id, "params": item.params} for item in batch]
                )
                handles.update((inst.id, inst) for inst in created)
            while to_send and (to_send[0].event_at or 0.0) <= now and to_send[0].id in handles:
                item = to_send.pop(0)
                await handles[item.id].send_event("approve", {"by": item.params["tag"]})
            fleet.replenish()

        for at, kind in kills:
            while True:
                await tend()
                late = time.monotonic() - begun - at
                victims = fleet.live(kind)
                if late < KILL_GRACE:
                    victims = in_slow_steps(cluster, victims, slow)
                if late >= 0 and victims:
                    cluster.kill(rng.choice(victims))
                    break
                await asyncio.sleep(0.05)
        while to_create or to_send:
            await tend()
            await asyncio.sleep(0.05)

        async def all_ended() -> bool:
            await tend()
            statuses = await asyncio.gather(*(inst.status() for inst in handles.values()))
            failed = [(i, s) for i, s in zip(handles, statuses, strict=True) if s.status in ("errored", "terminated")]
            assert not failed, f"{failed} {context}"
            return all(s.status == "complete" for s in statuses)

        await eventually(all_ended, timeout=SETTLE, what=f"every instance to complete {context}")
        await fleet.ready()
    finally:
        fleet.close()

    journal = cluster.journal()
    lines: dict[str, list[JournalLine]] = defaultdict(list)
    for line in journal:
        lines[line.instance].append(line)
    assert len(cluster.kill_times) == len(kills), context
    cut_short: list[tuple[JournalLine, JournalLine]] = []
    for item in items:
        inst = handles[item.id]
        status = await inst.status()
        assert status.output == expected_output(item, status.output), f"{inst} {item.params} {context}"
        detail = await assert_consistent(inst, journal, cluster.killed)
        assert detail.status == "complete", context
        assert_no_step_ran_after_it_was_recorded(inst, item.workflow, lines[item.id])
        cut_short += takeovers(inst, lines[item.id], cluster.kill_times)
        if item.workflow == "crash-sleeper":
            [nap] = [s for s in detail.steps if s.name == "nap"]
            assert nap.due is not None and status.output["woke_at"] >= nap.due.timestamp(), f"{inst} {context}"
    taken_from = {fleet.kinds[before.pid] for before, _ in cut_short}
    assert taken_from == {"local", "remote"}, f"only workers of kinds {taken_from} had steps taken over {context}"
    for before, after in cut_short:
        waited = after.time - cluster.kill_times[before.pid]
        if fleet.kinds[before.pid] == "local":
            assert waited < LOCAL_TAKEOVER, f"{after} ran {waited:.2f} s after {before}'s worker was killed {context}"
    cluster.assert_no_errors()

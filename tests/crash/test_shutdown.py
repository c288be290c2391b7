"""Graceful shutdown and prompt wakeups across worker processes.

SIGTERM stops `stepstone worker` promptly and hands its running instances back, so
another worker resumes them at once instead of waiting for the lease. New instances
and events wake an idle worker in another process at once: on PostgreSQL through
LISTEN/NOTIFY (its safety-net poll is 5 s), on SQLite through its short poll.
"""

from __future__ import annotations

import functools
import os
import time

import pytest

from stepstone import Instance

from .harness import Cluster, WorkerProcess, assert_consistent, eventually, pass_time_until

SHUTDOWN = 2.0
"""Seconds within which a worker stops after SIGTERM."""
PROMPT = 1.0
"""Seconds within which an idle worker reacts to work made runnable by another process
(the PostgreSQL store's safety-net poll is 5 s; the leases here are 30 s)."""
IDLE = 1.0
"""Seconds a worker is left idle first, so that its last look for work is well past."""
TIMEOUT = 10.0


async def body_started(cluster: Cluster, inst: Instance, step: str) -> bool:
    return bool(cluster.runs(inst.id, step))


@pytest.mark.parametrize("body", ["sync", "async"], ids=["sync-step", "async-step"])
async def test_sigterm_hands_a_running_step_back_and_another_worker_resumes_it_at_once(
    cluster: Cluster, body: str
) -> None:
    stopping = await cluster.start_worker(cli=True)  # `stepstone worker`, a 30 s lease
    client = await cluster.client()
    slow = {"slow": 60.0, "again": 0.2, "async": body == "async"}
    inst = await client.workflow("crash-handover").create(id="handed-back", params=slow)
    slow_started = functools.partial(body_started, cluster, inst, "slow")
    await eventually(slow_started, timeout=TIMEOUT, what="the slow step to start")
    # Another host with a long lease: it can neither see that the first worker is gone
    # nor wait for its lease in time, so only a hand-back explains a quick takeover.
    taker = await cluster.start_worker(host=f"elsewhere-{os.getpid()}")

    sent_at = cluster.terminate(stopping)
    final = await inst.wait(timeout=TIMEOUT)

    assert final.status == "complete"
    assert final.output == {"first": stopping.pid, "slow": taker.pid, "last": taker.pid}
    runs = cluster.runs(inst.id, "slow")
    assert [r.pid for r in runs] == [stopping.pid, taker.pid]
    resumed = runs[1].time - sent_at
    assert resumed < PROMPT, f"resumed {resumed:.2f} s after SIGTERM"
    # The interrupted run counts as one cut short by a kill; the other checks hold.
    await assert_consistent(inst, cluster.journal(), cluster.killed | cluster.stopped)

    async def exited() -> bool:
        return not stopping.alive()

    # Its step's body may still run (a thread cannot be stopped): the process must not wait for it.
    left = max(0.0, sent_at + SHUTDOWN - time.time())
    await eventually(exited, timeout=left, what=f"{stopping} to exit within {SHUTDOWN:g} s of SIGTERM")
    assert stopping.proc.returncode == 0, f"{stopping} exited with {stopping.proc.returncode}:\n{stopping.log()}"
    assert "handing running instances back" in stopping.log()
    cluster.assert_no_errors()


async def test_a_step_calling_sys_exit_ends_its_worker_which_leaves_the_instance_to_another(
    cluster: Cluster,
) -> None:
    # The SystemExit ends asyncio.run, which cancels every task at once, the store's own
    # among them: the run's last write must fail at once, not wait for ever (it did on
    # PostgreSQL, whose writer is a task), and the process exit with the code asked for.
    exiting = await cluster.start_worker(cli=True, lease_seconds=2.0)
    client = await cluster.client()
    inst = await client.workflow("crash-exits").create(id="exits")

    async def exited() -> bool:
        return not exiting.alive()

    await eventually(exited, timeout=TIMEOUT, what=f"{exiting} to exit after its step called sys.exit(3)")
    assert exiting.proc.returncode == 3, f"{exiting} exited with {exiting.proc.returncode}:\n{exiting.log()}"
    cluster.stopped.add(exiting.pid)  # (its step's body was cut short, as by a kill)
    taker = await cluster.start_worker()
    final = await inst.wait(timeout=TIMEOUT)

    assert (final.status, final.output) == ("complete", {"before": 1, "exits": 2})
    assert [r.pid for r in cluster.runs(inst.id, "exits")] == [exiting.pid, taker.pid]
    await assert_consistent(inst, cluster.journal(), cluster.killed | cluster.stopped)
    cluster.assert_no_errors()


async def idle(worker: WorkerProcess) -> None:
    """Leave a worker alone for IDLE seconds (it has just looked for work)."""
    await pass_time_until(time.time() + IDLE)
    assert worker.alive()


async def test_idle_worker_picks_a_new_instance_up_at_once(cluster: Cluster) -> None:
    worker = await cluster.start_worker()
    client = await cluster.client()
    handover = client.workflow("crash-handover")
    # A first instance, so that the worker has started, run and finished one: it looked
    # for work as that one ended, and the next safety-net poll is seconds away.
    warmup = await handover.create(id="warmup", params={"slow": 0.0})
    await warmup.wait(timeout=TIMEOUT)
    await idle(worker)

    created_at = time.time()
    inst = await handover.create(id="picked-up", params={"slow": 0.0})
    final = await inst.wait(timeout=TIMEOUT)

    assert final.output == {"first": worker.pid, "slow": worker.pid, "last": worker.pid}
    [first] = cluster.runs(inst.id, "first")
    picked = first.time - created_at
    assert picked < PROMPT, f"an idle worker took {picked:.2f} s to start a new instance"
    cluster.assert_no_errors()


async def test_event_from_another_process_wakes_a_waiting_instance_at_once(cluster: Cluster) -> None:
    worker = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-approval").create(id="woken", params={"tag": "now"})

    async def waiting() -> bool:
        detail = await inst.describe()
        return detail.status == "waiting" and any(s.name == "approval" for s in detail.steps)

    await eventually(waiting, timeout=TIMEOUT, what="the instance to wait for its event")
    await idle(worker)

    sent_at = time.time()
    await inst.send_event("approve", {"by": "ada"})
    final = await inst.wait(timeout=TIMEOUT)

    assert final.status == "complete"
    assert final.output == {"before": "NOW", "event": {"by": "ada"}, "after": "NOW approved by ada"}
    [after] = cluster.runs(inst.id, "after")
    woken = after.time - sent_at
    assert after.pid == worker.pid and woken < PROMPT, f"the event woke the instance after {woken:.2f} s"
    await assert_consistent(inst, cluster.journal(), cluster.killed)
    cluster.assert_no_errors()

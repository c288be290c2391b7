"""Fencing: a worker that lost its lease while frozen cannot change what was recorded since.

A worker is frozen (SIGSTOP, as a long GC pause or a network partition would stop
it) while it runs a step. Meanwhile its lease expires and another worker takes the
instance over, or the instance is terminated, or restarted and run again by another
worker. Then the frozen worker goes on (SIGCONT): its step body returns and it tries
to record the result, but its lease is gone, so nothing it writes lands. The instance's
history (`describe()`: steps, attempts, results, output) stays as it was.

The workflow is app.Handover: its steps return the pid of the worker that ran them,
so the output tells whose results were recorded.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

from stepstone import Instance, InstanceDetail

from .harness import Cluster, WorkerProcess, assert_consistent, eventually

LEASE = 2.0
"""The frozen worker's lease (seconds), when a takeover must wait for it to expire."""
TAKEOVER = 10.0
"""Seconds within which a worker finishes what another one left (beyond any lease)."""
SETTLE = 1.5
"""Seconds a thawed worker is given to try to record its step (beyond its body's return):
more than its heartbeat interval (LEASE / 3), a thousand times a write's latency."""


def elsewhere(label: str) -> str:
    """A host name no other worker shares: its pids mean nothing to the others."""
    return f"{label}-{os.getpid()}-{time.monotonic_ns()}"


async def body_started(cluster: Cluster, inst: Instance, step: str, worker: WorkerProcess) -> bool:
    return any(run.pid == worker.pid for run in cluster.runs(inst.id, step))


async def body_returned(cluster: Cluster, inst: Instance, step: str, worker: WorkerProcess) -> bool:
    return any(line.pid == worker.pid for line in cluster.returns(inst.id, step))


async def freeze_in_slow_step(cluster: Cluster, inst: Instance, worker: WorkerProcess) -> None:
    """Once `worker` runs the slow step's body of `inst`, freeze it (SIGSTOP)."""
    started = functools.partial(body_started, cluster, inst, "slow", worker)
    await eventually(started, timeout=TAKEOVER, what=f"{worker} to start the slow step")
    await cluster.freeze(worker)
    assert not cluster.returns(inst.id, "slow"), "the slow step returned before the worker was frozen"


async def thaw_and_assert_history_unchanged(
    cluster: Cluster, inst: Instance, worker: WorkerProcess, before: InstanceDetail
) -> None:
    """Let the frozen worker go on; its slow step's body returns; the history must not change."""
    cluster.thaw(worker)
    returned = functools.partial(body_returned, cluster, inst, "slow", worker)
    await eventually(returned, timeout=TAKEOVER, what=f"the slow step's body to return in the thawed {worker}")
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:  # keep looking while it tries to record
        assert await inst.describe() == before, f"{worker} changed the history after it lost the lease"
        await asyncio.sleep(0.05)
    assert worker.alive(), f"{worker} died after it was thawed:\n{worker.log()}"
    assert worker.pid not in {r.pid for r in cluster.runs(inst.id, "last")}, f"{worker} went on past the lost step"


async def test_frozen_worker_whose_lease_expired_cannot_overwrite_the_new_owner(cluster: Cluster) -> None:
    # The frozen worker is on another host, so no worker can see that its pid is alive
    # (or dead): the instance is taken over only because its lease expires.
    frozen = await cluster.start_worker(lease_seconds=LEASE, host=elsewhere("frozen"))
    client = await cluster.client()
    inst = await client.workflow("crash-handover").create(id="taken-over", params={"slow": 1.0, "again": 0.2})
    await freeze_in_slow_step(cluster, inst, frozen)
    frozen_at = time.time()

    owner = await cluster.start_worker()
    final = await inst.wait(timeout=LEASE + TAKEOVER)

    assert final.status == "complete"
    assert final.output == {"first": frozen.pid, "slow": owner.pid, "last": owner.pid}
    [_, retaken] = cluster.runs(inst.id, "slow")
    # The lease, renewed every LEASE/3 s, ran out at least 2/3 of it after the freeze.
    waited = retaken.time - frozen_at
    assert retaken.pid == owner.pid and waited >= LEASE * 2 / 3 - 0.1, f"taken over {waited:.2f} s after the freeze"
    before = await inst.describe()

    # Thawed, it learns that its lease is gone at its next heartbeat (and abandons the
    # run) or when it writes the step's result (refused), whichever comes first.
    await thaw_and_assert_history_unchanged(cluster, inst, frozen, before)

    assert (await inst.status()).output == {"first": frozen.pid, "slow": owner.pid, "last": owner.pid}
    # The frozen worker's run of the step was cut short by a freeze rather than a kill:
    # count it as one, the others checks hold.
    await assert_consistent(inst, cluster.journal(), cluster.killed | {frozen.pid})
    cluster.assert_no_errors()


async def test_frozen_worker_cannot_write_to_an_instance_terminated_meanwhile(cluster: Cluster) -> None:
    worker = await cluster.start_worker()
    client = await cluster.client()
    inst = await client.workflow("crash-handover").create(id="terminated", params={"slow": 1.0})
    await freeze_in_slow_step(cluster, inst, worker)

    await inst.terminate()
    before = await inst.describe()
    assert before.status == "terminated"
    assert [(s.name, s.status) for s in before.steps] == [("first", "complete")]

    await thaw_and_assert_history_unchanged(cluster, inst, worker, before)

    assert cluster.runs(inst.id, "last") == []
    # The worker is none the worse for it: it runs the next instance.
    other = await client.workflow("crash-handover").create(id="after-thaw", params={"slow": 0.0})
    final = await other.wait(timeout=TAKEOVER)
    assert final.output == {"first": worker.pid, "slow": worker.pid, "last": worker.pid}
    cluster.assert_no_errors()


async def test_frozen_worker_cannot_write_to_an_instance_restarted_meanwhile(cluster: Cluster) -> None:
    frozen = await cluster.start_worker(host=elsewhere("frozen"))
    client = await cluster.client()
    inst = await client.workflow("crash-handover").create(id="restarted", params={"slow": 1.0, "again": 0.2})
    await freeze_in_slow_step(cluster, inst, frozen)

    await inst.restart()
    owner = await cluster.start_worker()
    final = await inst.wait(timeout=TAKEOVER)

    # Run again from the start by the new owner: none of the frozen worker's results is kept.
    assert final.status == "complete"
    assert final.output == {"first": owner.pid, "slow": owner.pid, "last": owner.pid}
    before = await inst.describe()
    assert [(s.name, s.result) for s in before.steps] == [
        ("first", owner.pid),
        ("slow", owner.pid),
        ("last", owner.pid),
    ]

    await thaw_and_assert_history_unchanged(cluster, inst, frozen, before)

    assert [r.pid for r in cluster.runs(inst.id, "first")] == [frozen.pid, owner.pid]
    assert [r.pid for r in cluster.runs(inst.id, "slow")] == [frozen.pid, owner.pid]
    assert [r.pid for r in cluster.runs(inst.id, "last")] == [owner.pid]
    cluster.assert_no_errors()

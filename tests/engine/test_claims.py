"""When a worker looks for work: not after every run that ends with nothing new to run,
on time for the timers of the instances it released, and not at all while nothing happens."""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, Workflow, WorkflowEvent, WorkflowStep, replay
from stepstone.store import sqlite_changes
from stepstone.store.base import Claim, ClaimBatch, Store

from .support import Calls, StartEngine, finish, until


class CountingClaims:
    """Wraps a store's `claim` to count the calls."""

    def __init__(self, store: Store) -> None:
        self.calls = 0
        self._claim = store.claim

        async def claim(*args: Any, **kwargs: Any) -> ClaimBatch:
            self.calls += 1
            return await self._claim(*args, **kwargs)

        store.claim = claim  # type: ignore[method-assign]


class OneStep(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def body() -> dict[str, int]:
            return {"n": event.payload}

        return await step.do("only", body)


async def test_runs_that_end_with_nothing_new_to_run_cost_no_claim(start_engine: StartEngine) -> None:
    engine = await start_engine(OneStep)
    engine.store.wakeup_poll = 60.0  # no safety-net polls during the test
    handle = engine.workflow(OneStep)
    await finish(await handle.create(params=0))  # the claim loop has settled into its sleep
    claims = CountingClaims(engine.store)
    for n in range(1, 21):
        final = await finish(await handle.create(params=n))
        assert (final.status, final.output) == ("complete", {"n": n})
    # Each instance started where it was created (no claim), and its end freed a slot with
    # nothing queued behind it: no look for work.
    assert claims.calls == 0


async def test_a_timer_released_here_fires_without_waiting_for_the_poll(start_engine: StartEngine) -> None:
    class Nap(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("nap", "0.3 s")
            return await step.do("after", time.time)

    engine = await start_engine(Nap)
    engine.store.wakeup_poll = 60.0
    handle = engine.workflow(Nap)
    await finish(await handle.create(params=None))  # the claim loop now sleeps up to a minute
    inst = await handle.create()
    final = await finish(inst, timeout=20.0)  # woken by the poll it would take 60 s
    assert final.status == "complete"


async def test_a_full_worker_looks_for_queued_work_when_a_slot_frees(store_url: str) -> None:
    async with Engine(store_url, workflows=[OneStep], concurrency=2) as engine:
        engine.store.wakeup_poll = 60.0
        handle = engine.workflow(OneStep)
        batch = await handle.create_batch([{"params": n} for n in range(10)])  # 2 leased here, 8 queued
        finals = [await finish(inst) for inst in batch]
        assert [(f.status, f.output) for f in finals] == [("complete", {"n": n}) for n in range(10)]


async def test_a_run_stopped_by_a_failing_store_runs_again_once_its_own_lease_lapses(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store refuses the run's writes longer than the run tries them: the run stops, its
    # instance still leased to this worker. Claims take others' leases only when they expire;
    # the worker must look again once its own lapses, not at its next poll (a minute here).
    monkeypatch.setattr(replay, "STORE_RETRY_SECONDS", 0.2)
    async with Engine(store_url, workflows=[OneStep], lease_seconds=0.5) as engine:
        engine.store.wakeup_poll = 60.0
        write = engine.store.write
        failing = True

        async def flaky_write(run: Any) -> Any:
            if failing:
                raise OSError("the disk is unplugged")
            return await write(run)

        monkeypatch.setattr(engine.store, "write", flaky_write)
        inst = await engine.workflow(OneStep).create(params=7)
        await asyncio.sleep(0.5)  # the run gives up
        failing = False
        began = time.monotonic()
        assert (await inst.wait(timeout=10)).output == {"n": 7}
        assert time.monotonic() - began < 5


async def test_a_worker_held_up_past_its_lease_does_not_start_a_step_another_worker_ran(store_url: str) -> None:
    # A worker process stopped (SIGSTOP) or its event loop blocked past its lease: another
    # worker (here: an engine on a thread of its own) takes the instance over and finishes
    # it. When the first goes on, it must not start a step function the other already ran:
    # its renewals being overdue, it reads its lease first, finds it gone, and stops.
    calls = Calls()
    held_up = threading.Event()

    class Stalls(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("a", calls.returning("a", "a"))
            if not held_up.is_set():
                held_up.set()
                time.sleep(3.0)  # the whole event loop stands still, its heartbeats too
            return await step.do("b", calls.returning("b", "b"))

    def other_worker(instance_id: str) -> None:
        async def main() -> None:
            async with Engine(store_url, workflows=[Stalls], lease_seconds=0.5) as other:
                await (await other.workflow(Stalls).get(instance_id)).wait(timeout=20)

        asyncio.run(main())

    async with Engine(store_url, workflows=[Stalls], lease_seconds=0.5) as engine:
        inst = await engine.workflow(Stalls).create()
        other = threading.Thread(target=other_worker, args=(inst.id,))
        other.start()
        try:
            assert (await inst.wait(timeout=20)).output == "b"
        finally:
            await asyncio.to_thread(other.join, 30)
        await until(lambda: not engine.runs_here(inst._pk), "the held-up run to stop")
    assert calls.log == ["a", "b"]


async def test_a_renewal_that_finds_an_old_lease_lost_leaves_the_newer_claim_running(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A heartbeat sends the run's token; while the renewal is under way the run suspends on
    # a short sleep and this worker claims the instance again, with a new token. The old
    # token is then reported lost: that must not abandon the new run (its instance would
    # sit `running` until the lease lapsed).
    calls = Calls()

    class Naps(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def slow() -> str:
                await asyncio.sleep(0.3)  # a heartbeat (every 0.2 s here) names the run meanwhile
                return "a"

            await step.do("a", slow)
            await step.sleep("nap", "0.3 seconds")
            return await step.do("b", calls.returning("b", "b"))

    async with Engine(store_url, workflows=[Naps], lease_seconds=0.6) as engine:
        worker = engine._worker
        assert worker is not None
        renew = engine.store.renew_leases
        held_back: list[int] = []

        async def renew_late(worker_id: str, tokens: dict[int, int], lease_until: float) -> set[int]:
            if not held_back and tokens:
                pk = next(iter(tokens))
                held_back.append(pk)
                await until(functools.partial(claimed_again, worker, pk, tokens[pk]), "a new claim")
            return await renew(worker_id, tokens, lease_until)

        engine.store.renew_leases = renew_late  # type: ignore[method-assign]
        inst = await engine.workflow(Naps).create()
        assert (await inst.wait(timeout=20)).output == "b"
    assert held_back, "no renewal was held back"
    assert "lost the lease" not in caplog.text
    assert calls.log == ["b"]


def claimed_again(worker: Any, pk: int, token: int) -> bool:
    active = worker.active.get(pk)
    return active is not None and active.claim.token != token


async def test_an_idle_worker_leaves_the_event_loop_asleep(
    start_engine: StartEngine, loop_sleeps: Callable[[float], Awaitable[int]]
) -> None:
    # A worker with nothing to do should cost nothing: no polls several times a second (SQLite's
    # log writes are watched instead; PostgreSQL's notifications are waited for on the socket).
    engine = await start_engine(OneStep)
    await finish(await engine.workflow(OneStep).create(params=0))
    await asyncio.sleep(0.5)  # the worker settles into its sleep
    sleeps = await loop_sleeps(1.5)
    assert sleeps <= 2, f"the event loop slept {sleeps} times in 1.5 quiet seconds"


@pytest.mark.skipif(sys.platform != "linux", reason="writes to the log are watched with Linux's inotify")
async def test_a_sqlite_worker_hears_of_another_process_work_without_polling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with Engine(url, workflows=[OneStep]) as worker, Engine(url, worker=False) as client:
        # The worker looked for work as it started; its next look is its safety net's, 30 s on.
        assert worker.store.wakeup_poll == 30.0
        final = await finish(await client.workflow(OneStep).create(params=1), timeout=2.5)
        assert (final.status, final.output) == ("complete", {"n": 1})


async def test_a_sqlite_worker_that_cannot_watch_the_log_polls_for_another_process_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_changes, "_inotify_watch", lambda path: None)  # as on macOS
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with Engine(url, workflows=[OneStep]) as worker, Engine(url, worker=False) as client:
        assert worker.store.wakeup_poll == 0.2
        final = await finish(await client.workflow(OneStep).create(params=2))
        assert (final.status, final.output) == ("complete", {"n": 2})


async def done() -> str:
    return "done"


async def test_a_worker_keeps_nothing_of_the_instances_it_claimed_once_their_runs_end(
    start_engine: StartEngine,
) -> None:
    # Between two looks, the claim loop must not hold the last claims (each with its step
    # history): they would outlive their runs for as long as the worker sleeps.
    class Resumed(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("nap", 0.3)  # released, then claimed again when due
            return await step.do("after", done)

    engine = await start_engine(Resumed)
    engine.store.wakeup_poll = 60.0  # the claim loop sleeps through the rest of the test
    batch = await engine.workflow(Resumed).create_batch([{} for _ in range(5)])
    for inst in batch:
        assert (await finish(inst)).output == "done"
    await asyncio.sleep(0)
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, Claim) and o.workflow == "Resumed"] == []

"""Durable timers: `step.sleep` and `step.sleep_until` (SPEC §2)."""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import stepstone
from stepstone import InvalidInputError, Workflow, WorkflowEvent, WorkflowStep, clock, replay

from .support import Calls, Gate, StartEngine, finish, step_statuses, until_equal, wait_for_status


async def run_once(start_engine: StartEngine, workflow: type[Workflow], params: Any = None) -> stepstone.InstanceStatus:
    engine = await start_engine(workflow)
    return await finish(await engine.workflow(workflow).create(params=params))


async def test_sleeping_instance_is_waiting(start_engine: StartEngine) -> None:
    calls = Calls()

    class LongNap(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("nap", "1 hour")
            await step.do("after", calls.returning("after"))

    engine = await start_engine(LongNap)
    inst = await engine.workflow(LongNap).create()
    st = await wait_for_status(inst, "waiting")
    assert (st.output, st.error) == (None, None)
    assert calls.log == []
    await inst.terminate()


async def test_sleep_resumes_the_run_after_the_duration(start_engine: StartEngine) -> None:
    class ShortNap(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            before = await step.do("before", time.time)
            await step.sleep("nap", "300 ms")
            after = await step.do("after", time.time)
            return after - before

    st = await run_once(start_engine, ShortNap)
    assert st.status == "complete"
    assert st.output >= 0.3


async def test_a_sleep_over_is_recorded_while_the_step_after_it_runs(start_engine: StartEngine) -> None:
    gate = Gate()

    class Nap(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("nap", "200 ms")
            return await step.do("after", gate.hold)

    engine = await start_engine(Nap)
    inst = await engine.workflow(Nap).create()
    await gate.wait_entered()

    steps = functools.partial(step_statuses, inst)
    await until_equal(steps, [("nap", "complete")], "the sleep recorded over while 'after' runs")
    assert (await inst.status()).status == "running"
    gate.release()
    assert (await finish(inst)).output == 1
    assert await steps() == [("nap", "complete"), ("after", "complete")]


async def test_sleep_accepts_every_form_of_duration(start_engine: StartEngine) -> None:
    class Forms(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            for i, duration in enumerate([timedelta(milliseconds=10), 0.01, 0, "10ms", "0.01 s", "10 MS", "0 seconds"]):
                await step.sleep(f"nap {i}", duration)
            return "slept"

    assert (await run_once(start_engine, Forms)).output == "slept"


@pytest.mark.parametrize(
    "as_when",
    [
        pytest.param(lambda t: datetime.fromtimestamp(t, UTC), id="utc-datetime"),
        pytest.param(lambda t: datetime.fromtimestamp(t, timezone(timedelta(hours=5, minutes=30))), id="offset-dt"),
        pytest.param(lambda t: t, id="epoch-seconds"),
    ],
)
async def test_sleep_until_resumes_the_run_at_that_time(start_engine: StartEngine, as_when: Any) -> None:
    class Alarm(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            target = await step.do("pick a time", lambda: time.time() + 0.3)
            await step.sleep_until("alarm", as_when(target))
            woke = await step.do("woke", time.time)
            return woke >= target

    assert (await run_once(start_engine, Alarm)).output is True


async def test_sleep_until_a_time_in_the_past_returns_at_once(start_engine: StartEngine) -> None:
    class Past(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep_until("long ago", datetime(2000, 1, 1, tzinfo=UTC))
            await step.sleep_until("epoch", 0)
            await step.sleep_until("a moment ago", time.time() - 5)
            return "done"

    started = time.monotonic()
    assert (await run_once(start_engine, Past)).output == "done"
    assert time.monotonic() - started < 5


async def test_sleep_until_rejects_naive_datetimes_and_other_values(start_engine: StartEngine) -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    bad_values: list[Any] = [naive, "tomorrow", None, "2030-01-01T00:00:00Z", [1]]

    class BadWhen(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes = []
            for i, when in enumerate(bad_values):
                try:
                    await step.sleep_until(f"bad {i}", when)
                    outcomes.append("accepted")
                except InvalidInputError as exc:
                    named = str(when) in str(exc) or repr(when) in str(exc)
                    outcomes.append("rejected, naming the value" if named else f"rejected: {exc}")
            return outcomes

    assert (await run_once(start_engine, BadWhen)).output == ["rejected, naming the value"] * len(bad_values)


async def test_sleeping_instance_holds_no_worker_slot(store_url: str) -> None:
    class Sleepy(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            if event.payload == "sleep":
                await step.sleep("nap", "1 hour")
            return "awake"

    async with stepstone.Engine(store_url, workflows=[Sleepy], concurrency=1) as engine:
        sleeper = await engine.workflow(Sleepy).create(params="sleep")
        await wait_for_status(sleeper, "waiting")
        quick = await engine.workflow(Sleepy).create(params="quick")
        assert (await finish(quick)).output == "awake"
        await sleeper.terminate()


async def test_a_timer_is_taken_a_moment_early_but_the_step_after_it_never_runs_early(
    start_engine: StartEngine,
) -> None:
    """The worker claims an instance just before its timer is due, and the replayed run
    waits out the rest in-process: run() passes twice (live, then once resumed), and the
    step after the sleep starts no earlier than the sleep's due time."""
    passes: list[float] = []

    class Naps(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            passes.append(time.time())
            await step.sleep("nap", "0.3 s")
            return await step.do("after", time.time)

    engine = await start_engine(Naps)
    inst = await engine.workflow(Naps).create()
    final = await finish(inst)
    assert final.status == "complete"
    (nap,) = [s for s in (await inst.describe()).steps if s.kind == "sleep"]
    assert nap.due is not None
    assert final.output >= nap.due.timestamp()
    assert len(passes) == 2


# -- waking on time after a long idle ------------------------------------------------------------


def test_a_long_wait_sleeps_in_legs_that_end_shortly_before_it_and_a_short_one_at_once() -> None:
    # An idle machine may wake a process late in proportion to how long it slept: a long
    # wait first sleeps to just before its end, looks at the clock, and sleeps the rest.
    assert clock.first_leg(0.004) == 0.004
    assert clock.first_leg(2 * clock.EARLY) == 2 * clock.EARLY
    assert clock.first_leg(0.1) == pytest.approx(0.1 - clock.EARLY)
    assert clock.first_leg(3600.0) == pytest.approx(3600.0 * 49 / 50)
    legs, left = 0, 3600.0
    while left > 0:
        left -= clock.first_leg(left)
        legs += 1
    assert legs <= 6  # an hour's wait looks at the clock a handful of times


async def test_a_timer_of_a_run_is_armed_for_its_first_leg_and_fires_at_its_time() -> None:
    loop = asyncio.get_running_loop()
    wakeup: asyncio.Future[None] = loop.create_future()
    due = clock.now() + 0.3
    alarm = replay._Alarm(due, functools.partial(replay._wake, wakeup))
    try:
        first = alarm._handle.when() - loop.time()
        assert 0.3 - clock.EARLY - 0.05 < first < 0.3 - clock.EARLY + 0.001  # armed early, to look again
        await asyncio.wait_for(wakeup, 5)
        assert clock.now() >= due  # never early
    finally:
        alarm.cancel()


async def test_a_cancelled_timer_of_a_run_never_fires() -> None:
    wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    alarm = replay._Alarm(clock.now() + 0.05, functools.partial(replay._wake, wakeup))
    alarm.cancel()
    await asyncio.sleep(0.15)
    assert not wakeup.done()

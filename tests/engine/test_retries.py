"""Retries, backoff, per-attempt timeouts and NonRetryableError (SPEC §2, "Retries")."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

import stepstone
from stepstone import NonRetryableError, Retries, StepContext, StepFailed, Workflow, WorkflowEvent, WorkflowStep

from .support import Calls, StartEngine, finish, wait_for_status


class Declined(NonRetryableError):
    """A user's own non-retryable error."""


async def run_once(start_engine: StartEngine, workflow: type[Workflow]) -> stepstone.InstanceStatus:
    engine = await start_engine(workflow)
    return await finish(await engine.workflow(workflow).create())


def test_default_retries_are_five_retries_ten_seconds_apart_growing_exponentially() -> None:
    policy = Retries()
    assert (policy.limit, policy.backoff) == (5, "exponential")
    assert policy.delay in ("10 seconds", 10, timedelta(seconds=10))
    assert Retries() == Retries(limit=5, delay="10 seconds", backoff="exponential")


def test_retries_are_equal_when_they_retry_alike_however_the_delay_is_written() -> None:
    assert Retries() == Retries(delay=10) == Retries(delay=timedelta(seconds=10)) == Retries(delay="10000 ms")
    assert hash(Retries(delay="1 minute")) == hash(Retries(delay=60.0))
    assert Retries(delay="10 seconds") != Retries(delay="11 seconds")
    assert Retries(limit=2) != Retries(limit=3)
    assert Retries(backoff="linear") != Retries(backoff="constant")
    assert stepstone.retries.resolve().retries == Retries()


async def test_a_step_sees_the_retries_it_was_given_in_its_config(start_engine: StartEngine) -> None:
    given = Retries(limit=2, delay="1 second", backoff="linear")
    seen: list[Any] = []

    class Configured(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("given", lambda ctx: seen.append(ctx.config.retries), retries=given)
            await step.do("defaults", lambda ctx: seen.append(ctx.config.retries))

    assert (await run_once(start_engine, Configured)).status == "complete"
    assert seen == [given, Retries()]


async def test_failing_step_is_retried_until_it_succeeds(start_engine: StartEngine) -> None:
    calls = Calls()

    def flaky() -> str:
        calls.note("try")
        if calls.count("try") < 3:
            raise ConnectionError("try again")
        return "ok"

    class Flaky(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("flaky", flaky, retries={"limit": 5, "delay": "10 ms"})

    assert (await run_once(start_engine, Flaky)).output == "ok"
    assert calls.count("try") == 3


async def test_step_that_always_fails_makes_one_attempt_plus_limit_retries(start_engine: StartEngine) -> None:
    calls = Calls()
    limits = [0, 1, 3]

    class AlwaysFails(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes = []
            for limit in limits:
                try:
                    await step.do(f"doomed {limit}", calls.raising(f"limit {limit}", ValueError("nope")),
                                  retries={"limit": limit, "delay": "10 ms", "backoff": "constant"})  # fmt: skip
                    outcomes.append("succeeded")
                except StepFailed as exc:
                    outcomes.append(exc.error_type)
            return outcomes

    assert (await run_once(start_engine, AlwaysFails)).output == ["ValueError"] * 3
    assert [calls.count(f"limit {limit}") for limit in limits] == [1, 2, 4]


@pytest.mark.parametrize(
    ("backoff", "expected_waits"),
    [("constant", [1, 1, 1]), ("linear", [1, 2, 3]), ("exponential", [1, 2, 4])],
)
async def test_wait_before_each_retry_follows_the_backoff(
    start_engine: StartEngine, backoff: str, expected_waits: list[int]
) -> None:
    delay = 0.05
    started: list[float] = []

    def failing() -> None:
        started.append(time.monotonic())
        raise RuntimeError("fails every time")

    class Backoff(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("failing", failing, retries={"limit": 3, "delay": delay, "backoff": backoff})
            except StepFailed:
                return "failed"

    assert (await run_once(start_engine, Backoff)).output == "failed"
    assert len(started) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    # Each wait is at least what the backoff asks (timings only bounded from below, to stay robust).
    for gap, factor in zip(gaps, expected_waits, strict=True):
        assert gap >= delay * factor - 0.005, (backoff, gaps)


@pytest.mark.parametrize("error_class", [NonRetryableError, Declined])
async def test_non_retryable_error_stops_retrying(start_engine: StartEngine, error_class: type[Exception]) -> None:
    calls = Calls()

    class GivesUp(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("charge", calls.raising("charge", error_class("card declined")),
                              retries={"limit": 5, "delay": "10 ms"})  # fmt: skip
            except StepFailed as exc:
                return [exc.error_type, exc.message]
            return "charged"

    expected_type = "stepstone.NonRetryableError" if error_class is NonRetryableError else f"{__name__}.Declined"
    assert (await run_once(start_engine, GivesUp)).output == [expected_type, "card declined"]
    assert calls.count("charge") == 1


async def test_instance_is_waiting_while_a_step_waits_to_retry(start_engine: StartEngine) -> None:
    calls = Calls()

    class LongRetryWait(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("flaky", calls.raising("try", RuntimeError("down")), retries={"delay": "1 hour"})

    engine = await start_engine(LongRetryWait)
    inst = await engine.workflow(LongRetryWait).create()
    await wait_for_status(inst, "waiting")
    assert calls.count("try") == 1
    await inst.terminate()


async def test_step_waiting_to_retry_holds_no_worker_slot(store_url: str) -> None:
    class RetryLater(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            if event.payload == "fail":
                await step.do("down", Calls().raising("down", RuntimeError("down")), retries={"delay": "1 hour"})
            return "done"

    async with stepstone.Engine(store_url, workflows=[RetryLater], concurrency=1) as engine:
        failing = await engine.workflow(RetryLater).create(params="fail")
        await wait_for_status(failing, "waiting")
        quick = await engine.workflow(RetryLater).create(params="quick")
        assert (await finish(quick)).output == "done"
        await failing.terminate()


# -- timeouts ----------------------------------------------------------------------------------


async def test_async_attempt_over_its_timeout_fails_with_step_timeout_error(start_engine: StartEngine) -> None:
    captured: list[StepFailed] = []

    async def too_slow() -> str:
        await asyncio.sleep(10)
        return "late"

    class TimesOut(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("slow", too_slow, timeout="50 ms", retries={"limit": 0})
            except StepFailed as exc:
                captured.append(exc)
                return [exc.step, exc.error_type]
            return "finished"

    assert (await run_once(start_engine, TimesOut)).output == ["slow", "stepstone.StepTimeoutError"]
    assert isinstance(captured[0].__cause__, stepstone.StepTimeoutError)


async def test_async_attempt_that_overruns_without_awaiting_still_fails_with_step_timeout_error(
    start_engine: StartEngine,
) -> None:
    # No await at which the timer could cancel it: it blocks the loop, and ends late.
    async def blocks(ctx: StepContext) -> int:
        if ctx.attempt == 1:
            time.sleep(0.1)
        return ctx.attempt

    async def awaits_then_blocks(ctx: StepContext) -> int:
        await asyncio.sleep(0)
        if ctx.attempt == 1:
            time.sleep(0.1)
        return ctx.attempt

    class Overruns(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            opts: Any = {"timeout": "30 ms", "retries": {"limit": 1, "delay": 0}}
            return [await step.do("blocks", blocks, **opts), await step.do("later", awaits_then_blocks, **opts)]

    assert (await run_once(start_engine, Overruns)).output == [2, 2]


async def test_timed_out_attempt_counts_as_a_failed_attempt_and_is_retried(start_engine: StartEngine) -> None:
    attempts: list[int] = []

    async def slow_then_quick(ctx: StepContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(10)
        return ctx.attempt

    class RetryAfterTimeout(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("slow once", slow_then_quick, timeout="50 ms", retries={"limit": 1, "delay": "10 ms"})

    assert (await run_once(start_engine, RetryAfterTimeout)).output == 2
    assert attempts == [1, 2]


async def test_timeout_applies_to_each_attempt_not_to_the_whole_step(start_engine: StartEngine) -> None:
    async def takes_a_while(ctx: StepContext) -> int:
        await asyncio.sleep(0.1)
        if ctx.attempt < 3:
            raise RuntimeError("fails after a while")
        return ctx.attempt

    class PerAttempt(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("steady", takes_a_while, timeout="1 second", retries={"limit": 2, "delay": "10 ms"})

    # three attempts of 0.1 s each would overrun a 0.25 s budget, but not a per-attempt one
    assert (await run_once(start_engine, PerAttempt)).output == 3


async def test_sync_attempt_over_its_timeout_fails_and_its_late_result_is_ignored(start_engine: StartEngine) -> None:
    let_late_finish = threading.Event()
    late_finished = threading.Event()

    def slow_then_quick(ctx: StepContext) -> str:
        if ctx.attempt == 1:
            let_late_finish.wait(10)
            late_finished.set()
            return "late"
        return "on time"

    def finish_late_thread() -> bool:
        let_late_finish.set()
        return late_finished.wait(10)

    class SyncTimeout(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            value = await step.do("slow sync", slow_then_quick, timeout="50 ms", retries={"limit": 1, "delay": "10 ms"})
            late_done = await step.do("let the late thread return", finish_late_thread)
            await step.sleep("replay", "10 ms")
            return [value, late_done]

    assert (await run_once(start_engine, SyncTimeout)).output == ["on time", True]


async def test_sync_step_that_overruns_without_retries_fails_with_step_timeout_error(
    start_engine: StartEngine,
) -> None:
    release = threading.Event()

    def stuck() -> str:
        release.wait(10)
        return "late"

    class SyncStuck(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("stuck", stuck, timeout="50 ms", retries={"limit": 0})

    engine = await start_engine(SyncStuck)
    inst = await engine.workflow(SyncStuck).create()
    st = await finish(inst)
    assert st.status == "errored"
    assert st.error is not None
    assert (st.error["name"], st.error["step"]) == ("stepstone.StepTimeoutError", "stuck")
    release.set()
    # the abandoned thread's result changes nothing
    other = await engine.workflow(SyncStuck).create()
    await finish(other)
    assert await inst.status() == st

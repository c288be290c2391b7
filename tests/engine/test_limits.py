"""Limits on sizes and counts, their defaults and their configuration (SPEC §4)."""

from __future__ import annotations

from typing import Any

import pytest

import stepstone
from stepstone import (
    InstanceNotFoundError,
    LimitExceededError,
    Limits,
    StepFailed,
    Workflow,
    WorkflowEvent,
    WorkflowStep,
)

from .support import Calls, StartEngine, finish, wait_for_status

MiB = 1024 * 1024


class Echo(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return len(event.payload)


def assert_names_limit_and_value(exc: LimitExceededError, name: str, limit: int, value: int) -> None:
    """The error names the limit and the offending value, as attributes and in its message."""
    assert isinstance(exc, ValueError)
    assert exc.value == value
    assert (exc.limit, exc.limit_name) == (limit, name)  # SPEC: "with .limit and .value"
    assert name in str(exc) and str(limit) in str(exc)
    assert str(value) in str(exc)


def test_default_limits_are_one_mib_256_characters_and_10000_steps() -> None:
    limits = Limits()
    assert (limits.max_value_bytes, limits.max_step_name, limits.max_steps) == (MiB, 256, 10_000)


async def test_params_up_to_one_mib_are_accepted_and_one_byte_more_is_refused(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    await handle.create(id="fits", params="x" * (MiB - 2))  # '"xx...x"' is exactly 1 MiB
    with pytest.raises(LimitExceededError) as caught:
        await handle.create(id="too-big", params="x" * (MiB - 1))
    assert_names_limit_and_value(caught.value, "max_value_bytes", MiB, MiB + 1)
    with pytest.raises(InstanceNotFoundError):
        await handle.get("too-big")
    assert [inst.id for inst in await handle.list()] == ["fits"]


async def test_params_over_a_configured_limit_are_refused_before_anything_is_stored(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, limits=Limits(max_value_bytes=100))
    handle = engine.workflow(Echo)
    with pytest.raises(LimitExceededError) as caught:
        await handle.create(id="big", params="x" * 200)
    assert_names_limit_and_value(caught.value, "max_value_bytes", 100, 202)
    with pytest.raises(LimitExceededError):
        await handle.create_batch([{"id": "small", "params": "x"}, {"id": "big", "params": "x" * 200}])
    assert list(await handle.list()) == []
    assert (await finish(await handle.create(params="x" * 98))).output == 98


async def test_event_payload_over_the_limit_is_refused_and_not_kept(start_engine: StartEngine) -> None:
    class Listener(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("listen", type="data", timeout="1 hour")).payload

    engine = await start_engine(Listener, limits=Limits(max_value_bytes=100))
    inst = await engine.workflow(Listener).create()
    await wait_for_status(inst, "waiting")
    with pytest.raises(LimitExceededError) as caught:
        await inst.send_event("data", {"blob": "x" * 200})
    assert caught.value.value > 100
    await inst.send_event("data", "small")
    assert (await finish(inst)).output == "small"


async def test_step_result_of_exactly_the_limit_is_accepted(start_engine: StartEngine) -> None:
    class Sized(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            value = await step.do("one mebibyte", lambda: "x" * (MiB - 2))
            return len(value)

    engine = await start_engine(Sized)
    assert (await finish(await engine.workflow(Sized).create())).output == MiB - 2


async def test_step_result_over_the_limit_fails_the_step_and_keeps_earlier_results(start_engine: StartEngine) -> None:
    calls = Calls()

    class TooMuch(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            kept = await step.do("small", calls.returning("small", "kept"))
            try:
                await step.do("big", calls.returning("big", "x" * 200), retries={"limit": 2, "delay": "10 ms"})
            except StepFailed as exc:
                await step.sleep("replay", "10 ms")
                return [kept, exc.error_type]
            return "no error"

    engine = await start_engine(TooMuch, limits=Limits(max_value_bytes=100))
    assert (await finish(await engine.workflow(TooMuch).create())).output == ["kept", "stepstone.LimitExceededError"]
    assert calls.log == ["small", "big"]


async def test_step_name_over_the_limit_raises_limit_exceeded_without_running_the_function(
    start_engine: StartEngine,
) -> None:
    calls = Calls()
    captured: list[LimitExceededError] = []

    class LongNames(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            fits = await step.do("n" * 256, calls.returning("fits", "ok"))
            try:
                await step.do("n" * 257, calls.returning("too long"))
            except LimitExceededError as exc:
                captured.append(exc)
                return fits
            return "accepted"

    engine = await start_engine(LongNames)
    assert (await finish(await engine.workflow(LongNames).create())).output == "ok"
    assert calls.log == ["fits"]
    assert_names_limit_and_value(captured[0], "max_step_name", 256, 257)


async def test_step_name_limit_is_configurable_and_breaking_it_errors_an_instance(start_engine: StartEngine) -> None:
    class Named(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("short", lambda: 1)
            await step.do("much too long", lambda: 2)

    engine = await start_engine(Named, limits=Limits(max_step_name=10))
    st = await finish(await engine.workflow(Named).create())
    assert st.status == "errored"
    assert st.error is not None
    assert st.error["name"] == "stepstone.LimitExceededError"


async def test_steps_beyond_max_steps_raise_limit_exceeded_and_sleeps_do_not_count(start_engine: StartEngine) -> None:
    calls = Calls()
    captured: list[LimitExceededError] = []

    class Many(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            a = await step.do("a", calls.returning("a", 1))
            await step.sleep("nap 1", "10 ms")  # sleeps don't count; they make the run replay
            ev = await step.wait_for_event("ev", type="go", timeout="1 hour")
            await step.sleep("nap 2", "10 ms")
            b = await step.do("b", calls.returning("b", 2))
            try:
                await step.do("c", calls.returning("c", 3))
            except LimitExceededError as exc:
                captured.append(exc)
                return [a, ev.payload, b]
            return "no limit"

    client = await start_engine(Many, worker=False, limits=Limits(max_steps=3))
    inst = await client.workflow(Many).create()
    await inst.send_event("go", "event")
    await start_engine(Many, limits=Limits(max_steps=3))
    assert (await finish(inst)).output == [1, "event", 2]  # the recorded steps are all there
    assert calls.log == ["a", "b"]
    assert_names_limit_and_value(captured[0], "max_steps", 3, 4)


async def test_breaking_max_steps_uncaught_errors_the_instance(start_engine: StartEngine) -> None:
    class Loop(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            for i in range(10):
                await step.do(f"step {i}", lambda: None)

    engine = await start_engine(Loop, limits=Limits(max_steps=5))
    st = await finish(await engine.workflow(Loop).create())
    assert st.status == "errored"
    assert st.error is not None
    assert st.error["name"] == "stepstone.LimitExceededError"


def test_limits_are_an_engine_option(store_url: str) -> None:
    engine = stepstone.Engine(store_url, workflows=[Echo], limits=Limits(max_value_bytes=10, max_steps=2))
    assert isinstance(engine, stepstone.Engine)

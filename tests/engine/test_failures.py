"""Failed steps, `StepFailed`, compensation, errored instances and invalid step options (SPEC §2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import stepstone
from stepstone import InvalidInputError, StepFailed, Workflow, WorkflowEvent, WorkflowStep
from stepstone.store.base import RunWrite

from .support import Calls, StartEngine, finish


class CustomError(Exception):
    """A user's exception, named by module and qualified name in error_type."""


class Unprintable(Exception):
    """A user's exception whose text cannot be had: str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class Shop:
    class Declined(Exception):
        """A nested exception class: its qualified name is Shop.Declined."""


async def run_once(start_engine: StartEngine, workflow: type[Workflow], params: Any = None) -> stepstone.InstanceStatus:
    engine = await start_engine(workflow)
    return await finish(await engine.workflow(workflow).create(params=params))


NO_RETRY = {"limit": 0}


async def test_step_failed_carries_the_step_error_type_message_and_cause(start_engine: StartEngine) -> None:
    captured: list[StepFailed] = []

    class Validates(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("validate", Calls().raising("v", ValueError("bad value 7")), retries=NO_RETRY)
            except StepFailed as exc:
                captured.append(exc)
                return "caught"

    assert (await run_once(start_engine, Validates)).output == "caught"
    (exc,) = captured
    assert (exc.step, exc.error_type, exc.message) == ("validate", "ValueError", "bad value 7")
    assert isinstance(exc.__cause__, ValueError)
    assert str(exc.__cause__) == "bad value 7"
    assert isinstance(exc, stepstone.StepstoneError)


async def test_error_type_is_the_module_and_qualified_name_of_the_exception_class(start_engine: StartEngine) -> None:
    errors: dict[str, Exception] = {
        "KeyError": KeyError("sku"),
        f"{__name__}.CustomError": CustomError("boom"),
        f"{__name__}.Shop.Declined": Shop.Declined("no funds"),
        "stepstone.NonRetryableError": stepstone.NonRetryableError("stop"),
    }

    class RaisesThem(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            seen = []
            for i, error in enumerate(errors.values()):
                try:
                    await step.do(f"raise {i}", Calls().raising("r", error), retries=NO_RETRY)
                except StepFailed as exc:
                    seen.append(exc.error_type)
            return seen

    assert (await run_once(start_engine, RaisesThem)).output == list(errors)


async def test_an_exception_without_text_or_module_is_a_failed_attempt_like_any_other(
    start_engine: StartEngine,
) -> None:
    moduleless = type("Moduleless", (Exception,), {"__module__": None})
    calls = Calls()

    class Awkward(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def flaky(ctx: stepstone.StepContext) -> str:
                calls.note("flaky")
                if ctx.attempt == 1:
                    raise Unprintable
                return "second attempt"

            seen: list[Any] = [await step.do("flaky", flaky, retries={"limit": 1, "delay": 0})]
            for i, error in enumerate([Unprintable(), moduleless("odd class")]):
                try:
                    await step.do(f"fails {i}", Calls().raising("r", error), retries=NO_RETRY)
                except StepFailed as exc:
                    seen.append([exc.error_type, exc.message])
            return seen

    assert (await run_once(start_engine, Awkward)).output == [
        "second attempt",
        [f"{__name__}.Unprintable", f"<{__name__}.Unprintable whose str() raised RuntimeError>"],
        ["Moduleless", "odd class"],
    ]
    assert calls.count("flaky") == 2


@pytest.mark.parametrize("body", ["sync", "async"])
async def test_a_cancelled_error_raised_by_a_step_body_itself_is_a_failed_attempt(
    start_engine: StartEngine, body: str
) -> None:
    # Not a cancellation of the run (nothing cancelled it): what a library let out, say.
    calls = Calls()

    def sync_fn(ctx: stepstone.StepContext) -> str:
        calls.note("flaky")
        if ctx.attempt == 1:
            raise asyncio.CancelledError("leaked")
        return "second attempt"

    async def async_fn(ctx: stepstone.StepContext) -> str:
        return sync_fn(ctx)

    class Leaky(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            flaky = sync_fn if body == "sync" else async_fn
            seen: list[Any] = [await step.do("flaky", flaky, retries={"limit": 1, "delay": 0})]
            try:
                await step.do("always", Calls().raising("r", asyncio.CancelledError("gone")), retries=NO_RETRY)
            except StepFailed as exc:
                seen.append([exc.error_type, exc.message])
            return seen

    st = await run_once(start_engine, Leaky)
    assert (st.status, st.output) == ("complete", ["second attempt", ["asyncio.exceptions.CancelledError", "gone"]])
    assert calls.count("flaky") == 2


async def test_step_failed_is_raised_again_from_the_record_on_replay(start_engine: StartEngine) -> None:
    calls = Calls()
    captured: list[StepFailed] = []

    class FailsThenSleeps(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("fragile", calls.raising("fragile", CustomError("it broke")),
                              retries={"limit": 1, "delay": "10 ms"})  # fmt: skip
            except StepFailed as exc:
                captured.append(exc)
            await step.sleep("replay", "10 ms")
            return len(captured)

    assert (await run_once(start_engine, FailsThenSleeps)).output == 2  # the live run and the replay
    assert calls.count("fragile") == 2  # two attempts, none on replay
    assert [(e.step, e.error_type, e.message) for e in captured] == [
        ("fragile", f"{__name__}.CustomError", "it broke")
    ] * 2


async def test_error_messages_with_any_characters_are_recorded(start_engine: StartEngine) -> None:
    message = "bad 'input' \"quoted\" ✓ 日本語\nsecond line\ttab \\x00 backslash"

    class OddMessage(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("parse", Calls().raising("p", ValueError(message)), retries=NO_RETRY)
            except StepFailed as exc:
                await step.sleep("replay", "10 ms")
                return exc.message
            return "parsed"

    assert (await run_once(start_engine, OddMessage)).output == message


async def test_error_message_with_a_nul_character_reads_the_same_live_and_on_replay(start_engine: StartEngine) -> None:
    messages: list[str] = []

    class NulMessage(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("parse", Calls().raising("p", ValueError("bad byte \x00 here")), retries=NO_RETRY)
            except StepFailed as exc:
                messages.append(exc.message)
                await step.sleep("replay", "10 ms")
            return "done"

    assert (await run_once(start_engine, NulMessage)).output == "done"
    assert len(messages) == 2
    assert messages[0] == messages[1]  # replay sees what the live run saw


async def test_error_messages_with_lone_surrogates_are_recorded_escaped(start_engine: StartEngine) -> None:
    # "\ud800" has no UTF-8 form, so no database text holds it: it is kept as its escape,
    # the same live and on replay, and the instance still ends.
    messages: list[str] = []

    class SurrogateMessage(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("parse", Calls().raising("p", ValueError("bad \ud800 text")), retries=NO_RETRY)
            except StepFailed as exc:
                messages.append(exc.message)
                await step.sleep("replay", "10 ms")
            raise RuntimeError("gave up on \udcff")

    st = await run_once(start_engine, SurrogateMessage)
    assert (st.status, st.error) == ("errored", {"name": "RuntimeError", "message": "gave up on \\udcff"})
    assert messages == ["bad \\ud800 text"] * 2


async def test_workflow_catching_step_failed_can_compensate_and_complete(start_engine: StartEngine) -> None:
    calls = Calls()

    class Saga(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("reserve", calls.returning("reserve", "r-1"))
            try:
                await step.do("charge", calls.raising("charge", CustomError("declined")), retries=NO_RETRY)
            except StepFailed:
                await step.do("release reservation", calls.returning("release", True))
                return {"charged": False}
            return {"charged": True}

    st = await run_once(start_engine, Saga)
    assert (st.status, st.output, st.error) == ("complete", {"charged": False}, None)
    assert calls.log == ["reserve", "charge", "release"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad input"), {"name": "ValueError", "message": "bad input"}),
        (CustomError("custom"), {"name": f"{__name__}.CustomError", "message": "custom"}),
        (
            Unprintable(),
            {"name": f"{__name__}.Unprintable", "message": f"<{__name__}.Unprintable whose str() raised RuntimeError>"},
        ),
    ],
    ids=["builtin", "custom", "unprintable"],
)
async def test_exception_escaping_run_errors_the_instance_with_name_and_message(
    start_engine: StartEngine, error: Exception, expected: dict[str, str]
) -> None:
    class Escapes(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("fine", lambda: 1)
            raise error

    st = await run_once(start_engine, Escapes)
    assert (st.status, st.output, st.error) == ("errored", None, expected)


class SyncRun(Workflow):
    def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return "not a coroutine"


class GeneratorRun(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        yield await step.do("never", lambda: 1)


class FailingInit(Workflow):
    def __init__(self) -> None:
        raise RuntimeError("no configuration")

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("never", lambda: 1)


@pytest.mark.parametrize(
    ("workflow", "name", "message"),
    [
        (SyncRun, "TypeError", "run() of workflow 'SyncRun' returned 'not a coroutine', not a coroutine"),
        (GeneratorRun, "TypeError", "run() of workflow 'GeneratorRun' returned <async_generator"),
        (FailingInit, "RuntimeError", "no configuration"),
    ],
    ids=["sync-run", "async-generator-run", "failing-init"],
)
async def test_a_workflow_whose_run_cannot_start_errors_the_instance(
    start_engine: StartEngine, workflow: type[Workflow], name: str, message: str
) -> None:
    st = await run_once(start_engine, workflow)
    assert (st.status, st.output) == ("errored", None)
    assert st.error is not None and st.error["name"] == name and st.error["message"].startswith(message)


async def test_escaping_step_failed_reports_the_original_error_and_the_step(start_engine: StartEngine) -> None:
    class Unhandled(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("charge", Calls().raising("c", CustomError("card declined")), retries=NO_RETRY)

    st = await run_once(start_engine, Unhandled)
    assert st.status == "errored"
    assert st.error == {"name": f"{__name__}.CustomError", "message": "card declined", "step": "charge"}


async def test_escaping_non_retryable_error_reports_its_name_and_message(start_engine: StartEngine) -> None:
    class Unrecoverable(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("check", Calls().raising("c", stepstone.NonRetryableError("invalid order")))

    st = await run_once(start_engine, Unrecoverable)
    assert st.error == {"name": "stepstone.NonRetryableError", "message": "invalid order", "step": "check"}


# -- invalid step options ----------------------------------------------------------------------

INVALID_OPTIONS: dict[str, dict[str, Any]] = {
    "timeout 0": {"timeout": 0},
    "timeout '0 seconds'": {"timeout": "0 seconds"},
    "negative timeout": {"timeout": -5},
    "timeout junk": {"timeout": "soon"},
    "unknown retries key": {"retries": {"limit": 1, "tries": 3}},
    "negative limit": {"retries": {"limit": -1}},
    "unknown backoff": {"retries": {"backoff": "quadratic"}},
    "bad delay": {"retries": {"delay": "ten seconds"}},
    "negative delay": {"retries": {"delay": -1}},
    "config timeout 0": {"config": {"timeout": 0}},
    "config bad retries": {"config": {"retries": {"backoff": "random"}}},
}


async def test_invalid_step_options_raise_invalid_input_error_without_running_the_function(
    start_engine: StartEngine,
) -> None:
    calls = Calls()

    class BadOptions(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes: dict[str, str] = {}
            for label, options in INVALID_OPTIONS.items():
                try:
                    await step.do(f"step with {label}", calls.returning(label), **options)
                except InvalidInputError as exc:
                    outcomes[label] = "InvalidInputError" if isinstance(exc, ValueError) else "not a ValueError"
                else:
                    outcomes[label] = "accepted"
            # the run goes on after catching one
            outcomes["valid step"] = await step.do("valid", lambda: "ran")
            return outcomes

    st = await run_once(start_engine, BadOptions)
    assert st.output == {**dict.fromkeys(INVALID_OPTIONS, "InvalidInputError"), "valid step": "ran"}
    assert calls.log == []


async def test_invalid_retries_object_and_decorator_options_raise_invalid_input_error(
    start_engine: StartEngine,
) -> None:
    calls = Calls()

    class BadPolicies(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes: list[str] = []
            policies: list[Callable[[], stepstone.Retries]] = [
                lambda: stepstone.Retries(limit=-1),
                lambda: stepstone.Retries(backoff="sideways"),  # type: ignore[arg-type]
                lambda: stepstone.Retries(delay="whenever"),
            ]
            for make_policy in policies:
                try:
                    await step.do("with policy", calls.returning("policy"), retries=make_policy())
                    outcomes.append("accepted")
                except InvalidInputError:
                    outcomes.append("InvalidInputError")
            try:

                @step.do("decorated", timeout=0)
                def decorated() -> None:
                    calls.note("decorated")

                await decorated()
                outcomes.append("accepted")
            except InvalidInputError:
                outcomes.append("InvalidInputError")
            return outcomes

    assert (await run_once(start_engine, BadPolicies)).output == ["InvalidInputError"] * 4
    assert calls.log == []


async def test_invalid_step_option_escaping_run_errors_the_instance(start_engine: StartEngine) -> None:
    calls = Calls()

    class Unchecked(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("bad", calls.returning("bad"), timeout=0)

    st = await run_once(start_engine, Unchecked)
    assert st.status == "errored"
    assert st.error is not None
    assert st.error["name"] == "stepstone.InvalidInputError"
    assert calls.log == []


@pytest.mark.parametrize("failing", ["a step's record", "the run's end"])
async def test_a_store_failing_for_a_moment_delays_the_run_but_runs_no_step_again(
    start_engine: StartEngine, failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()

    class Steady(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("first", calls.returning("first", 1))
            second = await step.do("second", calls.returning("second", 2))
            return first + second

    engine = await start_engine(Steady)
    store = engine.store
    write = store.write
    failures = [RuntimeError("the database is restarting")] * 2

    async def flaky(run: RunWrite) -> Any:
        hit = run.end is None and any(s.key.name == "second" for s in run.steps)
        if (hit if failing == "a step's record" else run.end == "complete") and failures:
            raise failures.pop()
        return await write(run)

    store.write = flaky  # type: ignore[method-assign]
    st = await finish(await engine.workflow(Steady).create())
    assert (st.status, st.output) == ("complete", 3)
    assert failures == []
    assert sorted(calls.log) == ["first", "second"]  # nothing ran again
    assert "the database is restarting" in caplog.text

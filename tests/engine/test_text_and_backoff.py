"""Values that are no UTF-8 text (lone surrogates), NUL, and retry waits that would overflow
(SPEC §2 "Returns fn's result, which must be JSON-serializable", §4 "before anything is
stored", §2 "Retries")."""

from __future__ import annotations

from typing import Any

import pytest

from stepstone import (
    InvalidInputError,
    Retries,
    StepFailed,
    Workflow,
    WorkflowEvent,
    WorkflowStep,
)
from stepstone.retries import MAX_RETRY_WAIT
from stepstone.serialization import storable_text

from .support import Calls, StartEngine, finish, wait_for_status

LONE = "\ud800"
"""A lone surrogate: a Python str may hold one, but no UTF-8 text (nor JSON text) can."""


class Echo(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return event.payload


class AwaitReview(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        review = await step.wait_for_event("review", type="review", timeout="1 minute")
        return review.payload


# -- step results ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [LONE, f"ok {LONE}", ["fine", {"deep": [f"x{LONE}"]}], {f"key{LONE}": 1}, ("tuple", "\udc80")],
    ids=["alone", "in-text", "nested", "dict-key", "tuple"],
)
async def test_step_result_with_a_lone_surrogate_fails_the_step_at_once_as_a_type_error(
    start_engine: StartEngine, result: Any
) -> None:
    calls = Calls()

    class Surrogate(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def produce() -> Any:
                calls.note("produce")
                return result

            try:
                await step.do("produce text", produce, retries={"limit": 3, "delay": 0})
            except StepFailed as exc:
                return {"type": exc.error_type, "step": exc.step, "message": exc.message}
            return "recorded"

    engine = await start_engine(Surrogate)
    status = await finish(await engine.workflow(Surrogate).create())
    assert status.status == "complete"
    assert status.output["type"] == "TypeError"
    assert status.output["step"] == "produce text"
    assert "produce text" in status.output["message"]
    assert calls.log == ["produce"]  # no retry


async def test_step_result_with_a_lone_surrogate_errors_the_instance_when_not_caught(
    start_engine: StartEngine,
) -> None:
    class Uncaught(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("bad text", lambda: {"text": LONE})

    engine = await start_engine(Uncaught)
    inst = await engine.workflow(Uncaught).create()
    status = await finish(inst)
    assert status.status == "errored"
    assert status.error is not None
    assert (status.error["name"], status.error["step"]) == ("TypeError", "bad text")
    step = (await inst.describe()).steps[0]
    assert (step.name, step.status, len(step.attempts) or 1) == ("bad text", "failed", 1)


async def test_nul_and_other_text_round_trip_through_results_params_events_and_output(
    start_engine: StartEngine,
) -> None:
    text = "nul\x00 é 日本 😀 \\ud800 (an escape, not a surrogate)"

    class Texts(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            result = await step.do("text", lambda: {text: [text]})
            review = await step.wait_for_event("review", type="review", timeout="1 minute")
            return {"params": event.payload, "result": result, "event": review.payload}

    engine = await start_engine(Texts)
    inst = await engine.workflow(Texts).create(params=[text])
    await wait_for_status(inst, "waiting")
    await inst.send_event("review", {"text": text})
    status = await finish(inst)
    assert status.output == {"params": [text], "result": {text: [text]}, "event": {"text": text}}


# -- params and event payloads --------------------------------------------------------------


@pytest.mark.parametrize(
    "params", [LONE, {"topic": f"tides{LONE}"}, [1, [2, "\udfff"]], {"\udc80": True}], ids=str
)
async def test_params_with_a_lone_surrogate_are_invalid_input_and_nothing_is_stored(
    start_engine: StartEngine, params: Any
) -> None:
    engine = await start_engine(Echo)
    echo = engine.workflow(Echo)
    with pytest.raises(InvalidInputError) as caught:
        await echo.create(id="bad", params=params)
    assert isinstance(caught.value, ValueError)
    assert "params" in str(caught.value) and "'bad'" in str(caught.value)
    assert "surrogate" in str(caught.value)
    with pytest.raises(InvalidInputError):
        await echo.create_batch([{"id": "good", "params": {"ok": 1}}, {"id": "bad", "params": params}])
    assert list(await echo.list()) == []


async def test_event_payload_with_a_lone_surrogate_is_invalid_input_and_is_not_kept(
    start_engine: StartEngine,
) -> None:
    engine = await start_engine(AwaitReview)
    inst = await engine.workflow(AwaitReview).create(params={})
    with pytest.raises(InvalidInputError) as caught:
        await inst.send_event("review", {"approved": LONE})
    assert "payload" in str(caught.value) and "'review'" in str(caught.value)
    assert "surrogate" in str(caught.value)
    # The refused payload was not kept: the wait takes the next event sent.
    await inst.send_event("review", {"approved": True})
    assert (await finish(inst)).output == {"approved": True}


# -- workflow output ------------------------------------------------------------------------


async def test_output_with_a_lone_surrogate_ends_the_instance_errored_with_a_type_error(
    start_engine: StartEngine,
) -> None:
    class BadOutput(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("fine", lambda: "fine")
            return {"summary": f"done {LONE}"}

    engine = await start_engine(BadOutput)
    status = await finish(await engine.workflow(BadOutput).create())
    assert status.status == "errored"
    assert status.error is not None
    assert status.error["name"] == "TypeError"
    assert "output" in status.error["message"] and "BadOutput" in status.error["message"]


async def test_error_messages_with_nul_and_lone_surrogates_are_stored_as_escapes(
    start_engine: StartEngine,
) -> None:
    class Noisy(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def fail() -> None:
                raise ValueError(f"bad\x00byte {LONE}")

            await step.do("noisy", fail, retries={"limit": 0})

    engine = await start_engine(Noisy)
    status = await finish(await engine.workflow(Noisy).create())
    assert status.status == "errored"
    assert status.error == {"name": "ValueError", "message": "bad\\x00byte \\ud800", "step": "noisy"}


@pytest.mark.parametrize("name", [f"odd{LONE}", "nul\x00", "", "x" * 257, "shop/orders", ".", ".."])
def test_workflow_names_must_be_utf8_text_that_fits_in_a_path_segment(name: str) -> None:
    from stepstone import Engine

    class Odd(Workflow):
        pass

    Odd.name = name
    with pytest.raises(InvalidInputError, match="invalid workflow name"):
        Engine("sqlite:///unused.db", workflows=[Odd])


def test_workflow_names_may_hold_any_other_text() -> None:
    from stepstone import Engine

    for name in ("content-pipeline", "x" * 256, "sp ace é?#%", "a.b", "...", "订单"):

        class Fine(Workflow):
            pass

        Fine.name = name
        assert list(Engine("sqlite:///unused.db", workflows=[Fine]).workflows) == [name]


def test_storable_text_escapes_nul_and_lone_surrogates_and_keeps_other_text() -> None:
    assert storable_text("plain") == "plain"
    assert storable_text("é 日本 😀") == "é 日本 😀"
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text(f"x{LONE}y\udfff") == "x\\ud800y\\udfff"
    assert storable_text(f"é\x00{LONE}") == "é\\x00\\ud800"
    storable_text(f"é\x00{LONE}").encode()  # UTF-8 now


# -- retry waits ----------------------------------------------------------------------------


def test_exponential_wait_with_zero_delay_stays_zero_however_many_retries() -> None:
    policy = Retries(limit=5000, delay=0, backoff="exponential")
    assert [policy.wait_before_retry(n) for n in (1, 1024, 1025, 1100, 5000, 10**6)] == [0.0] * 6


@pytest.mark.parametrize(
    ("backoff", "retries"),
    [("linear", (10**8, 10**12, 10**400)), ("exponential", (26, 1025, 5000, 10**6, 10**400))],
    ids=["linear", "exponential"],
)
def test_growing_waits_stop_at_the_maximum_and_never_overflow(backoff: str, retries: tuple[int, ...]) -> None:
    policy = Retries(limit=10**9, delay="1 second", backoff=backoff)  # type: ignore[arg-type]
    assert policy.wait_before_retry(1) == 1.0
    assert [policy.wait_before_retry(n) for n in retries] == [MAX_RETRY_WAIT] * len(retries)
    assert MAX_RETRY_WAIT == 365 * 24 * 3600


def test_waits_follow_the_spec_below_the_maximum() -> None:
    assert Retries(delay=2, backoff="exponential").wait_before_retry(4) == 16.0
    assert Retries(delay=2, backoff="linear").wait_before_retry(4) == 8.0
    assert Retries(delay=2, backoff="constant").wait_before_retry(4000) == 2.0
    # A delay longer than the maximum is kept as given (the first retry waits it); it doesn't grow.
    long = Retries(delay="400 days", backoff="exponential")
    assert long.wait_before_retry(1) == long.wait_before_retry(3000) == 400 * 86400.0


async def test_a_step_with_zero_delay_retries_past_a_thousand_attempts(start_engine: StartEngine) -> None:
    class Stubborn(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            def flaky(ctx: Any) -> int:
                if ctx.attempt < 1100:
                    raise RuntimeError(f"attempt {ctx.attempt}")
                return int(ctx.attempt)

            return await step.do("flaky", flaky, retries={"limit": 1200, "delay": 0, "backoff": "exponential"})

    engine = await start_engine(Stubborn)
    status = await finish(await engine.workflow(Stubborn).create(), timeout=60)
    assert (status.status, status.output) == ("complete", 1100)

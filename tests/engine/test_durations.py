"""The durations grammar, as step options and timers take it (SPEC §2, "Durations everywhere")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from stepstone import InvalidInputError, StepContext, Workflow, WorkflowEvent, WorkflowStep

from .support import StartEngine, finish, wait_for_status

# (duration as written, seconds)
VALID: list[tuple[Any, float]] = [
    ("1 millisecond", 0.001),
    ("250 milliseconds", 0.25),
    ("250 ms", 0.25),
    ("1 second", 1),
    ("2 seconds", 2),
    ("2 s", 2),
    ("1 minute", 60),
    ("3 minutes", 180),
    ("3 m", 180),
    ("1 hour", 3600),
    ("2 hours", 7200),
    ("2 h", 7200),
    ("1 day", 86400),
    ("3 days", 259200),
    ("3 d", 259200),
    ("1 week", 604800),
    ("2 weeks", 1209600),
    ("2 w", 1209600),
    ("10 Minutes", 600),
    ("1 HOUR", 3600),
    ("5 Ms", 0.005),
    ("0.5 seconds", 0.5),
    ("1.5 hours", 5400),
    ("10minutes", 600),
    ("30s", 30),
    ("2.5m", 150),
    (90, 90),
    (1.5, 1.5),
    (timedelta(minutes=3), 180),
    (timedelta(milliseconds=1), 0.001),
]

INVALID: list[Any] = [
    "-1 seconds",
    -1,
    -0.5,
    timedelta(seconds=-1),
    "10 fortnights",
    "ten seconds",
    "",
    "seconds",
    "5",
    "1,5 seconds",
    "5 seconds ago",
    "1 s s",
    "1  s",  # one space at most between the number and the unit, and none around them
    "1\ts",
    " 1 s",
    "1 s ",
    "1 s\n",
    None,
    [1],
    {"seconds": 5},
    "\u0661\u0660 seconds",  # Arabic-Indic digits: a number is ASCII digits
    "60000 weeks",  # over 1,000 years: its end could be past what a datetime shows
    1e12,
    10**400,  # too large for a float
    -(10**400),
    timedelta(days=400_000),
]


async def run_once(start_engine: StartEngine, workflow: type[Workflow]) -> Any:
    engine = await start_engine(workflow)
    return (await finish(await engine.workflow(workflow).create())).output


async def test_durations_in_every_unit_abbreviation_case_and_form_resolve_to_their_length(
    start_engine: StartEngine,
) -> None:
    async def timeout_seconds(ctx: StepContext) -> float:  # async: a 1 ms timeout leaves no time for a thread
        return ctx.config.timeout.total_seconds()

    class Timeouts(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return [
                await step.do(f"step {i}", timeout_seconds, timeout=duration) for i, (duration, _) in enumerate(VALID)
            ]

    resolved = await run_once(start_engine, Timeouts)
    assert {repr(d): r for (d, _), r in zip(VALID, resolved, strict=True)} == {
        repr(d): pytest.approx(s) for d, s in VALID
    }


@pytest.mark.parametrize("where", ["sleep", "step timeout", "retry delay", "wait timeout"])
async def test_invalid_durations_raise_invalid_input_error_naming_the_value(
    start_engine: StartEngine, where: str
) -> None:
    async def use(step: WorkflowStep, i: int, value: Any) -> None:
        if where == "sleep":
            await step.sleep(f"nap {i}", value)
        elif where == "step timeout":
            await step.do(f"step {i}", lambda: None, timeout=value)
        elif where == "retry delay":
            await step.do(f"step {i}", lambda: None, retries={"delay": value})
        else:
            await step.wait_for_event(f"wait {i}", type="never", timeout=value)

    class BadDurations(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes = {}
            for i, value in enumerate(INVALID):
                if value is None and where in ("step timeout", "retry delay"):
                    continue  # None there means "not given": the default
                try:
                    await use(step, i, value)
                    outcome = "accepted"
                except InvalidInputError as exc:
                    if not isinstance(exc, ValueError):
                        outcome = "not a ValueError"
                    elif str(value) in str(exc) or repr(value) in str(exc):
                        outcome = "rejected"
                    else:
                        outcome = f"message does not name the value: {exc}"
                outcomes[repr(value)] = outcome
            return outcomes

    expected = {repr(v): "rejected" for v in INVALID}
    if where in ("step timeout", "retry delay"):
        del expected["None"]
    assert await run_once(start_engine, BadDurations) == expected


async def test_zero_is_a_valid_sleep_but_not_a_valid_timeout(start_engine: StartEngine) -> None:
    class Zero(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("no time", 0)
            await step.sleep("no time either", "0 s")
            try:
                await step.do("instant timeout", lambda: None, timeout="0 ms")
            except InvalidInputError:
                return "timeout rejected"
            return "timeout accepted"

    assert await run_once(start_engine, Zero) == "timeout rejected"


async def test_the_longest_sleep_is_waited_and_shown_and_a_time_past_year_9999_is_refused(
    start_engine: StartEngine,
) -> None:
    class Long(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            for i, never in enumerate((1e20, 10**400)):
                try:
                    await step.sleep_until(f"never {i}", never)
                    raise AssertionError(f"sleep_until({never!r}) was accepted")
                except InvalidInputError as exc:
                    assert repr(never) in str(exc)
            await step.sleep("almost forever", "52000 weeks")

    engine = await start_engine(Long)
    inst = await engine.workflow(Long).create()
    await wait_for_status(inst, "waiting")
    detail = await inst.describe()
    (nap,) = [s for s in detail.steps if s.name == "almost forever"]
    assert nap.status == "waiting" and nap.due is not None and nap.due.year > 3000
    await inst.terminate()

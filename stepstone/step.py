"""`WorkflowStep`, the `step` argument of `run()`, and the `StepContext` a step function may take."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from stepstone import durations, retries
from stepstone.retries import StepConfig
from stepstone.serialization import check_id
from stepstone.workflow import Event

if TYPE_CHECKING:
    from stepstone.replay import Run

T = TypeVar("T")


@dataclass(frozen=True)
class StepInfo:
    name: str
    count: int
    """Occurrence of this name within the run, 1-based."""


@dataclass(frozen=True)
class StepContext:
    """What a step function taking a `ctx` keyword argument receives."""

    step: StepInfo
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    config: StepConfig
    """The resolved retries and timeout."""


_NO_FN: Any = object()
"""`step.do` given no function (the decorator form), as against one given None (an error)."""


class WorkflowStep:
    """The `step` object of `run()`: durable steps, timers and event waits."""

    def __init__(self, run: Run) -> None:
        self._run = run

    @overload
    def do(self, name: str, fn: Callable[..., Any], *, retries: Any = None, timeout: Any = None,
           config: Any = None) -> Awaitable[Any]: ...  # fmt: skip
    @overload
    def do(self, name: str | None = None, *, retries: Any = None, timeout: Any = None,
           config: Any = None) -> Callable[[Callable[..., Any]], Callable[[], Awaitable[Any]]]: ...  # fmt: skip
    @overload
    def do(self, name: Callable[..., Any], /) -> Callable[[], Awaitable[Any]]: ...

    def do(self, name: Any = None, fn: Any = _NO_FN, *, retries: Any = None, timeout: Any = None,
           config: Any = None) -> Any:  # fmt: skip
        """Run `fn` as a durable step, or (without `fn`) decorate a function into one.

        `await step.do("name", fn, retries=..., timeout=...)` returns fn's recorded
        result; `@step.do("name")` above a function gives an awaitable callable.
        """
        if fn is _NO_FN and callable(name):  # bare @step.do
            return self._decorate(name.__name__, name, retries, timeout, config)
        if fn is _NO_FN:

            def decorator(func: Callable[..., Any]) -> Callable[[], Awaitable[Any]]:
                return self._decorate(name if name is not None else func.__name__, func, retries, timeout, config)

            return decorator
        return self._run.do(name, fn, _resolve(retries, timeout, config))

    def _decorate(
        self, name: str, func: Callable[..., Any], retries_: Any, timeout: Any, config: Any
    ) -> Callable[[], Awaitable[Any]]:
        _resolve(retries_, timeout, config)  # bad options fail where they are written

        @functools.wraps(func)
        def call() -> Awaitable[Any]:
            return self._run.do(name, func, _resolve(retries_, timeout, config))

        return call

    def sleep(self, name: str, duration: Any) -> Awaitable[None]:
        """A durable timer: the instance waits `duration` without holding a worker."""
        return self._run.sleep(name, durations.seconds(duration, what="sleep duration"), until=None)

    def sleep_until(self, name: str, when: datetime | float) -> Awaitable[None]:
        """A durable timer until `when` (aware datetime or epoch seconds); past times return at once."""
        return self._run.sleep(name, None, until=durations.epoch_seconds(when))

    def wait_for_event(self, name: str, *, type: str, timeout: Any = "24 hours") -> Awaitable[Event]:
        """Wait for an event of `type` sent to this instance; raises WaitTimeout after `timeout`."""
        check_id(type, what="event type")
        return self._run.wait_for_event(name, type, durations.seconds(timeout, what="wait timeout"))


def _resolve(retries_: Any, timeout: Any, config: Any) -> StepConfig:
    return retries.resolve(retries_, timeout, config)

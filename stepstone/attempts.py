"""One attempt of a step's function: called with `ctx` or not, as a coroutine on the event
loop or in a thread, within the attempt's timeout (SPEC §2)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any

from stepstone.errors import StepTimeoutError
from stepstone.retries import StepConfig
from stepstone.step import StepContext, StepInfo
from stepstone.store.base import StepKey

_call_kinds: dict[object, tuple[bool, bool]] = {}


def _call_kind(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """Whether a step function takes the `ctx` keyword argument, and whether it is a
    coroutine function.

    Cached by code object for plain functions (a step's function is usually a new closure
    on every run), but not for those carrying attributes: a decorator's wrapper made with
    functools.wraps shares one code object among all the functions it wraps, and its
    signature is the wrapped function's (`__wrapped__`)."""
    func = getattr(fn, "__func__", fn)
    code = func.__code__ if type(func) is types.FunctionType and not func.__dict__ else None
    if code is not None:
        kind = _call_kinds.get(code)
        if kind is not None:
            return kind
    try:
        wants_ctx = "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wants_ctx = False
    kind = (wants_ctx, inspect.iscoroutinefunction(fn))
    if code is not None:
        _call_kinds[code] = kind
    return kind


class _Started:
    """The rest of a coroutine already run up to its first wait: awaiting this goes on
    from there exactly as `await coro` would have (what the coroutine yielded, the
    event loop's answers, a cancellation thrown in).

    A step's coroutine runs this way so that its timeout timer is set only if it waits:
    most step bodies that are coroutines never do, and a timeout could not interrupt
    them anyway (it cancels at a wait).
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, message = self._coro, self._yielded
        while True:
            try:
                answer = yield message
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    message = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    message = coro.send(answer)
                except StopIteration as done:
                    return done.value


def _in_thread(loop: asyncio.AbstractEventLoop, call: Callable[[], Any]) -> Any:
    """Call a sync step function in its thread, with the engine's loop as the thread's event
    loop: what it calls to make the awaitable it returns (`lambda: asyncio.gather(a(), b())`,
    ensure_future) then finds that loop, where the awaitable is awaited, as it would in a
    coroutine. (The thread does not run the loop: asyncio.run() still works in it.)"""
    asyncio.set_event_loop(loop)
    try:
        return call()
    finally:
        asyncio.set_event_loop(None)


def _overran(key: StepKey, attempt: int, timeout: float) -> StepTimeoutError:
    return StepTimeoutError(f"step {key.name!r} attempt {attempt} ran over its timeout of {timeout:g} s")


async def run(fn: Callable[..., Any], key: StepKey, attempt: int, config: StepConfig, executor: Executor | None) -> Any:
    """Call `fn` for attempt `attempt` of step `key` and return what it returned (awaited,
    if it returned an awaitable); StepTimeoutError once the attempt overruns its timeout.
    A sync `fn` runs in `executor` (the loop's default if None)."""
    wants_ctx, is_coroutine = _call_kind(fn)
    call = fn
    if wants_ctx:
        call = functools.partial(fn, ctx=StepContext(StepInfo(key.name, key.count), attempt, config))
    timeout = config.timeout.total_seconds()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    limit: asyncio.Timeout | None = None
    try:
        if is_coroutine:
            coro = call()
            try:
                yielded = coro.send(None)
            except StopIteration as done:
                result = done.value  # it ended without waiting: no timer was needed
            else:
                async with asyncio.timeout_at(deadline) as limit:
                    result = await _Started(coro, yielded)
        else:
            async with asyncio.timeout_at(deadline) as limit:
                result = await loop.run_in_executor(executor, contextvars.copy_context().run, _in_thread, loop, call)
                if inspect.isawaitable(result):
                    result = await result
    except TimeoutError:
        if limit is not None and limit.expired():
            raise _overran(key, attempt, timeout) from None
        raise
    finally:
        # It refers to the task: kept in this frame, which a failure's traceback holds, it
        # would make a reference cycle (task, its exception, traceback, frame, task).
        limit = None
    if loop.time() > deadline:
        # It overran without a wait at which the timer could stop it (it blocked the
        # event loop, or ended before the timer's turn came): the attempt still failed.
        raise _overran(key, attempt, timeout)
    return result

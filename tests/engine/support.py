"""Helpers for the engine behaviour tests: polling with a deadline, gates that hold a step,
and call logs that show how often a step function ran."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import stepstone

T = TypeVar("T")

DEADLINE = 10.0
"""Seconds a test waits for something that should happen well before."""


class StartEngine(Protocol):
    """The `start_engine` fixture: start an Engine on the test's database; closed at teardown."""

    def __call__(
        self,
        *workflows: type[stepstone.Workflow],
        worker: bool = ...,
        limits: stepstone.Limits | None = ...,
    ) -> Awaitable[stepstone.Engine]: ...


async def finish(inst: stepstone.Instance, timeout: float = DEADLINE) -> stepstone.InstanceStatus:
    """Wait for the instance to end (complete, errored or terminated)."""
    return await inst.wait(timeout=timeout)


async def wait_for_status(
    inst: stepstone.Instance, *statuses: str, timeout: float = DEADLINE
) -> stepstone.InstanceStatus:
    """Poll until the instance's status is one of `statuses`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        st = await inst.status()
        if st.status in statuses:
            return st
        if loop.time() > deadline:
            raise AssertionError(f"{inst!r} is {st.status!r} after {timeout} s; expected one of {statuses}")
        await asyncio.sleep(0.005)


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll until `predicate()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.005)


async def until_equal(read: Callable[[], Awaitable[T]], expected: T, what: str, timeout: float = DEADLINE) -> None:
    """Poll the async `read()` until it gives `expected`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await read()) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}; last read {value!r}")
        await asyncio.sleep(0.005)


async def step_statuses(inst: stepstone.Instance) -> list[tuple[str, str]]:
    """(name, status) of each step in the instance's history, as describe() gives it."""
    return [(s.name, s.status) for s in (await inst.describe()).steps]


async def stays(inst: stepstone.Instance, status: str, seconds: float) -> None:
    """Assert that the instance keeps `status` for `seconds` (polling all along)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert (await inst.status()).status == status
        await asyncio.sleep(0.01)
    assert (await inst.status()).status == status


async def until_time(epoch: float) -> None:
    """Let wall-clock time pass until `epoch` (for timers that must be overdue)."""
    while time.time() < epoch:
        await asyncio.sleep(max(0.0, min(0.05, epoch - time.time())))


class Calls:
    """A log of step function calls (thread-safe: sync step functions run in threads)."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._lock = threading.Lock()

    def note(self, label: str) -> None:
        with self._lock:
            self.log.append(label)

    def count(self, label: str) -> int:
        with self._lock:
            return self.log.count(label)

    def returning(self, label: str, value: Any = None) -> Callable[[], Any]:
        """A sync step function that notes `label` and returns `value`."""

        def fn() -> Any:
            self.note(label)
            return value

        return fn

    def raising(self, label: str, error: BaseException) -> Callable[[], Any]:
        """A sync step function that notes `label` and raises `error`."""

        def fn() -> Any:
            self.note(label)
            raise error

        return fn


class Gate:
    """Holds a step inside its (async) function until the test releases it.

    With `first_only`, only the first call is held; later calls (after a restart or
    takeover) go straight through.
    """

    def __init__(self, *, first_only: bool = False) -> None:
        self.first_only = first_only
        self.calls = 0
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def hold(self) -> int:
        self.calls += 1
        call = self.calls
        self.entered.set()
        if call == 1 or not self.first_only:
            await self.released.wait()
        return call

    async def wait_entered(self, timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            await self.entered.wait()

    def release(self) -> None:
        self.released.set()


async def awaited(awaitable: Awaitable[T]) -> T:
    """Await an awaitable inside a coroutine (for `TaskGroup.create_task`)."""
    return await awaitable

"""The threads that run sync step functions: daemon threads, so that exit never waits for them.

A sync step that overruns its timeout cannot be cancelled; its attempt fails and the
thread is abandoned. `concurrent.futures.ThreadPoolExecutor` joins its threads when
the interpreter exits, so one abandoned `time.sleep(3600)` would hold a stopping
worker for an hour. These threads are daemons: the process exits when it is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    """Runs submitted calls on up to `max_workers` daemon threads, started as needed."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "stepstone-step") -> None:
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        """Threads waiting for work."""
        self._queued = 0
        """Calls submitted that no thread has taken yet."""
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a step after the engine closed")
            future: Future[T] = Future()
            self._work.put((future, fn, args, kwargs))
            self._queued += 1
            # One idle thread per queued call: an idle thread has not always taken the
            # previous call yet, so `_idle > 0` alone would let calls wait behind each other.
            if self._queued > self._idle and len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._serve, name=f"{self._prefix}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            work = self._work.get()
            with self._lock:
                self._idle -= 1
                if work is not None:
                    self._queued -= 1
            if work is None:
                return
            _call(*work)
            # Not kept while the thread waits for the next call; nor by a failure's traceback,
            # whose frames lead back to this one.
            del work


def _call(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
        # Its traceback holds this frame: without the future in it, no reference cycle.
        future = None  # type: ignore[assignment]
    else:
        future.set_result(result)

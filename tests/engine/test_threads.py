"""The daemon threads that run sync step functions (stepstone/threads.py)."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import time
import weakref

from stepstone.threads import DaemonThreadPool


def test_calls_submitted_together_run_together_even_when_some_threads_are_idle() -> None:
    pool = DaemonThreadPool(max_workers=8)
    try:
        for warm in [pool.submit(lambda: None) for _ in range(3)]:
            warm.result(timeout=5)  # three threads now wait, idle
        together = threading.Barrier(4, timeout=5)  # broken unless all four calls run at once
        calls = [pool.submit(together.wait) for _ in range(4)]
        assert sorted(call.result(timeout=10) for call in calls) == [0, 1, 2, 3]
    finally:
        pool.shutdown(wait=False)


def test_no_more_threads_than_max_workers() -> None:
    pool = DaemonThreadPool(max_workers=2)
    try:
        release = threading.Event()
        calls = [pool.submit(release.wait, 5) for _ in range(5)]
        release.set()
        assert all(call.result(timeout=10) for call in calls)
        assert len(pool._threads) == 2
    finally:
        pool.shutdown(wait=False)


class Marker:
    """An argument of a call, to tell when nothing refers to the call any more."""


def test_a_thread_keeps_nothing_of_a_call_once_it_is_answered() -> None:
    # Neither while it waits for the next call nor through a failure's traceback (whose
    # frames lead back to the thread's own): a step's function and what it holds (the
    # run's objects) would outlive the step, or wait for the cycle collector.
    def fail(marker: Marker) -> None:
        raise ValueError("no")

    pool = DaemonThreadPool(max_workers=1)
    gc.disable()
    try:
        for fn in (id, fail):
            marker = Marker()
            ref = weakref.ref(marker)
            call = pool.submit(fn, marker)
            del marker
            concurrent.futures.wait([call], timeout=5)
            assert call.done()
            del call
            deadline = time.monotonic() + 5
            while ref() is not None and time.monotonic() < deadline:
                time.sleep(0.01)  # (the thread may not have left the call's frame yet)
            assert ref() is None, f"the call of {fn.__name__} is still referenced"
    finally:
        gc.enable()
        pool.shutdown(wait=False)

"""The daemon threads that run sync step functions (stepstone/threads.py)."""

from __future__ import annotations

import threading

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

"""The one source of "now" for the engine, so that tests can move time."""

from __future__ import annotations

import time


def now() -> float:
    """The current time, as epoch seconds (float)."""
    return time.time()


EARLY = 0.005
"""Seconds before its end at which a long wait looks at the clock again (see `first_leg`)."""


def first_leg(delay: float) -> float:
    """How long to sleep first, of a wait of `delay` seconds, to wake on time.

    An idle machine may wake a process late in proportion to how long it slept (on a
    2 vCPU virtual machine: epoll 3 ms late after 300 ms, 6 ms after a second, 10 ms for
    asyncio), and keeps a short sleep short (0.1 ms late after 1 ms). So a wait longer
    than a few milliseconds sleeps in legs: to shortly before its end (EARLY, or a
    fiftieth of what is left if more), then the rest, the last one short.
    """
    return delay if delay <= 2 * EARLY else delay - max(EARLY, delay / 50)

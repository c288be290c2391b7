"""The one source of "now" for the engine, so that tests can move time."""

from __future__ import annotations

import time


def now() -> float:
    """The current time, as epoch seconds (float)."""
    return time.time()

"""How long finished instances are kept (`Retention`), and the pruning that enforces it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepstone import clock, durations
from stepstone.store.base import Store

log = logging.getLogger("stepstone.retention")

PRUNE_BATCH = 1000


@dataclass(frozen=True)
class Retention:
    """Keep finished instances this long after they end, then delete them (None: forever).

    Each is a duration: a timedelta, seconds, or a string like "30 days".
    """

    complete: Any = None
    """How long a complete instance is kept."""
    errored: Any = None
    """How long an errored instance is kept."""
    terminated: Any = None
    """How long a terminated instance is kept."""

    def __post_init__(self) -> None:
        for status, value in self.periods().items():
            durations.seconds(value, what=f"retention of {status} instances")

    def periods(self) -> dict[str, Any]:
        """The statuses with a retention period, and the period as given."""
        given = {"complete": self.complete, "errored": self.errored, "terminated": self.terminated}
        return {status: value for status, value in given.items() if value is not None}


async def prune(store: Store, workflows: Sequence[str], retention: Retention) -> int:
    """Delete the finished instances of `workflows` older than their retention; returns how many."""
    removed = 0
    now = clock.now()
    for status, period in retention.periods().items():
        before = now - durations.seconds(period)
        while True:
            count = await store.prune(workflows, status, before, PRUNE_BATCH)
            removed += count
            if count < PRUNE_BATCH:
                break
    if removed:
        log.info("retention: deleted %d finished instances", removed)
    return removed

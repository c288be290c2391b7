"""Fixtures of the crash tests: a cluster of real worker processes on a fresh store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import Cluster


@pytest.fixture
async def cluster(store_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Worker processes on `store_url`; every one still running is SIGKILLed at teardown."""
    workers = Cluster(store_url, tmp_path)
    try:
        yield workers
    finally:
        await workers.close()

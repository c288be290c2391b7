"""Fixtures of the engine behaviour tests: engines started on the test's database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

import stepstone

from .support import StartEngine


@pytest.fixture
async def start_engine(store_url: str) -> AsyncIterator[StartEngine]:
    """Start Engines on the test's database (`store_url`, from tests/conftest.py: [sqlite] and
    [postgres]): `await start_engine(W1, W2, worker=False)`.

    Every engine started is closed at teardown, last started first.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *workflows: type[stepstone.Workflow],
            worker: bool = True,
            limits: stepstone.Limits | None = None,
        ) -> stepstone.Engine:
            engine = stepstone.Engine(store_url, workflows=workflows, worker=worker, limits=limits)
            return await stack.enter_async_context(engine)

        yield start

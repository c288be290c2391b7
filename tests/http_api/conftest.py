"""Fixtures of the HTTP API tests: the app on an engine on the test's database, called in-process.

`client` calls the app through httpx's ASGI transport (no socket); `engine` is a client
Engine (no worker), so instances stay where the test puts them. `live` adds a worker,
for tests that need instances to run. Both run once per store, [sqlite] and [postgres].
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from stepstone import Engine
from stepstone.http import create_app

from .app import Flaky, Greeter

BASE_URL = "http://127.0.0.1:8787"
"""A loopback host: without a token, the API answers no other (auth.py)."""


@pytest.fixture(autouse=True)
def no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say which token they want; the developer's environment does not decide."""
    monkeypatch.delenv("STEPSTONE_API_TOKEN", raising=False)


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[Engine]:
    async with Engine(store_url, workflows=[Greeter, Flaky], worker=False) as engine:
        yield engine


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(engine) as client:
        yield client


@pytest.fixture
async def live(store_url: str) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    """An engine with a worker, and a client of its API."""
    async with Engine(store_url, workflows=[Greeter, Flaky]) as engine, asgi_client(engine) as client:
        yield engine, client


def asgi_client(engine: Engine, **options: object) -> httpx.AsyncClient:
    app = create_app(engine, poll_interval=0.05, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)

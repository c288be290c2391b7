"""Fixtures shared by the whole suite: real databases, one fresh database per test.

`store_url` runs a test once per store, `[sqlite]` and `[postgres]`. PostgreSQL comes
from `$STEPSTONE_TEST_PG` (default: postgres on 127.0.0.1:5432); each test gets its
own database, cloned from a session template that already holds the migrated schema.
Without a server the postgres cases are skipped, except under `CI=true`, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from stepstone.store.postgres import PostgresStore, redact

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A PostgreSQL server to create test databases on."""
    url = os.environ.get("STEPSTONE_TEST_PG") or DEFAULT_PG
    try:
        _admin(url).close()
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PostgreSQL is required under CI=true but {redact(url)} is unreachable: {reason} "
                "(set STEPSTONE_TEST_PG to a server's URL)",
                pytrace=False,
            )
        pytest.skip(f"PostgreSQL at {redact(url)} is unreachable: {reason}")
    return url


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> Iterator[str]:
    """A database holding the migrated `stepstone` schema, cloned by every test's database."""
    name = f"stepstone_template_{secrets.token_hex(4)}"
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        store = PostgresStore(_with_database(pg_server_url, name), min_connections=1, max_connections=2)
        # On a thread of its own: the caller may hold an event loop (Playwright's sync API does).
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _open_and_close(store)).result()
        yield name
    finally:
        _drop_database(pg_server_url, name)


async def _open_and_close(store: PostgresStore) -> None:
    await store.open()
    await store.close()


@pytest.fixture
def pg_url(pg_server_url: str, pg_template: str) -> Iterator[str]:
    """The URL of a fresh database of this test's own, dropped afterwards."""
    name = f"stepstone_test_{secrets.token_hex(6)}"
    with _admin(pg_server_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(pg_template))
        )
    try:
        yield _with_database(pg_server_url, name)
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/stepstone.db"
    url: str = request.getfixturevalue("pg_url")
    return url

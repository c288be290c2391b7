"""Fixtures shared by the whole suite: real databases, one fresh database per test.

`store_url` runs a test once per store, `[sqlite]` and `[postgres]`. PostgreSQL comes
from `$STEPSTONE_TEST_PG` (default: postgres on 127.0.0.1:5432); each test gets a
database of its own, cloned from a session template that already holds the migrated
schema. Cloning costs about 100 ms (a tenth of a second per test, and half the
suite's tests are postgres cases), so a database a test leaves as the template made it,
apart from rows, is emptied and handed to the next test; one whose schema the test
changed is dropped. Without a server the postgres cases are skipped, except under
`CI=true`, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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


# Everything a test could change in a database's schema, as one text: tables, columns,
# indexes, constraints, sequences, functions and triggers in every non-system schema,
# and the migrations recorded.
_SCHEMA_FINGERPRINT = """
SELECT md5(concat_ws('|',
    (SELECT string_agg(format('%s.%s:%s:%s:%s', n.nspname, c.relname, c.relkind, a.attname,
                              format_type(a.atttypid, a.atttypmod)), ',' ORDER BY 1)
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'),
    (SELECT string_agg(indexdef, ',' ORDER BY indexdef) FROM pg_indexes
      WHERE schemaname NOT IN ('pg_catalog', 'information_schema')),
    (SELECT string_agg(pg_get_constraintdef(oid), ',' ORDER BY 1) FROM pg_constraint
      WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)),
    (SELECT string_agg(p.proname || pg_get_function_identity_arguments(p.oid), ',' ORDER BY 1)
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
    (SELECT string_agg(tgname, ',' ORDER BY 1) FROM pg_trigger WHERE NOT tgisinternal),
    (SELECT string_agg(version::text, ',' ORDER BY version) FROM stepstone.schema_version)))
"""


@dataclass
class _Databases:
    """Test databases cloned from the template, and those emptied for the next test."""

    server_url: str
    template: str
    fingerprint: str
    emptying: list[sql.Composed]
    free: list[str] = field(default_factory=list)
    made: set[str] = field(default_factory=set)

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"stepstone_test_{secrets.token_hex(6)}"
        with _admin(self.server_url) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(self.template))
            )
        self.made.add(name)
        return name

    def give_back(self, name: str) -> None:
        """Empty `name` for the next test if its schema is the template's; else drop it."""
        try:
            with _admin(self.server_url) as conn:
                # What the test left connected (a killed worker's session, say) goes first.
                conn.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            with psycopg.connect(_with_database(self.server_url, name), connect_timeout=5) as conn:
                conn.execute("SET lock_timeout = '5s'")
                row = conn.execute(_SCHEMA_FINGERPRINT).fetchone()
                if row is None or row[0] != self.fingerprint:
                    raise LookupError("the test changed the schema")
                for statement in self.emptying:  # one transaction, committed on leaving
                    conn.execute(statement)
        except (psycopg.Error, LookupError):
            self.made.discard(name)
            _drop_database(self.server_url, name)
            return
        self.free.append(name)

    def drop_all(self) -> None:
        for name in self.made:
            _drop_database(self.server_url, name)


def _emptying(conn: psycopg.Connection[tuple[object, ...]]) -> list[sql.Composed]:
    """The statements that delete every row but the migrations recorded and restart every
    sequence, for the template's tables (a test's database has them, or is dropped)."""
    tables = conn.execute(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "AND (schemaname, tablename) <> ('stepstone', 'schema_version')"
    ).fetchall()
    sequences = conn.execute(
        "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    return [sql.SQL("DELETE FROM {}").format(sql.SQL(str(table))) for (table,) in tables] + [
        sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.SQL(str(sequence))) for (sequence,) in sequences
    ]


@pytest.fixture(scope="session")
def pg_databases(pg_server_url: str, pg_template: str) -> Iterator[_Databases]:
    with psycopg.connect(_with_database(pg_server_url, pg_template)) as conn:
        row = conn.execute(_SCHEMA_FINGERPRINT).fetchone()
        emptying = _emptying(conn)
    assert row is not None
    databases = _Databases(pg_server_url, pg_template, str(row[0]), emptying)
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture
def pg_url(pg_databases: _Databases) -> Iterator[str]:
    """The URL of a database of this test's own, as the template made it (no rows)."""
    name = pg_databases.take()
    try:
        yield _with_database(pg_databases.server_url, name)
    finally:
        pg_databases.give_back(name)


@pytest.fixture
def bare_pg_url(pg_server_url: str) -> Iterator[str]:
    """The URL of a new database of this test's own without stepstone's schema (as a user's
    database is before any Engine ran on it); dropped afterwards."""
    name = f"stepstone_test_bare_{os.getpid()}"
    _drop_database(pg_server_url, name)
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
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


@pytest.fixture
def loop_sleeps() -> Callable[[float], Awaitable[int]]:
    """`await loop_sleeps(seconds)`: wait that long, and count the times the event loop went to
    sleep meanwhile (its waits for I/O or a timer, not its looks at what is ready). Once is
    the wait itself; each more is a wakeup of something else."""

    async def count(seconds: float) -> int:
        selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        select, sleeps = selector.select, 0

        def counted(timeout: float | None = None) -> Any:
            nonlocal sleeps
            sleeps += timeout is None or timeout > 0
            return select(timeout)

        selector.select = counted
        try:
            await asyncio.sleep(seconds)
        finally:
            del selector.select
        return sleeps

    return count

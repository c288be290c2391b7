"""Bulk-load a store with copies of real instances, in SQL, through the store's own schema.

The scale scenario needs a million instances; running a million workflows would take
longer than the whole benchmark. So each system first runs a few real instances (a
finished 10-step one, a waiting one) and this module copies their rows, and those of
their steps, with new ids, keys and creation times, one INSERT ... SELECT per table.
Columns are read from the database, so a column added by a migration is copied too.

While loading, SQLite runs without a journal, and PostgreSQL without synchronous
commit nor foreign-key triggers (copies of consistent rows are consistent), one
connection per table at once: a loader's settings, not the ones measured. SQLite
goes back to WAL afterwards, and PostgreSQL is VACUUM ANALYZEd as autovacuum would
do after such a load.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import log, sqlite_path, store_of

_DBOS_TIMES = ("created_at", "updated_at", "completed_at", "started_at_epoch_ms")
"""The columns of DBOS's workflow_status that move with a copy (milliseconds)."""
_STEP_SLOTS = 16
"""Step keys reserved per copied instance (a template may have at most this many steps)."""


class _Db:
    """A loader's connection to either store, with the few dialect differences spelled out."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.sqlite = store_of(url) == "sqlite"
        self.schema = schema
        if self.sqlite:
            import sqlite3

            self.conn: Any = sqlite3.connect(sqlite_path(url), isolation_level=None)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000", "temp_store=MEMORY"):
                self.conn.execute(f"PRAGMA {pragma}")
        else:
            self.conn = self._connect_pg()

    def table(self, name: str) -> str:
        return name if self.schema is None or self.sqlite else f'"{self.schema}"."{name}"'

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql).fetchall())

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def columns(self, table: str) -> list[str]:
        if self.sqlite:
            return [row[1] for row in self.rows(f"PRAGMA table_info({table})")]
        return [
            row[0]
            for row in self.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                f"'{self.schema}' AND table_name = '{table}' ORDER BY ordinal_position"
            )
        ]

    def tables(self) -> list[str]:
        if self.sqlite:
            return [row[0] for row in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [
            row[0]
            for row in self.rows(
                f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{self.schema}'"
            )
        ]

    def series(self, total: int) -> tuple[str, str]:
        """(prefix of the statement, FROM item) giving rows s(n) for n = 1..total."""
        if self.sqlite:
            return f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {total}) ", "s"
        return "", f"generate_series(1, {total}) AS s(n)"

    def size(self) -> int:
        """Bytes the database takes on disk: all pages in use (SQLite), all relations of the schema (PostgreSQL)."""
        if self.sqlite:
            (page_size,), (pages,), (free,) = (
                self.rows(f"PRAGMA {p}")[0] for p in ("page_size", "page_count", "freelist_count")
            )
            return int(page_size * (pages - free))
        (size,) = self.rows(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = '{self.schema}' AND c.relkind IN ('r', 'm')"
        )[0]
        return int(size)

    def finish(self, sequences: Sequence[tuple[str, str]]) -> None:
        """Back to the settings the store runs with; sequences past the copied keys."""
        if self.sqlite:
            self.execute("PRAGMA journal_mode=WAL")
        else:
            for table, column in sequences:
                self.execute(
                    f"SELECT setval(pg_get_serial_sequence('{self.table(table)}', '{column}'), "
                    f"(SELECT max({column}) FROM {self.table(table)}))"
                )
            began = time.perf_counter()
            self.execute("VACUUM ANALYZE")
            if os.environ.get("BENCH_DEBUG"):
                log(f"    vacuum analyze: {time.perf_counter() - began:.1f} s")
        self.conn.close()

    def _connect_pg(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("SET synchronous_commit = off")
        # Copies of rows that satisfy the foreign keys satisfy them too: skip the checks.
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '256MB'")
        return conn

    def run_all(self, statements: list[str]) -> None:
        """Run the statements: one after the other on SQLite (one writer), at once on PostgreSQL."""
        if self.sqlite:
            for statement in statements:
                self._timed(self.conn, statement)
            return

        def run(statement: str) -> None:
            with self._connect_pg() as conn:
                self._timed(conn, statement)

        with concurrent.futures.ThreadPoolExecutor(len(statements)) as pool:
            for done in [pool.submit(run, statement) for statement in statements]:
                done.result()

    @staticmethod
    def _timed(conn: Any, statement: str) -> None:
        began = time.perf_counter()
        conn.execute(statement)
        if os.environ.get("BENCH_DEBUG"):
            log(f"    {statement.split(' INTO ', 1)[1].split(' ', 1)[0]}: {time.perf_counter() - began:.1f} s")

    def copy(
        self,
        table: str,
        total: int,
        where: str,
        condition: str,
        overrides: dict[str, str],
        shifted: Callable[[str], str | None] = lambda column: None,
    ) -> str:
        """SQL that copies the rows of `table` matching `where` once per n in 1..total for which `condition` holds.

        `overrides` gives the SQL of some columns (rows are `t`, the counter `s.n`);
        `shifted(column)`, if not None, is added to that column.
        """
        columns = self.columns(table)
        values = []
        for column in columns:
            if column in overrides:
                values.append(overrides[column])
            elif (shift := shifted(column)) is not None:
                values.append(f't."{column}" + ({shift})')
            else:
                values.append(f't."{column}"')
        prefix, series = self.series(total)
        names = ", ".join(f'"{c}"' for c in columns)
        return (
            f"{prefix}INSERT INTO {self.table(table)} ({names}) SELECT {', '.join(values)} "
            f"FROM {series}, {self.table(table)} t WHERE ({where}) AND ({condition})"
        )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _which(kind: str, every: int) -> str:
    """The copies n that are of `kind`: every `every`-th is a waiting one, the rest finished."""
    return f"s.n % {every} = 0" if kind == "waiting" else f"s.n % {every} <> 0"


def stepstone_expand(url: str, template_ids: dict[str, str], total: int, waiting_every: int) -> float:
    """Copy the `finished` and `waiting` template instances to `total` instances; bytes per finished one."""
    db = _Db(url, schema="stepstone")
    try:
        (max_pk,), (max_seq,) = (
            db.rows(f"SELECT max(pk) FROM {db.table('instances')}")[0],
            db.rows(f"SELECT coalesce(max(seq), 0) FROM {db.table('steps')}")[0],
        )
        start = time.time() - 7200 - total * 0.001  # creation times: 1 ms apart, all in the past
        before = db.size()
        for kind in ("finished", "waiting"):
            if kind == "waiting":
                after_finished = db.size()
            (pk, created_at), *_ = db.rows(
                f"SELECT pk, created_at FROM {db.table('instances')} WHERE id = {_literal(template_ids[kind])}"
            )
            seqs = [
                row[0] for row in db.rows(f"SELECT seq FROM {db.table('steps')} WHERE instance_pk = {pk} ORDER BY seq")
            ]
            if len(seqs) > _STEP_SLOTS:
                raise RuntimeError(f"template {kind} has {len(seqs)} steps; at most {_STEP_SLOTS} can be copied")
            shift = f"{start - created_at!r} + s.n * 0.001"
            which = _which(kind, waiting_every)

            def shifted(column: str, shift: str = shift) -> str | None:
                # Creation, start and end times move with the copy; due times stay in the future.
                return shift if column.endswith("_at") and column not in ("wake_at", "due_at") else None

            ordinal = " ".join(f"WHEN {seq} THEN {i}" for i, seq in enumerate(seqs))
            statements = [
                db.copy("instances", total, f"t.pk = {pk}", which,
                        {"pk": f"{max_pk} + s.n", "id": "t.id || '-' || s.n"}, shifted),
            ]  # fmt: skip
            if seqs:
                new_seq = f"{max_seq} + s.n * {_STEP_SLOTS} + CASE t.seq {ordinal} END"
                new_step_seq = f"{max_seq} + s.n * {_STEP_SLOTS} + CASE t.step_seq {ordinal} END"
                statements += [
                    db.copy("steps", total, f"t.instance_pk = {pk}", which,
                            {"seq": new_seq, "instance_pk": f"{max_pk} + s.n"}, shifted),
                    db.copy("attempts", total, f"t.step_seq IN ({', '.join(map(str, seqs))})", which,
                            {"step_seq": new_step_seq}, shifted),
                ]  # fmt: skip
            db.run_all(statements)
        finished = total - total // waiting_every
        db.finish([("instances", "pk"), ("steps", "seq")])
        return (after_finished - before) / finished
    except BaseException:
        db.conn.close()
        raise


def dbos_expand(url: str, template_ids: dict[str, str], total: int, waiting_every: int) -> float:
    """The same for DBOS's system database: every table keyed by workflow_uuid; bytes per finished one."""
    db = _Db(url, schema="dbos")
    try:
        status = db.table("workflow_status")
        tables = [t for t in db.tables() if t != "workflow_status" and "workflow_uuid" in db.columns(t)]
        start_ms = int((time.time() - 7200) * 1000) - total
        before = db.size()
        for kind in ("finished", "waiting"):
            if kind == "waiting":
                after_finished = db.size()
            uuid = _literal(template_ids[kind])
            ((created_ms,),) = db.rows(f"SELECT created_at FROM {status} WHERE workflow_uuid = {uuid}")
            shift = f"{start_ms - int(created_ms)} + s.n"
            which = _which(kind, waiting_every)
            new_id = {"workflow_uuid": "t.workflow_uuid || '-' || s.n"}
            statements = [
                db.copy("workflow_status", total, f"t.workflow_uuid = {uuid}", which, new_id,
                        lambda column, shift=shift: shift if column in _DBOS_TIMES else None),
            ]  # fmt: skip
            statements += [db.copy(table, total, f"t.workflow_uuid = {uuid}", which, new_id) for table in tables]
            db.run_all(statements)
        finished = total - total // waiting_every
        db.finish([])
        return (after_finished - before) / finished
    except BaseException:
        db.conn.close()
        raise

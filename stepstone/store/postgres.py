"""The PostgreSQL store: any number of worker and client processes, on any number of machines.

Everything lives in one schema (default `stepstone`). Each store object keeps a
connection pool for reads, a writer task that group-commits every write, and, once a
worker subscribes, a LISTEN connection (both in postgres_connections.py). The SQL is
in postgres_queries.py.

Many claimers never share or wait for a row: claims lock their candidates FOR UPDATE
SKIP LOCKED. A run's write locks its instance row and checks the lease token first
(fencing). Whatever makes work runnable sends a NOTIFY on the schema's wakeup
channel, which PostgreSQL delivers at commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from stepstone import lifecycle
from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    InvalidStateError,
    LeaseLostError,
    StepstoneError,
    StoreClosedError,
)
from stepstone.store import migrations
from stepstone.store import postgres_queries as queries
from stepstone.store.base import (
    FIRST_TOKEN,
    Attempt,
    Claim,
    ClaimBatch,
    ControlOp,
    EventRecord,
    InstanceRecord,
    Lease,
    RunWrite,
    Status,
    StepKey,
    StepRecord,
    StepWrite,
    attempt_log,
)
from stepstone.store.postgres_connections import Connection, GroupCommit, Later, Listener, Tx, one_line

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_URL_PREFIXES = ("postgresql://", "postgres://")
_CONNECT_TIMEOUT = 10
"""Seconds to wait for a connection, unless the URL sets `connect_timeout`."""
_WRITE_REFUSED = "SSW01"
"""SQLSTATE of write_refused() (migration 0002): a run's write found its lease lost."""
_ENDS_THAT_WAKE = ("queued", "waiting")
"""How a run ends that makes its instance runnable for any worker (so it sends NOTIFY)."""
_MIGRATION_LOCK = 0x57E9
"""First key of the advisory lock that serializes migrations (second: the schema's hash)."""

# -- records ------------------------------------------------------------------------------


def _instance(row: TupleRow) -> InstanceRecord:
    return InstanceRecord(*row)


def _step(row: Sequence[Any], logged: tuple[Attempt, ...] | None = None) -> StepRecord:
    """A step from its row; with `logged` (its attempt rows, for `history`) its whole attempt log."""
    (seq, kind, name, count, status, result, error_type, error_message, attempts, due_at, started_at, ended_at,
     branch) = row
    return StepRecord(
        StepKey(kind, name, count), status, result, error_type, error_message, attempts, due_at, started_at,
        ended_at, seq, attempt_log(kind, status, attempts, started_at, ended_at, logged), branch,
    )  # fmt: skip


def _fence(run: RunWrite) -> dict[str, Any]:
    return {"pk": run.pk, "token": run.token, "now": run.now}


def _step_params(run: RunWrite, step: StepWrite) -> dict[str, Any]:
    params = {
        **_fence(run),
        "kind": step.key.kind, "name": step.key.name, "count": step.key.count, "status": step.status,
        "result": step.result_json, "error_type": step.error_type, "error_message": step.error_message,
        "attempts": step.attempts, "due_at": step.due_at, "started_at": step.started_at, "ended_at": step.ended_at,
        "branch": step.branch,
    }  # fmt: skip
    if step.new_attempts:
        # The attempts travel as one JSON array: cheaper to send than six parallel arrays,
        # and floats survive the trip exactly (Python writes the shortest exact repr).
        params["attempts_log"] = json.dumps([
            {"attempt": a.attempt, "started_at": a.started_at, "ended_at": a.ended_at, "outcome": a.outcome,
             "error_type": a.error_type, "error_message": a.error_message}
            for a in step.new_attempts
        ])  # fmt: skip
    if step.consume_event is not None:
        params["consume_event"] = step.consume_event
    return params


def _record_step(step: StepWrite, *, touch: bool) -> str:
    return queries.record_step(touch=touch, log=bool(step.new_attempts), take=step.consume_event is not None)


def _one_instance(workflow: str, item: tuple[str, str], now: float, lease: Lease | None) -> dict[str, Any]:
    """CREATE_INSTANCE's parameters: the row CREATE_INSTANCES makes, leased if `lease`."""
    instance_id, params_json = item
    return {
        "workflow": workflow, "id": instance_id, "params": params_json, "now": now,
        "status": "queued" if lease is None else "running", "started_at": None if lease is None else now,
        "worker": None if lease is None else lease.worker_id, "lease_until": None if lease is None else lease.until,
        "token": 0 if lease is None else FIRST_TOKEN,
    }  # fmt: skip


def _not_found(workflow: str, instance_id: str) -> InstanceNotFoundError:
    return InstanceNotFoundError(f"no instance {instance_id!r} in workflow {workflow!r}")


_CLAIM_HORIZON = 1.0
"""Seconds: a waiting instance due within this may be claimed now (workers claim a moment ahead)."""


def _claimable(status: Status, wake_at: float | None, lease_expires: float | None, now: float) -> bool:
    """Whether a worker may claim an instance in this state now (see queries.CLAIM)."""
    if status == "queued":
        return True
    if status == "waiting":
        return wake_at is not None and wake_at <= now + _CLAIM_HORIZON
    if status in ("running", "waitingForPause"):
        return lease_expires is not None and lease_expires < now
    return False


_Change = Callable[[Tx, int, Status, "Status | None"], Awaitable[T]]
"""A change to an instance whose row is locked: (tx, pk, status, paused_status) -> result."""


async def _wake_workers(tx: Tx) -> None:
    tx.wake_workers()


# -- URLs ---------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter), for messages;
    one that cannot be parsed (a malformed IPv6 host) is shown as its scheme, host unread."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition('://')[0]}://(malformed)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    query = parts.query
    if "password" in query:
        query = "&".join(f"{k}={v}" for k, v in parse_qsl(query, keep_blank_values=True) if k != "password")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _conninfo(url: str) -> str:
    """The libpq connection string for a store URL, with a connect timeout unless it sets one."""
    libpq_url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    if not libpq_url.startswith(_URL_PREFIXES):
        raise InvalidInputError(f"invalid PostgreSQL URL {redact(url)!r}: expected postgresql://user@host:port/db")
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError as exc:
        why = one_line(exc).replace(libpq_url, "the URL")  # (libpq quotes it whole, password and all)
        raise InvalidInputError(f"invalid PostgreSQL URL {redact(url)!r}: {why}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise InvalidInputError(f"invalid PostgreSQL URL {redact(url)!r}: port {port!r} is not a number 1-65535")
    if "connect_timeout" in params:
        timeout = str(params["connect_timeout"]).strip()
        if not (timeout.lstrip("-").isdigit()):
            raise InvalidInputError(
                f"invalid PostgreSQL URL {redact(url)!r}: connect_timeout {params['connect_timeout']!r} is not "
                "a whole number of seconds"
            )
        return libpq_url
    return make_conninfo(libpq_url, connect_timeout=_CONNECT_TIMEOUT)


# -- the store ----------------------------------------------------------------------------


class PostgresStore:
    """The `Store` on a PostgreSQL database, in its own schema.

    `schema` names the schema holding the tables (created if missing); several
    stepstone deployments can share one database under different schemas.
    `min_connections`/`max_connections` size the connection pool, whose connections
    serve reads and the writer; a worker's LISTEN connection comes on top.
    """

    wakeup_poll = 30.0

    def __init__(
        self, url: str, *, schema: str = "stepstone", min_connections: int = 2, max_connections: int = 10
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidInputError(
                f"invalid PostgreSQL schema name {schema!r}: expected 1 to 63 letters, digits or _, "
                "not starting with a digit"
            )
        if not 1 <= min_connections <= max_connections or max_connections < 2:
            raise InvalidInputError(
                f"invalid connection pool size {min_connections}..{max_connections}: expected "
                "1 <= min_connections <= max_connections, and max_connections >= 2 (one is the writer's)"
            )
        self.url = url
        self.schema = schema
        self._conninfo = _conninfo(url)
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._schema_sql = sql.Identifier(schema).as_string()
        # Channel names are identifiers: at most 63 bytes (a clash only costs a spurious wakeup).
        self._channel = f"{schema}_wakeup"[:63]
        self._queries: dict[str, str] = {}
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._writer: GroupCommit | None = None
        self._listener: Listener | None = None

    def _sql(self, template: str) -> str:
        query = self._queries.get(template)
        if query is None:
            query = self._queries[template] = template.replace("{s}", self._schema_sql)
        return query

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """One connection of its own (autocommit), for what comes before the pool."""
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StepstoneError(f"cannot connect to PostgreSQL at {redact(self.url)}: {one_line(exc)}") from exc

    async def exists(self) -> bool:
        """Whether the database holds this store (its schema's tables), without creating it."""
        async with await self._connect() as conn:
            cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self._schema_sql}.schema_version",))
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def open(self) -> None:
        where = redact(self.url)
        conn = await self._connect()
        try:
            async with conn:
                await self._migrate(conn)
        except psycopg.Error as exc:
            raise StepstoneError(
                f"cannot create or migrate the stepstone schema {self.schema!r} at {where}: {one_line(exc)}"
            ) from exc
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._min_connections,
            max_size=self._max_connections,
            # Every statement is prepared at its first run on a connection, not its 5th. When a
            # statement fails in a pipeline the server skips the rest, PREPAREs too, and psycopg
            # (3.3) would still hold as prepared one it had counted before and first prepared
            # there: each later use of it on that connection then fails ("prepared statement
            # _pg3_n does not exist"). A statement prepared at its first run is checked instead.
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=False,
            name="stepstone",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT * 2)
        except PoolTimeout as exc:
            await pool.close()
            raise StepstoneError(f"cannot connect to PostgreSQL at {where}: {one_line(exc)}") from exc
        self._pool = pool
        self._writer = GroupCommit(pool, self._channel)

    async def _migrate(self, conn: Connection) -> None:
        async with conn.transaction():
            # Several processes may start at once: one migrates, the others then find it done.
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MIGRATION_LOCK, self.schema))
            cursor = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), to_regclass(%s) IS NOT NULL",
                (self.schema, f"{self._schema_sql}.schema_version"),
            )
            schema_exists, versioned = await cursor.fetchone() or (False, False)
            if not schema_exists:
                await conn.execute(self._sql("CREATE SCHEMA {s}"))
            # Migration files name their tables unqualified.
            await conn.execute(self._sql("SET LOCAL search_path TO {s}"))
            if not versioned:
                await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            cursor = await conn.execute("SELECT max(version) FROM schema_version")
            row = await cursor.fetchone()
            for migration in migrations.pending("postgres", (row[0] if row else None) or 0):
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (migration.version,))

    async def close(self) -> None:
        writer, listener, pool = self._writer, self._listener, self._pool
        self._writer = self._listener = self._pool = None
        if writer is not None:
            await writer.stop()
        if listener is not None:
            await listener.stop()
        if pool is not None:
            await pool.close()

    def _write(
        self,
        run: Callable[[Tx], Awaitable[T | Later[T]]],
        *,
        durable: bool = True,
        single: bool = False,
        rerunnable: bool = True,
        lock: tuple[str, str] | None = None,
        lone: bool = False,
    ) -> asyncio.Future[T]:
        if self._writer is None:
            raise StoreClosedError
        return self._writer.submit(run, durable=durable, single=single, rerunnable=rerunnable, lock=lock, lone=lone)

    async def _fetch(self, template: str, params: Sequence[Any] | Mapping[str, Any]) -> list[TupleRow]:
        """Rows of one read; once more on another connection if the first one was broken."""
        if self._pool is None:
            raise StoreClosedError
        query = self._sql(template)
        for attempt in (1, 2):
            async with self._pool.connection() as conn:
                try:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall()
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            await self._pool.check()
        raise AssertionError("unreachable")

    # -- workflows ------------------------------------------------------------------------

    async def register_workflows(self, names: Sequence[str], now: float) -> None:
        unique = list(dict.fromkeys(names))  # one row may not be upserted twice in a statement

        async def register(tx: Tx) -> None:
            await tx.conn.execute(self._sql(queries.REGISTER_WORKFLOWS), {"names": unique, "now": now})

        await self._write(register)

    async def workflow_names(self) -> list[str]:
        return [row[0] for row in await self._fetch(queries.WORKFLOW_NAMES, ())]

    async def status_counts(self, workflow: str, *, now: float | None = None) -> dict[str, int]:
        return {status: count for status, count in await self._fetch(queries.STATUS_COUNTS, (now, workflow))}

    # -- instances, for clients -----------------------------------------------------------

    async def create_instances(
        self, workflow: str, items: Sequence[tuple[str, str]], now: float, lease: Lease | None = None
    ) -> list[InstanceRecord]:
        ids = [instance_id for instance_id, _ in items]
        leased = 0 if lease is None else lease.limit
        seen: set[str] = set()
        for instance_id in ids:
            if instance_id in seen:
                raise InstanceExistsError(f"instance {instance_id!r} already exists in workflow {workflow!r}")
            seen.add(instance_id)

        if len(ids) == 1:  # the common case, in a plainer statement
            query, args = queries.CREATE_INSTANCE, _one_instance(workflow, items[0], now, lease if leased else None)
        else:
            query = queries.CREATE_INSTANCES
            args = {
                "workflow": workflow, "ids": ids, "params": [params_json for _, params_json in items], "now": now,
                "leased": leased, "worker": lease and lease.worker_id, "lease_until": lease and lease.until,
                "token": FIRST_TOKEN,
            }  # fmt: skip

        # One statement, all or nothing: an id that exists fails it on the unique key. So
        # instances created leased (nothing to NOTIFY) cost one round trip, committed alone.
        async def create(tx: Tx) -> Later[list[InstanceRecord]]:
            cursor = await tx.conn.execute(self._sql(query), args)
            if len(ids) > leased:  # some are queued
                tx.wake_workers()

            async def created() -> list[InstanceRecord]:
                return sorted((_instance(row) for row in await cursor.fetchall()), key=lambda record: record.pk)

            return Later(created)

        try:
            # Not run again if the connection breaks: a create that did commit would then fail.
            return await self._write(create, single=len(ids) <= leased, rerunnable=False)
        except psycopg.errors.UniqueViolation:
            existing = {row[0] for row in await self._fetch(queries.EXISTING_IDS, (workflow, ids))}
            taken = next((instance_id for instance_id in ids if instance_id in existing), None)
            if taken is None:  # deleted meanwhile: say so rather than retry behind the caller's back
                raise InstanceExistsError(
                    f"an instance of {ids!r} existed in workflow {workflow!r} when they were created"
                ) from None
            raise InstanceExistsError(f"instance {taken!r} already exists in workflow {workflow!r}") from None

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord:
        rows = await self._fetch(queries.FIND_INSTANCE, (workflow, instance_id))
        if not rows:
            raise _not_found(workflow, instance_id)
        return _instance(rows[0])

    async def list_instances(
        self, workflow: str, *, status: str | None, limit: int, before_pk: int | None, now: float | None = None
    ) -> list[InstanceRecord]:
        query = f"SELECT {queries.INSTANCE_COLUMNS} FROM {{s}}.instances WHERE workflow = %s"
        args: list[object] = [workflow]
        if status is not None:
            query += " AND status = %s"
            args.append("running" if status == "unknown" and now is not None else status)
            if now is not None and status in ("running", "unknown"):
                unknown = status == "unknown"
                query += " AND lease_expires < %s" if unknown else " AND (lease_expires IS NULL OR lease_expires >= %s)"
                args.append(now)
        if before_pk is not None:
            query += " AND pk < %s"
            args.append(before_pk)
        query += " ORDER BY pk DESC LIMIT %s"
        args.append(limit)
        return [_instance(row) for row in await self._fetch(query, args)]

    async def history(self, pk: int) -> list[StepRecord]:
        steps = []
        for _, rows in itertools.groupby(await self._fetch(queries.HISTORY, (pk,)), key=lambda row: row[0]):
            group = list(rows)
            log = tuple(Attempt(*row[13:]) for row in group if row[13] is not None)
            steps.append(_step(group[0][:13], log))
        return steps

    async def events(self, pk: int) -> list[EventRecord]:
        return [
            EventRecord(seq, type_, payload, sent_at, StepKey(kind, name, count) if kind else None)
            for seq, type_, payload, sent_at, kind, name, count in await self._fetch(queries.EVENTS, (pk,))
        ]

    async def send_event(self, workflow: str, instance_id: str, type: str, payload_json: str, now: float) -> int:
        async def send(tx: Tx, pk: int, status: Status, paused_status: Status | None) -> int:
            if not lifecycle.can_receive_events(status):
                raise InvalidStateError(
                    f"cannot send an event to instance {instance_id!r}: it is {status}; events are "
                    "accepted until an instance completes, errors or is terminated"
                )
            cursor = await tx.conn.execute(
                self._sql(queries.KEEP_EVENT), {"pk": pk, "type": type, "payload": payload_json, "now": now}
            )
            seq, woken = await cursor.fetchone() or (None, None)
            if woken == "waiting":
                tx.wake_workers()
            return int(seq)

        # Locked before the event is kept: a run ending with `waiting` checks for pending
        # events under the same lock, so one of the two sees the other.
        return await self._locking(workflow, instance_id, now, send)

    async def control(
        self, workflow: str, instance_id: str, op: ControlOp, now: float, *, from_step: StepKey | None = None
    ) -> InstanceRecord:
        async def apply(tx: Tx, pk: int, status: Status, paused_status: Status | None) -> InstanceRecord:
            conn = tx.conn
            change = lifecycle.plan(op, status, paused_status)
            if op == "restart":
                await self._discard_history(conn, pk, from_step)
                cursor = await conn.execute(self._sql(queries.RESTART), {"pk": pk, "now": now})
            elif change.revoke_lease:  # terminate
                cursor = await conn.execute(
                    self._sql(queries.TERMINATE), {"pk": pk, "status": change.status, "now": now}
                )
            else:  # pause, resume
                cursor = await conn.execute(
                    self._sql(queries.SET_STATUS),
                    {"pk": pk, "status": change.status, "paused_status": change.paused_status, "now": now},
                )
            record = await cursor.fetchone()
            assert record is not None
            if op != "pause":  # runnable again, or a lease released
                tx.wake_workers()
            return _instance(record)

        return await self._locking(workflow, instance_id, now, apply)

    async def _locking(self, workflow: str, instance_id: str, now: float, change: _Change[T]) -> T:
        """Lock the instance's row, then apply `change(tx, pk, status, paused_status)`.

        Claims skip a locked row (FOR UPDATE SKIP LOCKED) and a worker that found nothing
        to claim sleeps until it is told of work; so if the instance was claimable when
        locked (queued, due, or its lease lapsed), the workers are woken after, whether
        the change is kept or refused (then by a notification of its own).
        """
        claimable = False

        async def locked(tx: Tx) -> T:
            nonlocal claimable
            cursor = await tx.conn.execute(self._sql(queries.LOCK_INSTANCE), (workflow, instance_id))
            row = await cursor.fetchone()
            if row is None:
                raise _not_found(workflow, instance_id)
            pk, status, paused_status, wake_at, lease_expires = row
            claimable = _claimable(status, wake_at, lease_expires, now)
            if claimable:
                tx.wake_workers()
            return await change(tx, pk, status, paused_status)

        try:
            return await self._write(locked, lock=(workflow, instance_id))
        except Exception:
            if claimable:
                with contextlib.suppress(Exception):
                    await self._write(_wake_workers, durable=False)
            raise

    async def _discard_history(self, conn: Connection, pk: int, from_step: StepKey | None) -> None:
        """Delete an instance's steps (all, or from `from_step` on); events they took go too."""
        if from_step is None:
            await conn.execute(self._sql(queries.DISCARD_STEPS), {"pk": pk})
            return
        key = {"pk": pk, "kind": from_step.kind, "name": from_step.name, "count": from_step.count}
        cursor = await conn.execute(self._sql(queries.DISCARD_STEPS_FROM), key)
        if (await cursor.fetchone() or (0,))[0] == 0:
            raise InvalidInputError(
                f"cannot restart from step {from_step.name!r} (count {from_step.count}, type "
                f"{from_step.kind}): no such step in the instance's history"
            )

    async def delete(self, workflow: str, instance_id: str) -> None:
        async def delete(tx: Tx) -> None:
            cursor = await tx.conn.execute(self._sql(queries.DELETE_INSTANCE), (workflow, instance_id))
            if (await cursor.fetchone() or (0,))[0] == 0:
                raise _not_found(workflow, instance_id)

        await self._write(delete, lock=(workflow, instance_id))

    async def prune(self, workflows: Sequence[str], status: str, ended_before: float, limit: int) -> int:
        names = list(workflows)
        if not names or limit <= 0:
            return 0
        args = {"names": names, "status": status, "ended_before": ended_before, "limit": limit}

        async def prune(tx: Tx) -> int:
            cursor = await tx.conn.execute(self._sql(queries.PRUNE), args)
            return len(await cursor.fetchall())

        return await self._write(prune, lone=True)

    # -- workers --------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        workflows: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        *,
        due_by: float | None = None,
        expect_work: bool = False,
    ) -> ClaimBatch:
        names = list(workflows)
        if not names:
            return ClaimBatch([], None)
        horizon = now if due_by is None else max(now, due_by)
        args = {"names": names, "now": now, "due_by": horizon, "limit": limit, "worker": worker_id,
                "lease_until": lease_until}  # fmt: skip

        async def claim(tx: Tx) -> Later[ClaimBatch]:
            conn = tx.conn
            await conn.execute(self._sql(queries.PAUSE_ABANDONED), args)
            claimed = await conn.execute(self._sql(queries.CLAIM), args)
            recorded = await conn.execute(self._sql(queries.CLAIMED_STEPS), args)
            earliest = await conn.execute(self._sql(queries.EARLIEST), args)

            async def read() -> ClaimBatch:
                rows = sorted(await claimed.fetchall(), key=lambda row: (row[0], row[1], row[2]))
                steps: dict[int, list[StepRecord]] = {row[2]: [] for row in rows}
                for step_row in await recorded.fetchall():
                    if step_row[0] in steps:
                        steps[step_row[0]].append(_step(step_row[1:]))
                claims = [
                    Claim(pk, workflow, instance_id, params, created_at, token, resumed, tuple(steps[pk]))
                    for _, _, pk, workflow, instance_id, params, created_at, token, resumed in rows
                ]
                if len(claims) >= limit:
                    return ClaimBatch(claims, now)
                row = await earliest.fetchone()
                return ClaimBatch(claims, row[0] if row else None)

            return Later(read)

        # No read to look first: a claim that finds nothing locks and changes no row, so it
        # costs one round trip and a commit that writes nothing, as that read would. Not
        # durable: a claim lost in a crash leaves the instance claimable again, and the
        # run's first write flushes the WAL, the claim's record with it.
        return await self._write(claim, durable=False, lone=True)

    async def load_steps(self, pk: int) -> list[StepRecord]:
        return [_step(row) for row in await self._fetch(queries.LOAD_STEPS, (pk,))]

    async def next_event(self, pk: int, type: str) -> EventRecord | None:
        rows = await self._fetch(queries.NEXT_EVENT, (pk, type))
        return EventRecord(*rows[0]) if rows else None

    def leases_at_once(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]] | None:
        return None  # (a round trip: the reads of runs waiting meanwhile go in one, see replay.LeaseReads)

    async def leases(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]]:
        rows = await self._fetch(queries.LEASES, (list(pks),))
        return {pk: (token, status) for pk, token, status in rows}

    async def write(self, run: RunWrite) -> Status:
        # A step recorded by a run that goes on is one statement (record_step, touching), and
        # so is an end that records no step and wakes no other worker (END_FINISHED, END_RUN).
        single = len(run.steps) == 1 if run.end is None else not run.steps and run.end not in _ENDS_THAT_WAKE
        try:
            return await self._write(lambda tx: self._write_run(tx, run), single=single, lock=run.instance)
        except psycopg.Error as exc:
            if exc.sqlstate == _WRITE_REFUSED:
                raise LeaseLostError(f"write refused: {exc.diag.message_primary} (token {run.token})") from exc
            raise

    async def _write_run(self, tx: Tx, run: RunWrite) -> Later[Status]:
        # Every statement is fenced and fails the transaction if the lease is lost, so
        # nothing here waits for an answer: the write and its commit are one round trip.
        conn = tx.conn
        steps = run.steps
        if run.end is None:
            if steps:
                first = steps[0]
                answer = await conn.execute(self._sql(_record_step(first, touch=True)), _step_params(run, first))
                steps = steps[1:]
            else:
                answer = await conn.execute(self._sql(queries.TOUCH_LEASED), _fence(run))
            for step in steps:
                await conn.execute(self._sql(_record_step(step, touch=False)), _step_params(run, step))
        else:
            if steps:  # locked first, so that the fenced step records and the end agree
                await conn.execute(self._sql(queries.LOCK_LEASED), _fence(run))
            for step in steps:
                await conn.execute(self._sql(_record_step(step, touch=False)), _step_params(run, step))
            # (END_FINISHED uses only some of these parameters; psycopg ignores the rest.)
            answer = await conn.execute(
                self._sql(queries.END_FINISHED if run.end in ("complete", "errored") else queries.END_RUN),
                {
                    **_fence(run), "end": run.end, "wake_at": run.wake_at, "wait_types": run.wait_types,
                    "output": run.output_json, "error": run.error_json,
                },
            )  # fmt: skip
            if run.end in _ENDS_THAT_WAKE:
                # Runnable again, now or at its timer, for any worker. (A finished or paused
                # instance gives the others nothing to do: the freed slot is this worker's.)
                tx.wake_workers()

        async def status() -> Status:
            row = await answer.fetchone()
            assert row is not None
            return row[0]  # type: ignore[no-any-return]

        return Later(status)

    async def renew_leases(self, worker_id: str, tokens: dict[int, int], lease_until: float) -> set[int]:
        if not tokens:
            return set()
        args = {"pks": list(tokens), "tokens": list(tokens.values()), "worker": worker_id, "lease_until": lease_until}

        async def renew(tx: Tx) -> set[int]:
            cursor = await tx.conn.execute(self._sql(queries.RENEW_LEASES), args)
            return set(tokens) - {row[0] for row in await cursor.fetchall()}

        return await self._write(renew, lone=True)

    async def worker_seen(self, worker_id: str, host: str, pid: int, now: float) -> None:
        async def seen(tx: Tx) -> None:
            await tx.conn.execute(
                self._sql(queries.WORKER_SEEN), {"id": worker_id, "host": host, "pid": pid, "now": now}
            )

        await self._write(seen)

    async def workers_on_host(self, host: str) -> list[tuple[str, int]]:
        rows = await self._fetch(queries.WORKERS_ON_HOST, (host,))
        return [(worker_id, pid) for worker_id, pid in rows]

    async def expire_workers(self, worker_ids: Sequence[str], now: float) -> int:
        ids = list(worker_ids)
        if not ids:
            return 0

        async def expire(tx: Tx) -> int:
            cursor = await tx.conn.execute(self._sql(queries.EXPIRE_WORKERS), {"ids": ids, "expired": now - 1})
            row = await cursor.fetchone()
            freed = int(row[0]) if row else 0
            if freed:
                tx.wake_workers()
            return freed

        return await self._write(expire, lone=True)

    async def forget_worker(self, worker_id: str) -> None:
        async def forget(tx: Tx) -> None:
            await tx.conn.execute(self._sql(queries.FORGET_WORKER), (worker_id,))

        await self._write(forget)

    async def subscribe_wakeups(self, callback: Callable[[], None]) -> None:
        """LISTEN on the schema's wakeup channel; `callback` runs in this event loop for each wakeup."""
        if self._pool is None:
            raise StoreClosedError
        if self._listener is None:
            listener = Listener(self._conninfo, self._channel)
            try:
                await listener.start()
            except psycopg.OperationalError as exc:
                raise StepstoneError(f"cannot LISTEN on PostgreSQL at {redact(self.url)}: {one_line(exc)}") from exc
            self._listener = listener
        self._listener.callbacks.append(callback)

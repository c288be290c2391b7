"""The PostgreSQL store: any number of worker and client processes, on any number of machines.

Everything lives in one schema (default `stepstone`). Each store object keeps a
connection pool for reads, one writer task and, once a worker subscribes, a LISTEN
connection.

Group commit: every write is a job queued to the writer task, which runs whatever has
queued up meanwhile in one transaction on one connection, each job in its own
savepoint so that one job's error undoes only that job, and answers the callers only
once COMMIT has returned.

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
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
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
)
from stepstone.store import migrations
from stepstone.store.base import (
    Attempt,
    Claim,
    ClaimBatch,
    ControlOp,
    EventRecord,
    InstanceRecord,
    RunWrite,
    Status,
    StepKey,
    StepRecord,
    StepWrite,
)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

_log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_URL_PREFIXES = ("postgresql://", "postgres://")
_CONNECT_TIMEOUT = 10
"""Seconds to wait for a connection, unless the URL sets `connect_timeout`."""
_MIGRATION_LOCK = 0x57E9
"""First key of the advisory lock that serializes migrations (second: the schema's hash)."""
_MAX_BATCH = 64
"""Jobs per group commit. Each job is a subtransaction (savepoint); past 64 in one
transaction PostgreSQL's per-backend subtransaction cache overflows, which slows
every session's snapshots."""
_MAX_TRIES = 5
"""Attempts of a job that keeps losing deadlocks before its error reaches the caller."""
_LISTEN_CHECK = 30.0
"""Seconds between liveness checks of the LISTEN connection (a silent drop raises nothing)."""

# -- SQL. `{s}` stands for the quoted schema. -------------------------------------------

_INSTANCE_COLUMNS = (
    "pk, workflow, id, status, params, output, error, created_at, updated_at, wake_at, paused_status, "
    "started_at, ended_at"
)
_STEP_COLUMNS = (
    "s.seq, s.kind, s.name, s.count, s.status, s.result, s.error_type, s.error_message, s.attempts, s.due_at, "
    "s.started_at, s.ended_at"
)

_REGISTER_WORKFLOWS = """
INSERT INTO {s}.workflows (name, registered_at, seen_at)
SELECT name, %(now)s, %(now)s FROM unnest(%(names)s::text[]) AS name
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at
"""

_CREATE_INSTANCES = f"""
INSERT INTO {{s}}.instances (workflow, id, status, params, created_at, updated_at)
SELECT %(workflow)s, item.id, 'queued', item.params, %(now)s, %(now)s
FROM unnest(%(ids)s::text[], %(params)s::text[]) WITH ORDINALITY AS item (id, params, position)
ORDER BY item.position
ON CONFLICT (workflow, id) DO NOTHING
RETURNING {_INSTANCE_COLUMNS}
"""

_FIND_INSTANCE = f"SELECT {_INSTANCE_COLUMNS} FROM {{s}}.instances WHERE workflow = %s AND id = %s"

_LOCK_INSTANCE = "SELECT pk, status, paused_status FROM {s}.instances WHERE workflow = %s AND id = %s FOR UPDATE"

_KEEP_EVENT = """
WITH kept AS (
    INSERT INTO {s}.events (instance_pk, type, payload, sent_at)
    VALUES (%(pk)s, %(type)s, %(payload)s, %(now)s) RETURNING seq
), woken AS (
    -- Wake a waiting instance so that its run looks for the event (a paused one: on resume).
    UPDATE {s}.instances SET wake_at = %(now)s
    WHERE pk = %(pk)s AND (status = 'waiting' OR (status = 'paused' AND paused_status = 'waiting'))
    RETURNING status
)
SELECT (SELECT seq FROM kept), (SELECT status FROM woken)
"""

# Restart from a step: delete it and the steps recorded after it; events they took go
# too (ON DELETE CASCADE). The step itself is deleted, so no row deleted means no such step.
_DISCARD_STEPS_FROM = """
DELETE FROM {s}.steps WHERE instance_pk = %(pk)s AND seq >= (
    SELECT seq FROM {s}.steps WHERE instance_pk = %(pk)s AND kind = %(kind)s AND name = %(name)s AND count = %(count)s
)
"""
_DISCARD_STEPS = "DELETE FROM {s}.steps WHERE instance_pk = %(pk)s"

_RESTART = f"""
UPDATE {{s}}.instances SET status = 'queued', output = NULL, error = NULL, wake_at = NULL, paused_status = NULL,
    ended_at = NULL, lease_owner = NULL, lease_expires = NULL, lease_token = lease_token + 1, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {_INSTANCE_COLUMNS}
"""

_TERMINATE = f"""
UPDATE {{s}}.instances SET status = %(status)s, wake_at = NULL, paused_status = NULL, ended_at = %(now)s,
    lease_owner = NULL, lease_expires = NULL, lease_token = lease_token + 1, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {_INSTANCE_COLUMNS}
"""

_SET_STATUS = f"""
UPDATE {{s}}.instances SET status = %(status)s, paused_status = %(paused_status)s, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {_INSTANCE_COLUMNS}
"""

_DELETE_INSTANCE = "DELETE FROM {s}.instances WHERE workflow = %s AND id = %s"

# A pause asked while a step ran takes effect when that step ends; a dead worker's step has ended.
_PAUSE_ABANDONED = """
UPDATE {s}.instances SET status = 'paused', paused_status = 'queued', lease_owner = NULL, lease_expires = NULL,
    updated_at = %(now)s
WHERE pk IN (
    SELECT pk FROM {s}.instances
    WHERE status = 'waitingForPause' AND lease_expires < %(now)s AND workflow = ANY(%(names)s)
    FOR UPDATE SKIP LOCKED
)
"""

# Waking instances go first, then those whose worker died, then new ones. Each tier
# walks one index range per workflow, in order (a lateral subquery per workflow), and
# skips the rows another transaction holds, so that claimers never wait for each other.
# (With several workflows, a tier may lock a few rows it then leaves: they are free
# again at commit.)
_CLAIM = """
WITH workflows AS (
    SELECT name FROM unnest(%(names)s::text[]) AS name
), due AS (
    SELECT c.pk, true AS resumed, 1 AS tier, c.wake_at AS rank
    FROM workflows w, LATERAL (
        SELECT pk, wake_at FROM {s}.instances
        WHERE status = 'waiting' AND workflow = w.name AND wake_at <= %(now)s
        ORDER BY wake_at, pk LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.wake_at, c.pk LIMIT %(limit)s
), abandoned AS (
    SELECT c.pk, true AS resumed, 2 AS tier, c.lease_expires AS rank
    FROM workflows w, LATERAL (
        SELECT pk, lease_expires FROM {s}.instances
        WHERE status = 'running' AND workflow = w.name AND lease_expires < %(now)s
        ORDER BY lease_expires, pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due), 0)
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.lease_expires, c.pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due), 0)
), queued AS (
    SELECT c.pk, c.started_at IS NOT NULL AS resumed, 3 AS tier, c.pk::double precision AS rank
    FROM workflows w, LATERAL (
        SELECT pk, started_at FROM {s}.instances
        WHERE status = 'queued' AND workflow = w.name
        ORDER BY pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due) - (SELECT count(*) FROM abandoned), 0)
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due) - (SELECT count(*) FROM abandoned), 0)
), picked AS (
    SELECT * FROM due UNION ALL SELECT * FROM abandoned UNION ALL SELECT * FROM queued
)
UPDATE {s}.instances i SET status = 'running', lease_owner = %(worker)s, lease_expires = %(lease_until)s,
    lease_token = i.lease_token + 1, started_at = coalesce(i.started_at, %(now)s), updated_at = %(now)s
FROM picked WHERE i.pk = picked.pk
RETURNING picked.tier, picked.rank, i.pk, i.workflow, i.id, i.params, i.created_at, i.lease_token, picked.resumed
"""

# When something of the workflows is next claimable: 0 if one is queued (when asked),
# else the earliest timer or lease of another worker. Per workflow, so that each
# minimum is the first entry of one index range.
_EARLIEST = """
SELECT CASE WHEN %(queued)s AND EXISTS (
    SELECT 1 FROM {s}.instances WHERE status = 'queued' AND workflow = ANY(%(names)s::text[])
) THEN 0 ELSE (
    SELECT least(min(timer.at), min(lease.at)) FROM unnest(%(names)s::text[]) AS w (name),
    LATERAL (SELECT min(wake_at) AS at FROM {s}.instances WHERE status = 'waiting' AND workflow = w.name) timer,
    LATERAL (
        SELECT min(lease_expires) AS at FROM {s}.instances
        WHERE status IN ('running', 'waitingForPause') AND workflow = w.name AND lease_owner <> %(worker)s
    ) lease
) END
"""

# The fence of a write: lock the instance row if the token still holds the lease (a run
# that goes on also touches it, a run that ends updates it again later).
_LOCK_LEASED = "SELECT status FROM {s}.instances WHERE pk = %s AND lease_token = %s FOR UPDATE"
_TOUCH_LEASED = "UPDATE {s}.instances SET updated_at = %s WHERE pk = %s AND lease_token = %s RETURNING status"

# One statement per step: upsert it by key, append its attempts, take its event. It is
# fenced by the token itself, so it changes nothing when the lease is lost and can be
# sent before the answer of _LOCK_LEASED arrives.
_RECORD_STEP = """
WITH leased AS (
    SELECT pk FROM {s}.instances WHERE pk = %(pk)s AND lease_token = %(token)s
), step AS (
    INSERT INTO {s}.steps (instance_pk, kind, name, count, status, result, error_type, error_message, attempts,
        due_at, started_at, ended_at)
    SELECT pk, %(kind)s::text, %(name)s::text, %(count)s::integer, %(status)s::text, %(result)s::text,
        %(error_type)s::text, %(error_message)s::text, %(attempts)s::integer, %(due_at)s::double precision,
        %(started_at)s::double precision, %(ended_at)s::double precision
    FROM leased
    ON CONFLICT (instance_pk, kind, name, count) DO UPDATE SET status = excluded.status, result = excluded.result,
        error_type = excluded.error_type, error_message = excluded.error_message, attempts = excluded.attempts,
        due_at = excluded.due_at, ended_at = excluded.ended_at
    RETURNING seq
), logged AS (
    INSERT INTO {s}.attempts (step_seq, attempt, started_at, ended_at, outcome, error_type, error_message)
    SELECT step.seq, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message
    FROM step, json_to_recordset(%(attempts_log)s::json) AS a (attempt integer, started_at double precision,
        ended_at double precision, outcome text, error_type text, error_message text)
    ON CONFLICT (step_seq, attempt) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at,
        outcome = excluded.outcome, error_type = excluded.error_type, error_message = excluded.error_message
), taken AS (
    UPDATE {s}.events SET consumed_by = step.seq FROM step
    WHERE events.seq = %(consume_event)s::bigint AND events.consumed_by IS NULL
    RETURNING events.seq
)
SELECT count(*) FROM taken
"""

_HAS_PENDING_EVENT = """
SELECT EXISTS (
    SELECT 1 FROM {s}.events WHERE instance_pk = %s AND consumed_by IS NULL AND type = ANY(%s::text[])
)
"""

_END_RUN = """
UPDATE {s}.instances SET status = %(status)s, paused_status = %(paused_status)s, wake_at = %(wake_at)s,
    output = %(output)s, error = %(error)s, ended_at = %(ended_at)s, lease_owner = NULL, lease_expires = NULL,
    updated_at = %(now)s
WHERE pk = %(pk)s
"""

_RENEW_LEASES = """
UPDATE {s}.instances i SET lease_expires = %(lease_until)s
FROM unnest(%(pks)s::bigint[], %(tokens)s::bigint[]) AS held (pk, token)
WHERE i.pk = held.pk AND i.lease_token = held.token AND i.lease_owner = %(worker)s
RETURNING i.pk
"""

_WORKER_SEEN = """
INSERT INTO {s}.workers (id, host, pid, started_at, seen_at) VALUES (%(id)s, %(host)s, %(pid)s, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at
"""

_EXPIRE_WORKERS = """
WITH expired AS (
    UPDATE {s}.instances SET lease_expires = %(expired)s WHERE lease_owner = ANY(%(ids)s::text[]) RETURNING 1
), forgotten AS (
    DELETE FROM {s}.workers WHERE id = ANY(%(ids)s::text[])
)
SELECT count(*) FROM expired
"""

_HISTORY = f"""
SELECT {_STEP_COLUMNS}, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message
FROM {{s}}.steps s LEFT JOIN {{s}}.attempts a ON a.step_seq = s.seq
WHERE s.instance_pk = %s ORDER BY s.seq, a.attempt
"""

_LOAD_STEPS = f"SELECT {_STEP_COLUMNS} FROM {{s}}.steps s WHERE s.instance_pk = %s ORDER BY s.seq"

_EVENTS = """
SELECT e.seq, e.type, e.payload, e.sent_at, s.kind, s.name, s.count
FROM {s}.events e LEFT JOIN {s}.steps s ON s.seq = e.consumed_by
WHERE e.instance_pk = %s ORDER BY e.seq
"""

_NEXT_EVENT = """
SELECT seq, type, payload, sent_at FROM {s}.events
WHERE instance_pk = %s AND type = %s AND consumed_by IS NULL ORDER BY seq LIMIT 1
"""


# -- records ------------------------------------------------------------------------------


def _instance(row: TupleRow) -> InstanceRecord:
    return InstanceRecord(*row)


def _step(row: Sequence[Any], attempt_log: tuple[Attempt, ...] = ()) -> StepRecord:
    seq, kind, name, count, status, result, error_type, error_message, attempts, due_at, started_at, ended_at = row
    return StepRecord(
        StepKey(kind, name, count), status, result, error_type, error_message, attempts, due_at, started_at,
        ended_at, seq, attempt_log,
    )  # fmt: skip


def _step_params(run: RunWrite, step: StepWrite) -> dict[str, Any]:
    # The attempts travel as one JSON array: cheaper to send than six parallel arrays,
    # and floats survive the trip exactly (Python writes the shortest exact repr).
    return {
        "pk": run.pk, "token": run.token,
        "kind": step.key.kind, "name": step.key.name, "count": step.key.count, "status": step.status,
        "result": step.result_json, "error_type": step.error_type, "error_message": step.error_message,
        "attempts": step.attempts, "due_at": step.due_at, "started_at": step.started_at, "ended_at": step.ended_at,
        "attempts_log": json.dumps([
            {"attempt": a.attempt, "started_at": a.started_at, "ended_at": a.ended_at, "outcome": a.outcome,
             "error_type": a.error_type, "error_message": a.error_message}
            for a in step.new_attempts
        ]),
        "consume_event": step.consume_event,
    }  # fmt: skip


def _not_found(workflow: str, instance_id: str) -> InstanceNotFoundError:
    return InstanceNotFoundError(f"no instance {instance_id!r} in workflow {workflow!r}")


# -- URLs ---------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter), for messages."""
    parts = urlsplit(url)
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
        raise InvalidInputError(f"invalid PostgreSQL URL {redact(url)!r}: {exc}") from None
    if "connect_timeout" in params:
        return libpq_url
    return make_conninfo(libpq_url, connect_timeout=_CONNECT_TIMEOUT)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- group commit -------------------------------------------------------------------------


class _Tx:
    """What a write job gets: the batch's connection, and a way to wake the workers."""

    __slots__ = ("conn", "wakes")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.wakes = False

    def wake_workers(self) -> None:
        """Send the wakeup notification at commit (only if this job is kept)."""
        self.wakes = True


@dataclass(eq=False)
class _Job(Generic[T]):
    run: Callable[[_Tx], Awaitable[T]]
    future: asyncio.Future[T]
    tries: int = 0


@dataclass
class _Outcome:
    job: _Job[Any]
    result: Any = None
    error: BaseException | None = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _GroupCommit:
    """The writer task: runs queued jobs in batches, one transaction and one savepoint per job each.

    A job that loses a deadlock is rolled back and retried in the next batch, after this
    one has committed and released the locks the other transaction waits for.
    """

    def __init__(self, pool: AsyncConnectionPool[Connection], wakeup_channel: str) -> None:
        self._pool = pool
        self._commit_and_notify = sql.SQL("NOTIFY {}; COMMIT").format(sql.Identifier(wakeup_channel))
        self._queue: asyncio.Queue[_Job[Any] | None] = asyncio.Queue()
        self._committing = False
        self._task = asyncio.create_task(self._main(), name="stepstone-postgres-writer")

    def submit(self, run: Callable[[_Tx], Awaitable[T]]) -> asyncio.Future[T]:
        job = _Job(run, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return job.future

    async def stop(self) -> None:
        """Finish every job queued so far, then end the task."""
        self._queue.put_nowait(None)
        await self._task

    async def _main(self) -> None:
        retry: list[_Job[Any]] = []
        stopping = False
        while True:
            batch, retry = retry, []
            if not batch and not stopping:
                job = await self._queue.get()
                if job is None:
                    stopping = True
                else:
                    batch.append(job)
            while not stopping and len(batch) < _MAX_BATCH and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stopping = True
                else:
                    batch.append(job)
            if not batch:
                return
            try:
                outcomes, retry = await self._commit(batch)
            except BaseException as exc:
                for job in batch:
                    _settle(job.future, None, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for outcome in outcomes:
                _settle(outcome.job.future, outcome.result, outcome.error)

    async def _commit(self, batch: list[_Job[Any]]) -> tuple[list[_Outcome], list[_Job[Any]]]:
        """Run a batch; if the connection breaks before COMMIT (nothing written), once more on another."""
        for attempt in (1, 2):
            async with self._pool.connection() as conn:
                try:
                    return await self._transaction(conn, batch)
                except psycopg.OperationalError:
                    if attempt == 2 or self._committing or not conn.broken:
                        raise
            await self._pool.check()
        raise AssertionError("unreachable")

    async def _transaction(self, conn: Connection, batch: list[_Job[Any]]) -> tuple[list[_Outcome], list[_Job[Any]]]:
        outcomes: list[_Outcome] = []
        retry: list[_Job[Any]] = []
        wakes = False
        self._committing = False
        try:
            await conn.execute("BEGIN; SAVEPOINT job")
            dirty = False  # the savepoint holds a kept job's changes: release it, take a new one
            for job in batch:
                if dirty:
                    await conn.execute("RELEASE SAVEPOINT job; SAVEPOINT job")
                tx = _Tx(conn)
                job.tries += 1
                try:
                    result = await job.run(tx)
                except Exception as exc:
                    if conn.broken:
                        raise
                    # Still the same savepoint afterwards, clean for the next job.
                    await conn.execute("ROLLBACK TO SAVEPOINT job")
                    dirty = False
                    if isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure) and (
                        job.tries < _MAX_TRIES
                    ):
                        retry.append(job)
                    else:
                        outcomes.append(_Outcome(job, error=exc))
                else:
                    dirty = True
                    wakes = wakes or tx.wakes
                    outcomes.append(_Outcome(job, result))
            self._committing = True
            await conn.execute(self._commit_and_notify if wakes else "COMMIT")
        except BaseException:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise
        return outcomes, retry


# -- notifications ------------------------------------------------------------------------


class _Listener:
    """A LISTEN connection that calls every callback on each wakeup; reconnects if it drops."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self.callbacks: list[Callable[[], None]] = []
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen now (so nothing sent after this returns is missed), then keep listening."""
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._main(), name="stepstone-postgres-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()

    async def _connect(self) -> Connection:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await conn.execute(self._listen)
        except BaseException:
            await conn.close()
            raise
        return conn

    def _wake(self) -> None:
        for callback in self.callbacks:
            try:
                callback()
            except Exception:
                _log.exception("stepstone: a wakeup callback failed")

    async def _main(self) -> None:
        while True:
            assert self._conn is not None
            try:
                async for _ in self._conn.notifies(timeout=_LISTEN_CHECK):
                    self._wake()
                await self._conn.execute("SELECT 1")
                continue
            except psycopg.Error as exc:
                _log.warning("stepstone: lost the LISTEN connection (%s); reconnecting", _one_line(exc))
            await self._conn.close()
            self._conn = await self._reconnect()
            self._wake()  # notifications sent while disconnected are lost: look for work now

    async def _reconnect(self) -> Connection:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._connect()
            except psycopg.OperationalError as exc:
                _log.warning("stepstone: cannot LISTEN yet (%s)", _one_line(exc))
                delay = min(delay * 2, 10.0)


# -- the store ----------------------------------------------------------------------------


class PostgresStore:
    """The `Store` on a PostgreSQL database, in its own schema.

    `schema` names the schema holding the tables (created if missing); several
    stepstone deployments can share one database under different schemas.
    `min_connections`/`max_connections` size the connection pool, whose connections
    serve reads and the writer; a worker's LISTEN connection comes on top.
    """

    wakeup_poll = 5.0

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
        self._writer: _GroupCommit | None = None
        self._listener: _Listener | None = None

    def _sql(self, template: str) -> str:
        query = self._queries.get(template)
        if query is None:
            query = self._queries[template] = template.replace("{s}", self._schema_sql)
        return query

    async def open(self) -> None:
        where = redact(self.url)
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StepstoneError(f"cannot connect to PostgreSQL at {where}: {_one_line(exc)}") from exc
        try:
            async with conn:
                await self._migrate(conn)
        except psycopg.Error as exc:
            raise StepstoneError(
                f"cannot create or migrate the stepstone schema {self.schema!r} at {where}: {_one_line(exc)}"
            ) from exc
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._min_connections,
            max_size=self._max_connections,
            kwargs={"autocommit": True},
            open=False,
            name="stepstone",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT * 2)
        except PoolTimeout as exc:
            await pool.close()
            raise StepstoneError(f"cannot connect to PostgreSQL at {where}: {_one_line(exc)}") from exc
        self._pool = pool
        self._writer = _GroupCommit(pool, self._channel)

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

    def _write(self, run: Callable[[_Tx], Awaitable[T]]) -> asyncio.Future[T]:
        if self._writer is None:
            raise StepstoneError("the store is not open (use `async with engine:`)")
        return self._writer.submit(run)

    async def _fetch(self, template: str, params: Sequence[Any] | Mapping[str, Any]) -> list[TupleRow]:
        """Rows of one read; once more on another connection if the first one was broken."""
        if self._pool is None:
            raise StepstoneError("the store is not open (use `async with engine:`)")
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

        async def register(tx: _Tx) -> None:
            await tx.conn.execute(self._sql(_REGISTER_WORKFLOWS), {"names": unique, "now": now})

        await self._write(register)

    async def workflow_names(self) -> list[str]:
        return [row[0] for row in await self._fetch("SELECT name FROM {s}.workflows ORDER BY name", ())]

    async def status_counts(self, workflow: str) -> dict[str, int]:
        query = "SELECT status, count(*) FROM {s}.instances WHERE workflow = %s GROUP BY status"
        return {status: count for status, count in await self._fetch(query, (workflow,))}

    # -- instances, for clients -----------------------------------------------------------

    async def create_instances(
        self, workflow: str, items: Sequence[tuple[str, str]], now: float
    ) -> list[InstanceRecord]:
        ids = [instance_id for instance_id, _ in items]
        params = [params_json for _, params_json in items]

        async def create(tx: _Tx) -> list[InstanceRecord]:
            cursor = await tx.conn.execute(
                self._sql(_CREATE_INSTANCES), {"workflow": workflow, "ids": ids, "params": params, "now": now}
            )
            rows = await cursor.fetchall()
            if len(rows) < len(ids):
                created = {row[2] for row in rows}
                seen: set[str] = set()
                for instance_id in ids:
                    if instance_id in seen or instance_id not in created:
                        raise InstanceExistsError(f"instance {instance_id!r} already exists in workflow {workflow!r}")
                    seen.add(instance_id)
            if rows:
                tx.wake_workers()
            return sorted((_instance(row) for row in rows), key=lambda record: record.pk)

        return await self._write(create)

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord:
        rows = await self._fetch(_FIND_INSTANCE, (workflow, instance_id))
        if not rows:
            raise _not_found(workflow, instance_id)
        return _instance(rows[0])

    async def list_instances(
        self, workflow: str, *, status: str | None, limit: int, before_pk: int | None
    ) -> list[InstanceRecord]:
        query = f"SELECT {_INSTANCE_COLUMNS} FROM {{s}}.instances WHERE workflow = %s"
        args: list[object] = [workflow]
        if status is not None:
            query += " AND status = %s"
            args.append(status)
        if before_pk is not None:
            query += " AND pk < %s"
            args.append(before_pk)
        query += " ORDER BY pk DESC LIMIT %s"
        args.append(limit)
        return [_instance(row) for row in await self._fetch(query, args)]

    async def history(self, pk: int) -> list[StepRecord]:
        steps = []
        for _, rows in itertools.groupby(await self._fetch(_HISTORY, (pk,)), key=lambda row: row[0]):
            group = list(rows)
            log = tuple(Attempt(*row[12:]) for row in group if row[12] is not None)
            steps.append(_step(group[0][:12], log))
        return steps

    async def events(self, pk: int) -> list[EventRecord]:
        return [
            EventRecord(seq, type_, payload, sent_at, StepKey(kind, name, count) if kind else None)
            for seq, type_, payload, sent_at, kind, name, count in await self._fetch(_EVENTS, (pk,))
        ]

    async def send_event(self, workflow: str, instance_id: str, type: str, payload_json: str, now: float) -> int:
        async def send(tx: _Tx) -> int:
            # Lock the instance before keeping the event: a run ending with `waiting` checks
            # for pending events under the same lock, so one of the two sees the other.
            cursor = await tx.conn.execute(self._sql(_LOCK_INSTANCE), (workflow, instance_id))
            row = await cursor.fetchone()
            if row is None:
                raise _not_found(workflow, instance_id)
            pk, status, _ = row
            if not lifecycle.can_receive_events(status):
                raise InvalidStateError(
                    f"cannot send an event to instance {instance_id!r}: it is {status}; events are "
                    "accepted until an instance completes, errors or is terminated"
                )
            cursor = await tx.conn.execute(
                self._sql(_KEEP_EVENT), {"pk": pk, "type": type, "payload": payload_json, "now": now}
            )
            seq, woken = await cursor.fetchone() or (None, None)
            if woken == "waiting":
                tx.wake_workers()
            return int(seq)

        return await self._write(send)

    async def control(
        self, workflow: str, instance_id: str, op: ControlOp, now: float, *, from_step: StepKey | None = None
    ) -> InstanceRecord:
        async def apply(tx: _Tx) -> InstanceRecord:
            conn = tx.conn
            cursor = await conn.execute(self._sql(_LOCK_INSTANCE), (workflow, instance_id))
            row = await cursor.fetchone()
            if row is None:
                raise _not_found(workflow, instance_id)
            pk, status, paused_status = row
            change = lifecycle.plan(op, status, paused_status)
            if op == "restart":
                await self._discard_history(conn, pk, from_step)
                cursor = await conn.execute(self._sql(_RESTART), {"pk": pk, "now": now})
            elif change.revoke_lease:  # terminate
                cursor = await conn.execute(self._sql(_TERMINATE), {"pk": pk, "status": change.status, "now": now})
            else:  # pause, resume
                cursor = await conn.execute(
                    self._sql(_SET_STATUS),
                    {"pk": pk, "status": change.status, "paused_status": change.paused_status, "now": now},
                )
            record = await cursor.fetchone()
            assert record is not None
            if op != "pause":  # runnable again, or a lease released
                tx.wake_workers()
            return _instance(record)

        return await self._write(apply)

    async def _discard_history(self, conn: Connection, pk: int, from_step: StepKey | None) -> None:
        """Delete an instance's steps (all, or from `from_step` on); events they took go too."""
        if from_step is None:
            await conn.execute(self._sql(_DISCARD_STEPS), {"pk": pk})
            return
        key = {"pk": pk, "kind": from_step.kind, "name": from_step.name, "count": from_step.count}
        cursor = await conn.execute(self._sql(_DISCARD_STEPS_FROM), key)
        if cursor.rowcount == 0:
            raise InvalidInputError(
                f"cannot restart from step {from_step.name!r} (count {from_step.count}, type "
                f"{from_step.kind}): no such step in the instance's history"
            )

    async def delete(self, workflow: str, instance_id: str) -> None:
        async def delete(tx: _Tx) -> None:
            cursor = await tx.conn.execute(self._sql(_DELETE_INSTANCE), (workflow, instance_id))
            if cursor.rowcount == 0:
                raise _not_found(workflow, instance_id)

        await self._write(delete)

    # -- workers --------------------------------------------------------------------------

    async def claim(
        self, worker_id: str, workflows: Sequence[str], limit: int, now: float, lease_until: float
    ) -> ClaimBatch:
        names = list(workflows)
        if not names:
            return ClaimBatch([], None)
        args = {"names": names, "now": now, "limit": limit, "worker": worker_id, "lease_until": lease_until}

        async def claim(tx: _Tx) -> ClaimBatch:
            conn = tx.conn
            async with conn.pipeline():
                await conn.execute(self._sql(_PAUSE_ABANDONED), args)
                claimed = await conn.execute(self._sql(_CLAIM), args)
                earliest = await conn.execute(self._sql(_EARLIEST), {**args, "queued": False})
            rows = sorted(await claimed.fetchall(), key=lambda row: (row[0], row[1], row[2]))
            claims = [
                Claim(pk, workflow, instance_id, params, created_at, token, resumed)
                for _, _, pk, workflow, instance_id, params, created_at, token, resumed in rows
            ]
            if len(claims) >= limit:
                return ClaimBatch(claims, now)
            row = await earliest.fetchone()
            return ClaimBatch(claims, row[0] if row else None)

        # Look before taking locks: an idle poll costs a read, not a write transaction.
        (earliest,) = (await self._fetch(_EARLIEST, {**args, "queued": True}))[0]
        if earliest is None or earliest > now:
            return ClaimBatch([], earliest)
        return await self._write(claim)

    async def load_steps(self, pk: int) -> list[StepRecord]:
        return [_step(row) for row in await self._fetch(_LOAD_STEPS, (pk,))]

    async def next_event(self, pk: int, type: str) -> EventRecord | None:
        rows = await self._fetch(_NEXT_EVENT, (pk, type))
        return EventRecord(*rows[0]) if rows else None

    async def write(self, run: RunWrite) -> Status:
        return await self._write(lambda tx: self._write_run(tx, run))

    async def _write_run(self, tx: _Tx, run: RunWrite) -> Status:
        conn = tx.conn
        # One round trip for the fence and all that does not need its answer: the step
        # statements are fenced themselves, and a lost lease rolls the job back anyway.
        async with conn.pipeline():
            if run.end is None:
                fence = await conn.execute(self._sql(_TOUCH_LEASED), (run.now, run.pk, run.token))
            else:
                fence = await conn.execute(self._sql(_LOCK_LEASED), (run.pk, run.token))
            recorded = [await conn.execute(self._sql(_RECORD_STEP), _step_params(run, step)) for step in run.steps]
            pending = None
            if run.end == "waiting" and run.wait_types:
                pending = await conn.execute(self._sql(_HAS_PENDING_EVENT), (run.pk, run.wait_types))
        row = await fence.fetchone()
        if row is None:
            raise LeaseLostError(f"instance {run.pk} is no longer leased with token {run.token}")
        status: Status = row[0]
        for step, cursor in zip(run.steps, recorded, strict=True):
            taken = await cursor.fetchone()
            if step.consume_event is not None and (taken is None or taken[0] != 1):
                raise LeaseLostError(f"event {step.consume_event} was taken or removed meanwhile")
        if run.end is None:
            return status
        wake_at = run.wake_at
        if pending is not None:
            found = await pending.fetchone()
            if found is not None and found[0]:
                wake_at = run.now
        new_status, paused_status = lifecycle.end_status(status, run.end, wake_at)
        await conn.execute(
            self._sql(_END_RUN),
            {
                "pk": run.pk, "status": new_status, "paused_status": paused_status, "wake_at": wake_at,
                "output": run.output_json, "error": run.error_json,
                "ended_at": run.now if new_status in ("complete", "errored") else None, "now": run.now,
            },
        )  # fmt: skip
        tx.wake_workers()  # a lease released: its instance may be runnable, its slot is free
        return new_status  # type: ignore[return-value]

    async def renew_leases(self, worker_id: str, tokens: dict[int, int], lease_until: float) -> set[int]:
        if not tokens:
            return set()
        args = {"pks": list(tokens), "tokens": list(tokens.values()), "worker": worker_id, "lease_until": lease_until}

        async def renew(tx: _Tx) -> set[int]:
            cursor = await tx.conn.execute(self._sql(_RENEW_LEASES), args)
            return set(tokens) - {row[0] for row in await cursor.fetchall()}

        return await self._write(renew)

    async def worker_seen(self, worker_id: str, host: str, pid: int, now: float) -> None:
        async def seen(tx: _Tx) -> None:
            await tx.conn.execute(self._sql(_WORKER_SEEN), {"id": worker_id, "host": host, "pid": pid, "now": now})

        await self._write(seen)

    async def workers_on_host(self, host: str) -> list[tuple[str, int]]:
        rows = await self._fetch("SELECT id, pid FROM {s}.workers WHERE host = %s", (host,))
        return [(worker_id, pid) for worker_id, pid in rows]

    async def expire_workers(self, worker_ids: Sequence[str], now: float) -> int:
        ids = list(worker_ids)
        if not ids:
            return 0

        async def expire(tx: _Tx) -> int:
            cursor = await tx.conn.execute(self._sql(_EXPIRE_WORKERS), {"ids": ids, "expired": now - 1})
            row = await cursor.fetchone()
            freed = int(row[0]) if row else 0
            if freed:
                tx.wake_workers()
            return freed

        return await self._write(expire)

    async def forget_worker(self, worker_id: str) -> None:
        async def forget(tx: _Tx) -> None:
            await tx.conn.execute(self._sql("DELETE FROM {s}.workers WHERE id = %s"), (worker_id,))

        await self._write(forget)

    async def subscribe_wakeups(self, callback: Callable[[], None]) -> None:
        """LISTEN on the schema's wakeup channel; `callback` runs in this event loop for each wakeup."""
        if self._pool is None:
            raise StepstoneError("the store is not open (use `async with engine:`)")
        if self._listener is None:
            listener = _Listener(self._conninfo, self._channel)
            try:
                await listener.start()
            except psycopg.OperationalError as exc:
                raise StepstoneError(f"cannot LISTEN on PostgreSQL at {redact(self.url)}: {_one_line(exc)}") from exc
            self._listener = listener
        self._listener.callbacks.append(callback)

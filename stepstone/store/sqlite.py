"""The SQLite store: one file in WAL mode, shared by any number of processes on one machine.

Durability: `synchronous=FULL` by default, so a commit is on disk (the WAL is
fsynced) before any write is acknowledged; nothing acknowledged is lost on power loss.
`synchronous="NORMAL"` is offered as a faster setting: it survives a process crash
but a power loss may drop the last commits.

Each store object keeps two threads, each with its own connection: a writer, which
runs every write and groups the writes that queue up meanwhile into one transaction
(group commit: one fsync for many steps), and a reader (see sqlite_connection).

An instance's steps are stored together, keyed by (instance_pk, seq), with no other
index (schema version 2): recording a new step changes one page, as a bare INSERT does.

SQLite cannot notify: a worker learns of other processes' commits from Linux, which
reports writes to the log (see sqlite_changes), and elsewhere by polling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from stepstone.store.sqlite_changes import CommitWatch, WriteWatch
from stepstone.store.sqlite_connection import ConnectionThread

T = TypeVar("T")

_log = logging.getLogger(__name__)

# An instance's last update: a write that only adds steps leaves the instance's row alone
# (one page less to commit per step), so its newest step, found by the primary key, may
# be later than its updated_at.
_LAST_UPDATE = (
    "max(updated_at, coalesce((SELECT recorded_at FROM steps WHERE steps.instance_pk = instances.pk "
    "ORDER BY seq DESC LIMIT 1), updated_at))"
)
_NEW_INSTANCE_COLUMNS = (
    "pk, workflow, id, status, params, output, error, created_at, updated_at, wake_at, paused_status, "
    "started_at, ended_at, lease_expires"
)
"""An instance's columns as an InstanceRecord takes them, for one just created (no steps)."""
_INSTANCE_COLUMNS = _NEW_INSTANCE_COLUMNS.replace("updated_at", _LAST_UPDATE)
_STEP_COLUMNS = (
    "seq, kind, name, count, status, result, error_type, error_message, attempts, due_at, started_at, ended_at, "
    "branch"
)
_POLL = 0.2
"""Seconds between a worker's looks for work from other processes, where they are polled."""
_WATCHED_POLL = 30.0
"""Seconds between a worker's safety-net looks, where writes to the log are watched."""
_FIRST_RECHECK = 0.001
"""Seconds before a look at writes to the log that could not tell is made again (the next
pauses double, up to _WRITES_SPACING; then subscribers are woken, to look for themselves)."""
_WRITES_SPACING = 0.01
"""Least seconds between two looks at writes to the log: while commits keep coming, work
from another process waits up to this long to be noticed; a first commit after a quiet
moment is noticed at once."""


def _instance(row: sqlite3.Row | tuple[Any, ...]) -> InstanceRecord:
    return InstanceRecord(*row)


def _step(row: tuple[Any, ...], logged: tuple[Attempt, ...] | None = None) -> StepRecord:
    """A step from its row; with `logged` (its attempt rows, for `history`) its whole attempt log."""
    (seq, kind, name, count, status, result, error_type, error_message, attempts, due_at, started_at, ended_at,
     branch) = row
    return StepRecord(
        StepKey(kind, name, count),
        status,
        result,
        error_type,
        error_message,
        attempts,
        due_at,
        started_at,
        ended_at,
        seq,
        attempt_log(kind, status, attempts, started_at, ended_at, logged),
        branch,
    )


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))




@dataclass(frozen=True)
class _Look:
    """What a claim's look before the write lock found, and the WAL index's header before it."""

    header: bytes
    asked: tuple[str, tuple[str, ...]]
    """The worker and workflows looked for."""
    earliest: float | None
    at: float
    """time.monotonic() of the look."""


_LOOK_AGAIN = 5.0
"""Seconds after which a claim looks again even if nothing seems committed (a safety net)."""


def path_from_url(url: str) -> str:
    """`sqlite:///relative.db` -> relative.db, `sqlite:////abs.db` -> /abs.db, `sqlite://:memory:`."""
    if not url.startswith("sqlite://"):
        raise InvalidInputError(f"invalid SQLite URL {url!r}: expected sqlite:///path/to/file.db")
    rest = url.removeprefix("sqlite://")
    if rest in (":memory:", "/:memory:"):
        raise InvalidInputError(
            f"invalid SQLite URL {url!r}: an in-memory database cannot be shared by the engine's "
            "connections; use a file (a temporary directory is fine)"
        )
    if not rest.startswith("/") or rest == "/":
        raise InvalidInputError(f"invalid SQLite URL {url!r}: expected sqlite:///path/to/file.db")
    if "?" in rest or "#" in rest:
        raise InvalidInputError(
            f"invalid SQLite URL {url!r}: expected sqlite:///path/to/file.db, without a query or fragment "
            "(the store sets its own connection options)"
        )
    return rest[1:]


class SqliteStore:
    """The `Store` on one SQLite file."""

    wakeup_poll = _POLL

    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise InvalidInputError(f"invalid SQLite synchronous {synchronous!r}: expected FULL, EXTRA or NORMAL")
        self.url = url
        self.path = path_from_url(url)
        self._synchronous = synchronous.upper()
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._commits = CommitWatch(self.path)
        self._last_look: _Look | None = None
        self._writes: WriteWatch | None = None
        self._wakeup_callbacks: list[Callable[[], None]] = []

    async def open(self) -> None:
        directory = Path(self.path).parent
        if not directory.is_dir():
            raise InvalidInputError(f"invalid SQLite URL {self.url!r}: directory {str(directory)!r} does not exist")
        self._writer = ConnectionThread(self.path, self._synchronous, writer=True, name="stepstone-sqlite-writer")
        self._reader = ConnectionThread(self.path, self._synchronous, writer=False, name="stepstone-sqlite-reader")
        try:
            await asyncio.to_thread(self._writer.start)
            await self._write(self._migrate)
            await asyncio.to_thread(self._reader.start)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        threads = (self._writer, self._reader)
        self._writer = self._reader = None  # (first: a write queued behind the stop would wait for ever)
        for thread in threads:
            if thread is not None:
                await asyncio.to_thread(thread.stop)
        self._commits.close()
        self._last_look = None
        if self._writes is not None:
            self._writes.close()
            self._writes = None

    def _write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        solo: Callable[[sqlite3.Connection], T | None] | None = None,
    ) -> asyncio.Future[T]:
        if self._writer is None:
            raise StoreClosedError
        return self._writer.submit(fn, durable=durable, solo=solo)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._reader is None:
            raise StoreClosedError
        return self._reader.submit(fn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        for migration in migrations.pending("sqlite", row[0] or 0):
            for statement in migration.sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))

    # -- workflows ------------------------------------------------------------------------

    async def register_workflows(self, names: Sequence[str], now: float) -> None:
        def register(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO workflows (name, registered_at, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                [(name, now, now) for name in names],
            )

        await self._write(register)

    async def workflow_names(self) -> list[str]:
        return await self._read(lambda c: [r[0] for r in c.execute("SELECT name FROM workflows ORDER BY name")])

    async def status_counts(self, workflow: str, *, now: float | None = None) -> dict[str, int]:
        sql = (
            "SELECT CASE WHEN status = 'running' AND lease_expires < ? THEN 'unknown' ELSE status END, count(*) "
            "FROM instances WHERE workflow = ? GROUP BY 1"
        )
        return await self._read(lambda c: dict(c.execute(sql, (now, workflow)).fetchall()))

    # -- instances, for clients -----------------------------------------------------------

    async def create_instances(
        self, workflow: str, items: Sequence[tuple[str, str]], now: float, lease: Lease | None = None
    ) -> list[InstanceRecord]:
        leased = 0 if lease is None else lease.limit

        def insert(conn: sqlite3.Connection, position: int, instance_id: str, params_json: str) -> InstanceRecord:
            # Leased: running from now under `lease`, as if its worker had claimed it.
            taken = lease if position < leased else None
            row = conn.execute(
                "INSERT INTO instances (workflow, id, status, params, created_at, updated_at, started_at, "
                "lease_owner, lease_expires, lease_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"RETURNING {_NEW_INSTANCE_COLUMNS}",
                (workflow, instance_id, "queued" if taken is None else "running", params_json, now, now,
                 taken and now, taken and taken.worker_id, taken and taken.until,
                 0 if taken is None else FIRST_TOKEN),
            ).fetchone()  # fmt: skip
            return _instance(row)

        def create(conn: sqlite3.Connection) -> list[InstanceRecord]:
            created = []
            for position, (instance_id, params_json) in enumerate(items):
                try:
                    created.append(insert(conn, position, instance_id, params_json))
                except sqlite3.IntegrityError:
                    raise InstanceExistsError(
                        f"instance {instance_id!r} already exists in workflow {workflow!r}"
                    ) from None
            return created

        def create_one(conn: sqlite3.Connection) -> list[InstanceRecord]:
            return [insert(conn, 0, *items[0])]

        return await self._write(create, solo=create_one if len(items) == 1 else None)

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord:
        def get(conn: sqlite3.Connection) -> InstanceRecord:
            return _instance(_find(conn, workflow, instance_id, _INSTANCE_COLUMNS))

        return await self._read(get)

    async def list_instances(
        self, workflow: str, *, status: str | None, limit: int, before_pk: int | None, now: float | None = None
    ) -> list[InstanceRecord]:
        sql = f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE workflow = ?"
        args: list[object] = [workflow]
        if status is not None:
            sql += " AND status = ?"
            args.append("running" if status == "unknown" and now is not None else status)
            if now is not None and status in ("running", "unknown"):
                unknown = status == "unknown"
                sql += " AND lease_expires < ?" if unknown else " AND (lease_expires IS NULL OR lease_expires >= ?)"
                args.append(now)
        if before_pk is not None:
            sql += " AND pk < ?"
            args.append(before_pk)
        sql += " ORDER BY pk DESC LIMIT ?"
        args.append(limit)
        return await self._read(lambda c: [_instance(r) for r in c.execute(sql, args)])

    async def history(self, pk: int) -> list[StepRecord]:
        def read(conn: sqlite3.Connection) -> list[StepRecord]:
            log: dict[int, list[Attempt]] = {}
            for seq, *attempt in conn.execute(
                "SELECT step_seq, attempt, started_at, ended_at, outcome, error_type, error_message "
                "FROM attempts WHERE instance_pk = ? ORDER BY step_seq, attempt",
                (pk,),
            ):
                log.setdefault(seq, []).append(Attempt(*attempt))
            rows = conn.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE instance_pk = ? ORDER BY seq", (pk,))
            return [_step(row, tuple(log.get(row[0], ()))) for row in rows]

        return await self._read(read)

    async def events(self, pk: int) -> list[EventRecord]:
        def read(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                "SELECT e.seq, e.type, e.payload, e.sent_at, s.kind, s.name, s.count FROM events e "
                "LEFT JOIN steps s ON s.instance_pk = e.instance_pk AND s.seq = e.consumed_by "
                "WHERE e.instance_pk = ? ORDER BY e.seq",
                (pk,),
            )
            return [
                EventRecord(seq, type_, payload, sent_at, StepKey(kind, name, count) if kind else None)
                for seq, type_, payload, sent_at, kind, name, count in rows
            ]

        return await self._read(read)

    async def send_event(self, workflow: str, instance_id: str, type: str, payload_json: str, now: float) -> int:
        def send(conn: sqlite3.Connection) -> int:
            pk, status = _find(conn, workflow, instance_id, "pk, status")
            if not lifecycle.can_receive_events(status):
                raise InvalidStateError(
                    f"cannot send an event to instance {instance_id!r}: it is {status}; events are "
                    "accepted until an instance completes, errors or is terminated"
                )
            (seq,) = conn.execute(
                "INSERT INTO events (instance_pk, type, payload, sent_at) VALUES (?, ?, ?, ?) RETURNING seq",
                (pk, type, payload_json, now),
            ).fetchone()
            # Wake a waiting instance that waits for this type, so that its run takes the event
            # (a paused one: on resume). Any other is left alone: the event waits for its wait.
            conn.execute(
                "UPDATE instances SET wake_at = ? WHERE pk = ? "
                "AND (status = 'waiting' OR (status = 'paused' AND paused_status = 'waiting')) "
                "AND (wait_types IS NULL OR instr(wait_types, ',' || ? || ',') > 0)",
                (now, pk, type),
            )
            return int(seq)

        return await self._write(send)

    async def control(
        self, workflow: str, instance_id: str, op: ControlOp, now: float, *, from_step: StepKey | None = None
    ) -> InstanceRecord:
        def apply(conn: sqlite3.Connection) -> InstanceRecord:
            pk, status, paused_status = _find(conn, workflow, instance_id, "pk, status, paused_status")
            change = lifecycle.plan(op, status, paused_status)
            if op == "restart":
                _discard_history(conn, pk, from_step)
                conn.execute(
                    "UPDATE instances SET status = 'queued', output = NULL, error = NULL, wake_at = NULL, "
                    "paused_status = NULL, ended_at = NULL, lease_owner = NULL, lease_expires = NULL, "
                    "lease_token = lease_token + 1, updated_at = ? WHERE pk = ?",
                    (now, pk),
                )
            elif change.revoke_lease:  # terminate
                conn.execute(
                    "UPDATE instances SET status = ?, wake_at = NULL, paused_status = NULL, ended_at = ?, "
                    "lease_owner = NULL, lease_expires = NULL, lease_token = lease_token + 1, updated_at = ? "
                    "WHERE pk = ?",
                    (change.status, now, now, pk),
                )
            else:  # pause, resume
                conn.execute(
                    "UPDATE instances SET status = ?, paused_status = ?, updated_at = ? WHERE pk = ?",
                    (change.status, change.paused_status, now, pk),
                )
            row = conn.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE pk = ?", (pk,)).fetchone()
            return _instance(row)

        return await self._write(apply)

    async def delete(self, workflow: str, instance_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("DELETE FROM instances WHERE workflow = ? AND id = ?", (workflow, instance_id))
            if cursor.rowcount == 0:
                raise _not_found(workflow, instance_id)

        await self._write(delete)

    async def prune(self, workflows: Sequence[str], status: str, ended_before: float, limit: int) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            removed = 0
            for name in workflows:
                removed += conn.execute(
                    "DELETE FROM instances WHERE pk IN (SELECT pk FROM instances WHERE workflow = ? AND status = ? "
                    "AND ended_at < ? ORDER BY ended_at LIMIT ?)",
                    (name, status, ended_before, limit - removed),
                ).rowcount
                if removed >= limit:
                    break
            return removed

        return await self._write(prune)

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

        def claim(conn: sqlite3.Connection) -> ClaimBatch:
            # A pause asked while a step ran takes effect when that step ends; a dead
            # worker's step has ended.
            conn.execute(
                "UPDATE instances SET status = 'paused', paused_status = 'queued', lease_owner = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE status = 'waitingForPause' AND lease_expires < ? "
                f"AND workflow IN ({_marks(names)})",
                (now, now, *names),
            )
            picked: list[tuple[int, bool]] = []
            # Waking instances go first, then those whose worker died, then new ones. Each
            # query runs per workflow, so that it walks one index range in order.
            for sql, bound in (
                (
                    "SELECT wake_at, pk, 1 FROM instances WHERE status = 'waiting' AND workflow = ? "
                    "AND wake_at <= ? ORDER BY wake_at LIMIT ?",
                    horizon,
                ),
                (
                    "SELECT lease_expires, pk, 1 FROM instances WHERE status = 'running' AND workflow = ? "
                    "AND lease_expires < ? ORDER BY lease_expires LIMIT ?",
                    now,
                ),
                (
                    "SELECT pk, pk, started_at IS NOT NULL FROM instances WHERE status = 'queued' AND workflow = ? "
                    "AND ? IS NOT NULL ORDER BY pk LIMIT ?",
                    now,
                ),
            ):
                wanted = limit - len(picked)
                if wanted > 0:
                    rows = [row for name in names for row in conn.execute(sql, (name, bound, wanted))]
                    picked += [(pk, bool(resumed)) for _, pk, resumed in sorted(rows)[:wanted]]
            # The steps of resumed instances come with the claim: one read, not one per instance.
            steps: dict[int, list[StepRecord]] = {pk: [] for pk, resumed in picked if resumed}
            if steps:
                for row in conn.execute(
                    f"SELECT instance_pk, {_STEP_COLUMNS} FROM steps WHERE instance_pk IN ({_marks(list(steps))}) "
                    "ORDER BY instance_pk, seq",
                    list(steps),
                ):
                    steps[row[0]].append(_step(row[1:]))
            claims = []
            for pk, resumed in picked:
                row = conn.execute(
                    "UPDATE instances SET status = 'running', lease_owner = ?, lease_expires = ?, "
                    "lease_token = lease_token + 1, started_at = coalesce(started_at, ?), updated_at = ? "
                    "WHERE pk = ? RETURNING workflow, id, params, created_at, lease_token",
                    (worker_id, lease_until, now, now, pk),
                ).fetchone()
                workflow, instance_id, params, created_at, token = row
                claims.append(
                    Claim(pk, workflow, instance_id, params, created_at, token, resumed, tuple(steps.get(pk, ())))
                )
            if len(claims) >= limit:
                return ClaimBatch(claims, now)
            return ClaimBatch(claims, _earliest(conn, worker_id, names, queued=False))

        # Look before taking the write lock: an idle poll costs a read, not a write; and
        # if nothing was committed since the last look, not even that (no thread woken).
        header, look = self._commits.header(), self._last_look
        if expect_work:
            earliest: float | None = now
        elif (
            look is not None
            and header is not None
            and look.header == header
            and look.asked == (worker_id, tuple(names))
            and time.monotonic() < look.at + _LOOK_AGAIN
        ):
            earliest = look.earliest
        else:
            earliest = await self._read(lambda conn: _earliest(conn, worker_id, names, queued=True))
            if header is not None:
                self._last_look = _Look(header, (worker_id, tuple(names)), earliest, time.monotonic())
        if earliest is None or earliest > horizon:
            return ClaimBatch([], earliest)
        # Not durable: a claim lost to a power cut leaves the instance claimable again, and
        # the run's first write, which syncs the log, makes the claim durable with it.
        return await self._write(claim, durable=False)

    async def load_steps(self, pk: int) -> list[StepRecord]:
        sql = f"SELECT {_STEP_COLUMNS} FROM steps WHERE instance_pk = ? ORDER BY seq"
        return await self._read(lambda c: [_step(row) for row in c.execute(sql, (pk,))])

    async def next_event(self, pk: int, type: str) -> EventRecord | None:
        def read(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(
                "SELECT seq, type, payload, sent_at FROM events WHERE instance_pk = ? AND type = ? "
                "AND consumed_by IS NULL ORDER BY seq LIMIT 1",
                (pk, type),
            ).fetchone()
            return None if row is None else EventRecord(*row)

        return await self._read(read)

    def leases_at_once(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]] | None:
        for thread in (self._reader, self._writer):  # (the reader's is the more often idle)
            if thread is not None:
                done, found = thread.read_here(functools.partial(_leases, pks=pks))
                if done:
                    return found
        return None

    async def leases(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]]:
        return await self._read(functools.partial(_leases, pks=pks))

    async def write(self, run: RunWrite) -> Status:
        kept: list[bool] | None = [] if run.wait_types else None
        status = await self._write(lambda conn: _write_run(conn, run, kept), solo=_solo_write(run))
        if kept:
            # Due now, for an event kept before its wait was recorded (PostgreSQL's END_RUN
            # notifies the workers; here they would not hear of their own process's write).
            self._wake_subscribers()
        return status

    async def renew_leases(self, worker_id: str, tokens: dict[int, int], lease_until: float) -> set[int]:
        def renew(conn: sqlite3.Connection) -> set[int]:
            lost = set()
            for pk, token in tokens.items():
                cursor = conn.execute(
                    "UPDATE instances SET lease_expires = ? WHERE pk = ? AND lease_token = ? AND lease_owner = ?",
                    (lease_until, pk, token, worker_id),
                )
                if cursor.rowcount == 0:
                    lost.add(pk)
            return lost

        return await self._write(renew)

    async def worker_seen(self, worker_id: str, host: str, pid: int, now: float) -> None:
        def seen(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workers (id, host, pid, started_at, seen_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                (worker_id, host, pid, now, now),
            )

        await self._write(seen)

    async def workers_on_host(self, host: str) -> list[tuple[str, int]]:
        sql = "SELECT id, pid FROM workers WHERE host = ?"
        return await self._read(lambda c: [(r[0], r[1]) for r in c.execute(sql, (host,))])

    async def expire_workers(self, worker_ids: Sequence[str], now: float) -> int:
        ids = list(worker_ids)

        def expire(conn: sqlite3.Connection) -> int:
            if not ids:
                return 0
            cursor = conn.execute(
                f"UPDATE instances SET lease_expires = ? WHERE lease_owner IN ({_marks(ids)})", (now - 1, *ids)
            )
            conn.execute(f"DELETE FROM workers WHERE id IN ({_marks(ids)})", ids)
            return cursor.rowcount

        return await self._write(expire)

    async def forget_worker(self, worker_id: str) -> None:
        def forget(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

        await self._write(forget)

    async def subscribe_wakeups(self, callback: Callable[[], None]) -> None:
        """Call `callback` soon after another connection commits to the file (any other
        process's, or another store's here), where the log's writes can be watched (Linux).
        Elsewhere workers poll every _POLL seconds."""
        self._wakeup_callbacks.append(callback)
        if self._writes is None and self._writer is not None:
            self._writer.others_committed()  # from now on
            writes = WriteWatch(self.path + "-wal", self._written, spacing=_WRITES_SPACING)
            if writes.start():
                self._writes = writes
                self.wakeup_poll = _WATCHED_POLL

    def _written(self, pause: float = 0.0) -> None:
        """The log was written, by this store's commits alone or by others' too; or, if
        `pause`, a look `pause` seconds after one that could not tell (another connection
        held the write lock: a commit of its own may have become visible since)."""
        if self._writes is not None and not self._writes.alive:
            self.wakeup_poll = _POLL  # the file was replaced: poll, as where writes are not watched
        if self._writer is None:
            return
        others = self._writer.others_committed()
        if others is None and pause < _WRITES_SPACING:
            pause = max(2 * pause, _FIRST_RECHECK)
            asyncio.get_running_loop().call_later(pause, self._written, pause)
            return
        if others is False:
            return
        self._wake_subscribers()

    def _wake_subscribers(self) -> None:
        for callback in self._wakeup_callbacks:
            try:
                callback()
            except Exception:
                _log.exception("stepstone: a wakeup callback failed")


def _not_found(workflow: str, instance_id: str) -> InstanceNotFoundError:
    return InstanceNotFoundError(f"no instance {instance_id!r} in workflow {workflow!r}")


def _find(conn: sqlite3.Connection, workflow: str, instance_id: str, columns: str) -> tuple[Any, ...]:
    row = conn.execute(
        f"SELECT {columns} FROM instances WHERE workflow = ? AND id = ?", (workflow, instance_id)
    ).fetchone()
    if row is None:
        raise _not_found(workflow, instance_id)
    return tuple(row)


def _earliest(conn: sqlite3.Connection, worker_id: str, names: list[str], *, queued: bool) -> float | None:
    """When something of `names` is next claimable: 0 if queued, a timer, another's lease expiry."""
    times = []
    for name in names:
        if (
            queued
            and conn.execute(
                "SELECT 1 FROM instances WHERE status = 'queued' AND workflow = ? LIMIT 1", (name,)
            ).fetchone()
        ):
            return 0.0
        for row in (
            conn.execute(
                "SELECT wake_at FROM instances WHERE status = 'waiting' AND workflow = ? AND wake_at IS NOT NULL "
                "ORDER BY wake_at LIMIT 1",
                (name,),
            ).fetchone(),
            conn.execute(
                "SELECT lease_expires FROM instances WHERE status IN ('running', 'waitingForPause') "
                "AND workflow = ? AND lease_owner != ? ORDER BY lease_expires LIMIT 1",
                (name, worker_id),
            ).fetchone(),
        ):
            if row is not None and row[0] is not None:
                times.append(row[0])
    return min(times) if times else None


def _discard_history(conn: sqlite3.Connection, pk: int, from_step: StepKey | None) -> None:
    """Delete an instance's steps (all, or from `from_step` on); events they took go too."""
    first = 0
    if from_step is not None:
        row = conn.execute(
            "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? AND count = ?",
            (pk, from_step.kind, from_step.name, from_step.count),
        ).fetchone()
        if row is None:
            raise InvalidInputError(
                f"cannot restart from step {from_step.name!r} (count {from_step.count}, type "
                f"{from_step.kind}): no such step in the instance's history"
            )
        first = row[0]
    conn.execute("DELETE FROM steps WHERE instance_pk = ? AND seq >= ?", (pk, first))


def _leases(conn: sqlite3.Connection, pks: Sequence[int]) -> dict[int, tuple[int, Status]]:
    rows = conn.execute(
        f"SELECT pk, lease_token, status FROM instances WHERE pk IN ({_marks(pks)}) AND lease_owner IS NOT NULL",
        list(pks),
    )
    return {pk: (token, status) for pk, token, status in rows}


def _write_run(conn: sqlite3.Connection, run: RunWrite, kept: list[bool] | None = None) -> Status:
    """Record the run's write (the lease checked first); its status after. If the run stops
    to wait for events of which one is kept already, it is due at once, and `kept` says so."""
    # The token names this lease; a lease given up (the run ended, a pause took effect) has no owner.
    # The write lock is held (BEGIN IMMEDIATE), so reading the fence is enough.
    row = conn.execute(
        "SELECT status FROM instances WHERE pk = ? AND lease_token = ? AND lease_owner IS NOT NULL",
        (run.pk, run.token),
    ).fetchone()
    if row is None:
        raise LeaseLostError(f"instance {run.pk} is no longer leased with token {run.token}")
    status: Status = row[0]
    touch = not run.steps
    for step in run.steps:
        seq, added = _record_step(conn, run.pk, step, run.now)
        touch = touch or not added
        if step.new_attempts:
            conn.executemany(
                "INSERT OR REPLACE INTO attempts (instance_pk, step_seq, attempt, started_at, ended_at, outcome, "
                "error_type, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run.pk, seq, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message)
                    for a in step.new_attempts
                ],
            )
        if step.consume_event is not None:
            taken = conn.execute(
                "UPDATE events SET consumed_by = ? WHERE seq = ? AND instance_pk = ? AND consumed_by IS NULL",
                (seq, step.consume_event, run.pk),
            )
            if taken.rowcount != 1:
                raise LeaseLostError(f"event {step.consume_event} was taken or removed meanwhile")
    if run.end is None and touch:
        # A write that only adds steps is dated by them (_LAST_UPDATE); any other moves updated_at.
        conn.execute("UPDATE instances SET updated_at = ? WHERE pk = ?", (run.now, run.pk))
    if run.end is None:
        return status
    wake_at = run.wake_at
    if run.end in ("waiting", "paused") and run.wait_types:
        pending = conn.execute(
            "SELECT 1 FROM events WHERE instance_pk = ? AND consumed_by IS NULL "
            f"AND type IN ({_marks(run.wait_types)}) LIMIT 1",
            (run.pk, *run.wait_types),
        ).fetchone()
        if pending is not None:
            wake_at = run.now
            if kept is not None:
                kept.append(True)
    new_status, paused_status = lifecycle.end_status(status, run.end, wake_at)
    ended_at = run.now if new_status in ("complete", "errored") else None
    conn.execute(
        "UPDATE instances SET status = ?, paused_status = ?, wake_at = ?, wait_types = ?, output = ?, error = ?, "
        "ended_at = ?, lease_owner = NULL, lease_expires = NULL, updated_at = ? WHERE pk = ?",
        (
            new_status, paused_status, wake_at, f",{','.join(run.wait_types)},", run.output_json, run.error_json,
            ended_at, run.now, run.pk,
        ),
    )  # fmt: skip
    return new_status  # type: ignore[return-value]


def _solo_write(run: RunWrite) -> Callable[[sqlite3.Connection], Status | None] | None:
    """The run's write as one fenced statement, for the two writes every instance makes:
    a new step record while the run goes on, and the end of a run that records nothing
    more (complete or errored). The fence also asks for the status `running`, so that a
    pause asked meanwhile (waitingForPause) goes the long way (_write_run), which reports
    it; as does anything the statement does not change (the lease lost, a seq taken)."""
    fence = (run.pk, run.token)
    if run.end is None and len(run.steps) == 1:
        step = run.steps[0]
        if step.seq is None or step.new_attempts or step.consume_event is not None:
            return None
        values = _step_values(run.pk, step.seq, step, run.now) + fence
        return lambda conn: "running" if conn.execute(_ADD_STEP_FENCED, values).rowcount == 1 else None
    if run.end in ("complete", "errored") and not run.steps:
        end: Status = run.end
        values = (end, run.wake_at, run.output_json, run.error_json, run.now, run.now, *fence)
        return lambda conn: end if conn.execute(_END_FENCED, values).rowcount == 1 else None
    return None


_FENCE = "pk = ? AND lease_token = ? AND lease_owner IS NOT NULL AND status = 'running'"
_END_FENCED = (
    "UPDATE instances SET status = ?, paused_status = NULL, wake_at = ?, output = ?, error = ?, ended_at = ?, "
    f"lease_owner = NULL, lease_expires = NULL, updated_at = ? WHERE {_FENCE}"
)

_STEP_FIELDS = (
    "instance_pk, seq, kind, name, count, status, result, error_type, error_message, attempts, due_at, "
    "started_at, ended_at, recorded_at, branch"
)
_ADD_STEP = f"INSERT INTO steps ({_STEP_FIELDS}) VALUES ({_marks(_STEP_FIELDS.split(','))}) ON CONFLICT DO NOTHING"
_ADD_STEP_FENCED = (
    f"INSERT INTO steps ({_STEP_FIELDS}) SELECT {_marks(_STEP_FIELDS.split(','))} FROM instances "
    f"WHERE {_FENCE} ON CONFLICT DO NOTHING"
)


def _step_values(pk: int, seq: int, step: StepWrite, now: float) -> tuple[Any, ...]:
    """A step record's values, in the order of _STEP_FIELDS."""
    key = step.key
    return (
        pk, seq, key.kind, key.name, key.count, step.status, step.result_json, step.error_type, step.error_message,
        step.attempts, step.due_at, step.started_at, step.ended_at, now, step.branch,
    )  # fmt: skip


def _record_step(conn: sqlite3.Connection, pk: int, step: StepWrite, now: float) -> tuple[int, bool]:
    """Insert or update a step's record: (its seq, whether it was added). A step whose seq
    the run gave is written by seq, the primary key (the hot path, a new step: one INSERT);
    one without is found by key."""
    seq = step.seq
    if seq is None:
        found = conn.execute(
            "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? AND count = ?",
            (pk, step.key.kind, step.key.name, step.key.count),
        ).fetchone()
        if found is None:
            found = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE instance_pk = ?", (pk,)).fetchone()
        seq = int(found[0])
    kind, name, count = step.key.kind, step.key.name, step.key.count
    added = conn.execute(_ADD_STEP, _step_values(pk, seq, step, now)).rowcount
    if added == 1:
        return seq, True
    updated = conn.execute(
        "UPDATE steps SET status = ?, result = ?, error_type = ?, error_message = ?, attempts = ?, due_at = ?, "
        "ended_at = ?, recorded_at = ? WHERE instance_pk = ? AND seq = ? AND kind = ? AND name = ? AND count = ?",
        (
            step.status, step.result_json, step.error_type, step.error_message, step.attempts, step.due_at,
            step.ended_at, now, pk, seq, kind, name, count,
        ),
    ).rowcount  # fmt: skip
    if updated != 1:
        raise StepstoneError(f"step {step.key} of instance {pk} was given seq {seq}, which another step has")
    return seq, False

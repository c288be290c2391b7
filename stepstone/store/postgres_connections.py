"""The PostgreSQL store's long-lived connection users: the writer (group commit) and the listener.

Group commit: every write is a job queued to one writer task, which runs whatever has
queued up meanwhile in one transaction on one connection, sent in one round trip
where it can be, and answers the callers only once COMMIT has returned. One job's
error undoes only that job. Jobs that made work runnable have the transaction send a
NOTIFY, which PostgreSQL delivers at commit, and only if it commits.

The listener holds a LISTEN connection and calls back on every notification; it
reconnects when the connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from stepstone.errors import StoreClosedError
from stepstone.store.base import settle

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

_log = logging.getLogger(__name__)

_MAX_BATCH = 512
"""Jobs per group commit sent whole (one transaction, no savepoints)."""
_MAX_SAVEPOINTS = 64
"""Jobs per transaction when a batch runs again job by job, each in a savepoint: past 64
subtransactions in one transaction PostgreSQL's per-backend cache overflows, which slows
every session's snapshots."""
_FRESH_TRIES = 3
"""Connections the writer takes and finds closed before it uses the next one as it is."""
_MAX_TRIES = 5
"""Attempts of a job that keeps losing deadlocks before its error reaches the caller."""
_ABANDON = "DO $$ BEGIN RAISE EXCEPTION 'stepstone: batch abandoned before its commit'; END $$"
"""Fails a pipeline's implicit transaction, so that the Sync that ends it does not commit."""
_LAZY_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"
"""For this transaction only: COMMIT returns before its WAL is flushed to disk."""
_LISTEN_CHECK = 30.0
"""Seconds between liveness checks of the LISTEN connection (a silent drop raises nothing)."""


def one_line(exc: BaseException) -> str:
    """An error's text on one line (libpq's messages span several)."""
    return " ".join(str(exc).split())


class Tx:
    """What a write job gets: the batch's connection, and a way to wake the workers."""

    __slots__ = ("conn", "wakes")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.wakes = False

    def wake_workers(self) -> None:
        """Send the wakeup notification at commit (only if this job is kept)."""
        self.wakes = True


class Later(Generic[T]):
    """A job's answer read once its statements have run: `read` looks at their cursors.

    A job that returns one needs no answer from the server before COMMIT, so its
    statements, the COMMIT and those of the other jobs of the batch share one round trip.
    (A job may also read while it runs: a fetch waits for the statements sent so far.)
    `read` must not refuse: the transaction has committed by the time it runs.
    """

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self.read = read


Job = Callable[[Tx], Awaitable[Any]]
"""A write: it sends its statements on `tx.conn` and returns its answer, or a `Later` one."""


@dataclass(eq=False)
class _Job:
    run: Job
    future: asyncio.Future[Any]
    durable: bool = True
    single: bool = False
    rerunnable: bool = True
    lock: tuple[str, str] | None = None
    lone: bool = False
    tries: int = 0


@dataclass
class _Outcome:
    job: _Job
    result: Any = None
    error: BaseException | None = None


class _Refused(Exception):
    """The optimistic batch failed: some job's statements (or its own code) raised."""


async def _answer(value: Any) -> Any:
    return await value.read() if isinstance(value, Later) else value


def _add(batch: list[_Job], job: _Job | None) -> bool:
    """Add a job taken from the queue to the batch; True if it was the stop mark instead."""
    if job is None:
        return True
    batch.append(job)
    return False


def _lock_order(job: _Job) -> tuple[bool, str, str]:
    return (False, "", "") if job.lock is None else (True, *job.lock)


def _writer_stopped() -> StoreClosedError:
    return StoreClosedError("the PostgreSQL store's writer has stopped (the store is closing)")


class GroupCommit:
    """The writer task: runs queued jobs in batches, one transaction each.

    A batch is first sent whole, in pipeline mode: every job's statements, then a Sync
    that commits them, in one round trip when no job needs an answer before the end. If anything
    fails, that transaction is rolled back and the batch runs again carefully, each job
    in its own savepoint, so that one job's error undoes only that job. A job that
    loses a deadlock is retried in the next batch, after this one has committed and
    released the locks the other transaction waits for.
    """

    def __init__(self, pool: AsyncConnectionPool[Connection], wakeup_channel: str) -> None:
        self._pool = pool
        self._notify = sql.SQL("NOTIFY {}").format(sql.Identifier(wakeup_channel))
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._committing = False
        self._closed = False
        """Set as the task ends: no job is taken after."""
        self._conn: Connection | None = None
        """The connection the writer keeps between batches."""
        self._task = asyncio.create_task(self._main(), name="stepstone-postgres-writer")

    def submit(
        self,
        run: Callable[[Tx], Awaitable[T | Later[T]]],
        *,
        durable: bool = True,
        single: bool = False,
        rerunnable: bool = True,
        lock: tuple[str, str] | None = None,
        lone: bool = False,
    ) -> asyncio.Future[T]:
        """Queue a job. `durable=False`: its loss in a crash is harmless (a claim), so a batch
        of such jobs alone commits without waiting for the WAL flush; the next durable commit
        flushes it, as PostgreSQL's WAL is sequential. `single`: the job sends exactly one
        statement and wakes nobody, so alone in a batch it runs as that statement's own
        transaction, outside pipeline mode (a run's step, the hot path). If the connection
        breaks meanwhile, it runs again on another when `rerunnable` (applying it twice
        records the same thing); otherwise its caller gets the error, the outcome unknown.
        `lock`: the (workflow, id) of the instance whose row the job locks; a batch runs
        such jobs in that order, after the others, so that two processes' batches, each
        one transaction, never wait for each other's locks in a cycle (PostgreSQL finds a
        deadlock only after deadlock_timeout, a second by default). `lone`: the job locks
        several instances' rows itself (a claim, renewals, a prune), so it commits in a batch
        of its own: held to the end of a shared batch, its locks would come before the
        others' in no order."""
        job = _Job(run, asyncio.get_running_loop().create_future(), durable, single, rerunnable, lock, lone)
        if self._closed:
            job.future.set_exception(_writer_stopped())
        else:
            self._queue.put_nowait(job)
        return job.future

    async def stop(self) -> None:
        """Finish every job queued so far, then end the task (at once if it ended already:
        the event loop may have cancelled it)."""
        if not self._closed:
            self._queue.put_nowait(None)
        await asyncio.wait([self._task])

    async def _main(self) -> None:
        try:
            await self._serve()
        finally:
            # Ended early, cancelled (the loop cancels every task when asyncio.run ends
            # abruptly): what is queued would wait for ever, and so would what comes after.
            self._closed = True
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if job is not None:
                    settle(job.future, None, _writer_stopped())
            await self._release()

    async def _serve(self) -> None:
        # Jobs are referred to from helpers' frames only: nothing of a batch answered (its
        # closures, results, futures) stays referenced here while the next one is awaited.
        retry: list[_Job] = []
        stopping = False
        while True:
            batch, retry = retry, []
            if not batch and not stopping:
                stopping = _add(batch, await self._queue.get())
            while not stopping and len(batch) < _MAX_BATCH and not self._queue.empty():
                stopping = _add(batch, self._queue.get_nowait())
            if not batch:
                return
            retry = await self._answer_apart(batch)

    async def _answer_apart(self, batch: list[_Job]) -> list[_Job]:
        """`_answer` the batch, its lone jobs each in a batch of its own."""
        retry: list[_Job] = []
        if len(batch) > 1 and any(job.lone for job in batch):
            for job in [job for job in batch if job.lone]:
                retry += await self._answer([job])
            batch = [job for job in batch if not job.lone]
        return retry + (await self._answer(batch) if batch else [])

    async def _answer(self, batch: list[_Job]) -> list[_Job]:
        """Commit the batch and answer its jobs; the jobs to try again in the next batch."""
        batch.sort(key=_lock_order)  # (stable: one instance's jobs keep the order they came in)
        try:
            outcomes, retry = await self._commit(batch)
        except BaseException as exc:
            stopped = _writer_stopped() if isinstance(exc, asyncio.CancelledError) else exc
            for job in batch:
                settle(job.future, None, stopped)
            if not isinstance(exc, Exception):
                raise
            return []
        for outcome in outcomes:
            settle(outcome.job.future, outcome.result, outcome.error)
        return retry

    async def _commit(self, batch: list[_Job]) -> tuple[list[_Outcome], list[_Job]]:
        """Run a batch whole (a lone one-statement job: that statement alone); if that fails,
        again in parts of at most _MAX_SAVEPOINTS jobs, each job in a savepoint (the parts'
        callers are answered as each part commits)."""
        if len(batch) == 1 and batch[0].single:
            return await self._on_a_connection(self._alone, batch)
        try:
            return await self._on_a_connection(self._pipelined, batch)
        except _Refused:
            pass
        retry: list[_Job] = []
        for start in range(0, len(batch), _MAX_SAVEPOINTS):
            outcomes, again = await self._on_a_connection(self._careful, batch[start : start + _MAX_SAVEPOINTS])
            for outcome in outcomes:
                settle(outcome.job.future, outcome.result, outcome.error)
            retry += again
        return [], retry

    async def _on_a_connection(
        self, run: Callable[[Connection, list[_Job]], Awaitable[tuple[list[_Outcome], list[_Job]]]], batch: list[_Job]
    ) -> tuple[list[_Outcome], list[_Job]]:
        """`run(conn, batch)`; once more on another connection if the first broke before COMMIT.

        The writer keeps its connection from batch to batch (taking one from the pool and
        giving it back costs about as much as a step's own work); a broken one goes back
        to the pool, which replaces it.
        """
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await run(conn, batch)
            except BaseException as exc:
                broken = conn.broken
                if broken or conn.info.transaction_status != TransactionStatus.IDLE:
                    await self._release()  # the pool rolls it back, or discards it
                if attempt == 2 or self._committing or not broken or not isinstance(exc, psycopg.OperationalError):
                    raise
            await self._pool.check()
        raise AssertionError("unreachable")

    async def _connection(self) -> Connection:
        """The connection kept from the last batch, or one from the pool, unless the server
        closed it meanwhile: a connection cut while idle says so on its socket (the server's
        farewell, or the end of the stream), and is replaced before anything is sent on it,
        so that no batch is lost with it."""
        for _ in range(_FRESH_TRIES):
            if self._conn is None:
                self._conn = await self._pool.getconn()
            if _quiet(self._conn):
                break
            await self._conn.close()
            await self._release()  # the pool discards it and opens another
        else:
            self._conn = await self._pool.getconn()
        return self._conn

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.putconn(conn)

    async def _pipelined(self, conn: Connection, batch: list[_Job]) -> tuple[list[_Outcome], list[_Job]]:
        """The whole batch in one transaction sent at once. If anything fails it is rolled
        back; a lone job then has its error, a batch raises _Refused to be run carefully.

        A batch of hundreds is milliseconds of Python on the event loop, so it lets other
        tasks run after each job it sends and each answer it reads: timers that fall due
        meanwhile then fire on time. (Every 16 jobs, 200 instances sleeping 1 s woke with
        a p50 lateness of 5.4 ms; after each job, 4.2 ms, and group commits ran as fast.)"""
        self._committing = False
        values = []
        failure: BaseException | None = None
        try:
            # Statements between two Syncs of a pipeline form one implicit transaction,
            # committed by the Sync sent when the block ends, rolled back if one fails.
            async with conn.pipeline():
                try:
                    if not any(job.durable for job in batch):
                        await conn.execute(_LAZY_COMMIT)
                    wakes = False
                    for job in batch:
                        tx = Tx(conn)
                        values.append(await job.run(tx))
                        wakes = wakes or tx.wakes
                        await asyncio.sleep(0)
                    if wakes:
                        await conn.execute(self._notify)
                except BaseException as exc:
                    # A job's own check refused (or we are cancelled): the Sync must not commit.
                    failure = exc
                    if not conn.broken:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute(_ABANDON)
                else:
                    # From here a broken connection leaves the outcome unknown: never run the batch again.
                    self._committing = True
        except Exception as exc:
            failure = failure or exc
        if failure is None:
            outcomes = []
            for job, value in zip(batch, values, strict=True):
                try:
                    outcomes.append(_Outcome(job, await _answer(value)))
                except Exception as exc:  # reading a Later's cursors should not fail; if it does, say so
                    outcomes.append(_Outcome(job, error=exc))
                await asyncio.sleep(0)
            return outcomes, []
        if conn.broken or not isinstance(failure, Exception):
            raise failure
        await _rollback(conn)
        if len(batch) > 1:
            raise _Refused from failure
        job = batch[0]
        job.tries += 1
        if _is_retryable(failure) and job.tries < _MAX_TRIES:
            return [], [job]
        return [_Outcome(job, error=failure)], []

    async def _alone(self, conn: Connection, batch: list[_Job]) -> tuple[list[_Outcome], list[_Job]]:
        """A one-statement job by itself: in autocommit mode the statement is its own transaction.

        If the connection breaks meanwhile, it runs again on another if it is rerunnable
        (a run's step record is an upsert fenced by the lease).
        """
        (job,) = batch
        self._committing = not job.rerunnable
        job.tries += 1
        try:
            tx = Tx(conn)
            value = await job.run(tx)
            assert not tx.wakes, "a single-statement job cannot send a wakeup"
            return [_Outcome(job, await _answer(value))], []
        except Exception as exc:
            if conn.broken:
                raise
            if _is_retryable(exc) and job.tries < _MAX_TRIES:
                return [], [job]
            return [_Outcome(job, error=exc)], []

    async def _careful(self, conn: Connection, batch: list[_Job]) -> tuple[list[_Outcome], list[_Job]]:
        """The batch once more, statement by statement, each job in a savepoint of its own."""
        outcomes: list[_Outcome] = []
        retry: list[_Job] = []
        wakes = False
        self._committing = False
        try:
            await conn.execute("BEGIN")
            if not any(job.durable for job in batch):
                await conn.execute(_LAZY_COMMIT)
            for job in batch:
                await conn.execute("SAVEPOINT job")
                tx = Tx(conn)
                job.tries += 1
                try:
                    result = await _answer(await job.run(tx))
                except Exception as exc:
                    if conn.broken:
                        raise
                    await conn.execute("ROLLBACK TO SAVEPOINT job")
                    if _is_retryable(exc) and job.tries < _MAX_TRIES:
                        retry.append(job)
                    else:
                        outcomes.append(_Outcome(job, error=exc))
                else:
                    await conn.execute("RELEASE SAVEPOINT job")
                    wakes = wakes or tx.wakes
                    outcomes.append(_Outcome(job, result))
            if wakes:
                await conn.execute(self._notify)
            self._committing = True
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return outcomes, retry


def _quiet(conn: Connection) -> bool:
    """Whether an idle connection is open and the server has sent nothing on it since."""
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the same job may well succeed next time."""
    return isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)


async def _rollback(conn: Connection) -> None:
    if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")


# -- notifications ------------------------------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Listener:
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
        # Notifications that come with the answer to a query (LISTEN, the liveness check).
        conn.add_notify_handler(lambda _notify: self._wake())
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
                if not await self._receive(self._conn, _LISTEN_CHECK):
                    await self._conn.execute("SELECT 1")  # silent that long: is it still there?
                continue
            except psycopg.Error as exc:
                _log.warning("stepstone: lost the LISTEN connection (%s); reconnecting", one_line(exc))
            await self._conn.close()
            self._conn = await self._reconnect()
            self._wake()  # notifications sent while disconnected are lost: look for work now

    async def _receive(self, conn: Connection, timeout: float) -> bool:
        """Wait until the server sends something, then call back if it was notifications;
        False if it sent nothing for `timeout` seconds.

        This waits on the socket itself: psycopg's `notifies()` also wakes every 0.1 s (so
        that a blocking wait may see Ctrl-C), which would keep an idle worker busy ten
        times a second for nothing.
        """
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _resolve, readable)
        try:
            await asyncio.wait([readable], timeout=timeout)
        finally:
            loop.remove_reader(fd)
        if not readable.done():
            return False
        conn.pgconn.consume_input()  # raises OperationalError if the connection dropped
        notified = False
        while conn.pgconn.notifies() is not None:
            notified = True
        if notified:
            self._wake()
        return True

    async def _reconnect(self) -> Connection:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._connect()
            except psycopg.Error as exc:
                _log.warning("stepstone: cannot LISTEN yet (%s)", one_line(exc))
                delay = min(delay * 2, 10.0)

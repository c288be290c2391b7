"""The SQLite store's connection threads: one connection each, run in order; the writer's
group commit; a lone write run on the event loop's thread.

A store keeps two: a writer, which groups the writes that queue up meanwhile into one
transaction (group commit: one fsync for many steps), and a reader. Writes take the
database's write lock with BEGIN IMMEDIATE, so two processes never claim the same row.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stepstone.store.base import settle

T = TypeVar("T")

_MAX_BATCH = 512
"""Jobs per group commit."""


class _Job:
    __slots__ = ("durable", "fn", "future", "loop", "solo")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        durable: bool,
        solo: Callable[[sqlite3.Connection], Any] | None,
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.durable = durable
        self.solo = solo
        self.future: asyncio.Future[Any] = loop.create_future()


Outcome = tuple[_Job, Any, BaseException | None]


def _settle_all(outcomes: list[Outcome]) -> None:
    for job, result, error in outcomes:
        settle(job.future, result, error)


def _answer(outcomes: list[Outcome]) -> None:
    """Settle the jobs' futures: one wakeup of each event loop for all of them."""
    loops: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        loops.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in loops.items():
        loop.call_soon_threadsafe(_settle_all, settled)


_BUSY_SECONDS = 60.0
"""How long a connection waits for another process's lock before giving up."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds ("database is locked")."""
    return "locked" in str(exc) or "busy" in str(exc)


def _use_wal(conn: sqlite3.Connection, path: str) -> None:
    """Put the file in WAL mode (a lasting property of the file), tolerating other processes
    opening it at the same moment.

    Converting the journal needs the file to itself, and SQLite answers "database is locked"
    at once, without its busy handler, when another connection is busy with it. So the mode
    is read first: once the file is in WAL mode, as it is after its first open, there is
    nothing to convert and no lock to take. A conversion refused for a lock is tried again
    with a growing pause, within the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    pause = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(
                f"SQLite refused WAL mode for {path!r} (journal mode stays {mode!r}); "
                "the file must be on a local file system that supports shared memory"
            )
        return


def _begin(conn: sqlite3.Connection, *, wait: bool) -> bool:
    """BEGIN IMMEDIATE: take the file's write lock, waiting (with a growing pause, up to the
    busy timeout) while another process holds it; without `wait`, False if it is held."""
    deadline = time.monotonic() + _BUSY_SECONDS
    pause = 0.0005
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if not wait:
                return False
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _alone(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether nothing else is ready to run in this turn of the loop: then no other write can
    join one submitted now, and it may run at once. (asyncio's loops keep their ready
    callbacks in `_ready`; a loop without it is never deemed alone.)"""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _data_version(conn: sqlite3.Connection) -> int:
    conn.execute("BEGIN IMMEDIATE")  # the writer's busy timeout is 0: refused at once if taken
    try:
        # Moves with every commit but this connection's own: sqlite.org/pragma.html#pragma_data_version
        version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    finally:
        conn.execute("ROLLBACK")
    return version


class ConnectionThread:
    """A thread owning one connection; runs submitted functions against it in order.

    A writing thread wraps what is queued into one BEGIN IMMEDIATE ... COMMIT, each
    job in its own savepoint, so one job's error undoes only that job. Jobs submitted
    in one turn of the event loop reach the thread together (one handover, not one
    each), and each batch is answered with one wakeup of the loop. The thread serves
    one event loop at a time.

    A lone write, when the writing thread is idle and no other process holds the file's
    write lock, runs on the event loop's thread instead: handing it over and back costs
    two thread switches and a wakeup of the loop, more than the commit itself. If nothing
    else is ready to run on the loop (no other write can join it in this turn), it runs
    in `submit` itself, and its caller's `await` does not even yield. That is the
    sequential case (one instance, step after step). A lone write that can be said in
    one statement (a job's `solo`: a new step, the end of a run, a create) is then that
    statement alone, committed by itself, as a bare INSERT is. Writes that come several
    to a turn, as under load, still go to the thread and share commits.
    """

    def __init__(self, path: str, synchronous: str, *, writer: bool, name: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._writer = writer
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] | None = None
        """Jobs submitted in this turn of the event loop, handed over at its end."""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._using = threading.Lock()
        """Held while the connection runs a batch, by the thread or by the loop (lone writes, read_here)."""
        self._data_version: int | None = None
        """The connection's data_version at the last `others_committed`."""

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        solo: Callable[[sqlite3.Connection], T | None] | None = None,
    ) -> asyncio.Future[T]:
        """Run `fn` in a transaction of its own or shared with other jobs. `solo`, if given,
        is the same write as one statement, committed by itself (autocommit): used when
        the job runs alone on the loop's thread, unless it answers None (the statement
        changed nothing, say for a case it does not cover), when `fn` runs as usual."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, durable, solo)
        if self._pending is not None:
            self._pending.append(job)
        elif self._writer and _alone(loop) and self._run_here(job):
            pass  # done: the future is settled, so awaiting it does not even yield
        else:
            self._pending = [job]
            loop.call_soon(self._hand_over)
        return job.future

    def _hand_over(self) -> None:
        if self._pending is not None:
            jobs, self._pending = self._pending, None
            if not (self._writer and len(jobs) == 1 and self._run_here(jobs[0])):
                self._jobs.put(jobs)

    def _run_here(self, job: _Job) -> bool:
        """Run a lone write on this thread if the writer is idle and the file's write lock
        free; False (nothing done) otherwise. Never waits for another process's lock."""
        if not self._using.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None or not self._jobs.empty():
                return False
            if job.solo is not None and job.durable:
                done = self._run_solo(conn, job)
                if done is not None:
                    settle(job.future, done, None)
                    return True
            outcomes = self._run_batch(conn, [job], self._synchronous, wait=False)
        finally:
            self._using.release()
        if outcomes is None:
            return False
        _settle_all(outcomes)
        return True

    def read_here(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run the read `fn` with this connection on the caller's thread, at once, if the
        connection is idle: (True, what it returned); (False, None), nothing done, if not.
        A read of a few rows costs less than handing it to a thread and back (under load,
        that thread may wait a switch interval for the GIL)."""
        if not self._using.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None or not self._jobs.empty() or conn.in_transaction:
                return False, None
            try:
                return True, fn(conn)
            except sqlite3.Error:
                return False, None  # (a lock another process holds: the thread waits for it, or reports)
        finally:
            self._using.release()

    def others_committed(self) -> bool | None:
        """Whether another connection committed to the file since the last call; None if it
        cannot tell yet: this connection is busy, or another holds the write lock (it may be
        in the middle of a commit). Runs on the caller's thread, at once."""
        done, version = self.read_here(_data_version)
        if not done:
            return None
        changed = version != self._data_version
        self._data_version = version
        return changed

    def _connect(self) -> sqlite3.Connection:
        # The writer waits for another process's lock itself (_begin), so that a lone write
        # run on the event loop's thread can give up at once instead.
        timeout = 0.0 if self._writer else _BUSY_SECONDS
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=timeout)
        try:
            _use_wal(conn, self._path)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._conn = conn
        self._ready.set()
        try:
            # Jobs are referred to from helpers' frames only: nothing of a batch answered (its
            # closures, results, futures) stays referenced here while the next one is awaited.
            while self._serve(conn, self._jobs.get()):
                pass
        finally:
            with self._using:
                self._conn = None
                conn.close()

    def _serve(self, conn: sqlite3.Connection, jobs: list[_Job] | None) -> bool:
        """Run jobs taken from the queue (a writer: with whatever else is queued, in one
        transaction) and answer them; False once told to stop."""
        if jobs is None:
            return False
        if not self._writer:
            with self._using:  # (read_here uses the connection too)
                answers = [self._run_read(conn, job) for job in jobs]
            _answer(answers)
            return True
        batch = list(jobs)
        go_on = True
        while len(batch) < _MAX_BATCH:
            try:
                more = self._jobs.get_nowait()
            except queue.Empty:
                break
            if more is None:
                go_on = False
                break
            batch += more
        with self._using:
            outcomes = self._run_batch(conn, batch, self._synchronous)
        assert outcomes is not None  # (None only when told not to wait)
        _answer(outcomes)
        return go_on

    @staticmethod
    def _run_solo(conn: sqlite3.Connection, job: _Job) -> Any:
        """The job's one statement, in autocommit (the statement is its own transaction, so
        the BEGIN IMMEDIATE, COMMIT and the read of the fence are folded into it); None if
        it changed nothing or failed (another process holds the write lock, a constraint):
        then the job runs as a transaction, which reports what is wrong."""
        assert job.solo is not None and not conn.in_transaction
        try:
            return job.solo(conn)
        except sqlite3.Error:
            return None

    @staticmethod
    def _run_read(conn: sqlite3.Connection, job: _Job) -> Outcome:
        try:
            conn.execute("BEGIN")
            try:
                return job, job.fn(conn), None
            finally:
                conn.execute("COMMIT")
        except BaseException as exc:
            return job, None, exc

    @staticmethod
    def _run_batch(
        conn: sqlite3.Connection, batch: list[_Job], synchronous: str, *, wait: bool = True
    ) -> list[Outcome] | None:
        """The batch in one transaction; None (nothing done) if `wait` is False and another
        connection holds the write lock."""
        outcomes: list[Outcome] = []
        # A batch of writes whose loss is harmless (claims) commits without waiting for the
        # disk; the next durable commit syncs the write-ahead log, so it lands with that.
        lazy = not any(job.durable for job in batch) and synchronous != "NORMAL"
        if lazy:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            if not _begin(conn, wait=wait):
                return None
            if len(batch) == 1:  # alone in its transaction: no savepoint needed
                job = batch[0]
                try:
                    outcomes.append((job, job.fn(conn), None))
                except BaseException as exc:
                    conn.execute("ROLLBACK")
                    outcomes.append((job, None, exc))
            else:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    try:
                        outcomes.append((job, job.fn(conn), None))
                    except BaseException as exc:
                        conn.execute("ROLLBACK TO job")
                        outcomes.append((job, None, exc))
                    conn.execute("RELEASE job")
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(job, None, exc) for job in batch]
        finally:
            if lazy:
                conn.execute(f"PRAGMA synchronous={synchronous}")
        return outcomes

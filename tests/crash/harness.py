"""Real worker processes on one store, started, SIGKILLed and replaced by a test; their journal.

Workers are `python tests/crash/worker_main.py URL` subprocesses. Whatever a test does,
`Cluster.close` SIGKILLs every worker still running (and each worker is told to die
with the test process, should that be killed first). A test may also stop a worker
gracefully (SIGTERM) or freeze it (SIGSTOP) and let it go on later (SIGCONT).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg

from stepstone import Engine, Instance, InstanceDetail
from stepstone.store.sqlite import path_from_url

WORKER_MAIN = Path(__file__).with_name("worker_main.py")
JOURNAL_ENV = "STEPSTONE_CRASH_JOURNAL"  # as in app.py, which runs in the workers only
RETURNED_SUFFIX = ".returned"  # as in app.py
STARTUP_TIMEOUT = 20.0
CLOCK_SLACK = 0.001
"""Seconds of rounding allowed between the journal's times and the store's (datetime: microseconds)."""
FREEZE_TRIES = 20
QUIET_WAIT = 0.5
"""Seconds a transaction open when a worker was frozen is given to end (another process's)."""

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy (returned); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def pass_time_until(moment: float) -> None:
    """Let the wall clock reach `moment` (epoch seconds): for timers to fall due, not to synchronise."""
    await asyncio.sleep(max(0.0, moment - time.time()))


@dataclass(frozen=True)
class JournalLine:
    """One execution of a step body, as tests/crash/app.py journals it."""

    instance: str
    step: str
    attempt: int
    pid: int
    time: float


def read_journal(path: Path) -> list[JournalLine]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        instance, step, attempt, pid, at = text.split(",")
        lines.append(JournalLine(instance, step, int(attempt), int(pid), float(at)))
    return lines


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], name: str, stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.name = name
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"<worker {self.name} pid={self.pid} returncode={self.proc.poll()}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def frozen(self) -> bool:
        """Whether the process is stopped by a signal (SIGSTOP), per /proc (Linux)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] in ("T", "t")


class Cluster:
    """Worker processes serving tests/crash/app.py on `url`, and a client engine for the test."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory
        self.journal_path = directory / "journal.txt"
        self.workers: list[WorkerProcess] = []
        self.killed: set[int] = set()
        """Pids of the workers that died by SIGKILL (from the test or by their own hand)."""
        self.kill_times: dict[int, float] = {}
        """When the test SIGKILLed each worker it killed (epoch seconds), by pid."""
        self.stopped: set[int] = set()
        """Pids of the workers asked to stop gracefully (SIGTERM)."""
        self._client: Engine | None = None

    async def start_worker(
        self, *, lease_seconds: float = 30.0, host: str | None = None, cli: bool = False, create: int = 0
    ) -> WorkerProcess:
        """Start a worker and return once it is serving (its workflows are recorded in the store).

        A worker claims instances as it starts, so it may die by a step's own SIGKILL
        (app.Suicide) before it is ready: it is then returned dead, counted as killed.
        `cli`: the worker is the `stepstone worker` command (worker_main.py --cli).
        `create`: the worker creates that many crash-multistep instances (own-0, ...) itself
        once started, so they start there leased to it from their creation.
        """
        name = f"w{len(self.workers)}"
        stdout, stderr = self.directory / f"{name}.out", self.directory / f"{name}.err"
        command = [sys.executable, str(WORKER_MAIN), self.url, "--lease-seconds", str(lease_seconds)]
        command += ["--parent", str(os.getpid())]
        if host is not None:
            command += ["--host", host]
        if cli:
            command.append("--cli")
        if create:
            command += ["--create", str(create)]
        env = {**os.environ, JOURNAL_ENV: str(self.journal_path)}
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=self.directory)
        worker = WorkerProcess(proc, name, stdout, stderr)
        self.workers.append(worker)

        async def ready() -> bool:
            if b"ready" in stdout.read_bytes() or b"stepstone worker ready" in stderr.read_bytes():
                return True
            if not worker.alive():
                self.reap_dead()
                return True
            return False

        await eventually(ready, timeout=STARTUP_TIMEOUT, what=f"{worker} to be ready")
        return worker

    def kill(self, worker: WorkerProcess) -> float:
        """SIGKILL a worker and reap it; returns when the signal was sent (epoch seconds)."""
        killed_at = time.time()
        worker.proc.send_signal(signal.SIGKILL)  # a no-op if it has just killed itself
        worker.proc.wait()
        assert worker.proc.returncode == -signal.SIGKILL, f"{worker} died otherwise:\n{worker.log()}"
        self.killed.add(worker.pid)
        self.kill_times[worker.pid] = killed_at
        return killed_at

    def terminate(self, worker: WorkerProcess) -> float:
        """Ask a worker to stop gracefully (SIGTERM); returns when the signal was sent (epoch seconds)."""
        self.stopped.add(worker.pid)
        sent_at = time.time()
        worker.proc.send_signal(signal.SIGTERM)
        return sent_at

    async def freeze(self, worker: WorkerProcess) -> None:
        """SIGSTOP a worker, as a long GC pause or a network partition would stop it.

        It is frozen at a moment it holds no database transaction open (else it
        is let go on a moment and frozen again), so that what stands in the other
        workers' way is its leases, not a lock that only its death would release.
        """

        async def frozen() -> bool:
            return worker.frozen()

        for _ in range(FREEZE_TRIES):
            worker.proc.send_signal(signal.SIGSTOP)
            await eventually(frozen, timeout=STARTUP_TIMEOUT, what=f"{worker} to stop")
            if await self._no_transaction_older_than(time.time()):
                return
            worker.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(random.uniform(0.01, 0.1))
        raise AssertionError(f"{worker} held a transaction open each time it was frozen")

    def thaw(self, worker: WorkerProcess) -> None:
        """Let a frozen worker go on (SIGCONT)."""
        worker.proc.send_signal(signal.SIGCONT)

    async def _no_transaction_older_than(self, moment: float) -> bool:
        """Whether the store has no transaction open since before `moment` (epoch seconds),
        after giving those of live processes `QUIET_WAIT` seconds to end."""
        if self.url.startswith("sqlite:"):
            return await asyncio.to_thread(_sqlite_write_lock_free, path_from_url(self.url), QUIET_WAIT)
        deadline = time.monotonic() + QUIET_WAIT
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            while True:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND xact_start < to_timestamp(%s)",
                    (moment,),
                )
                row = await cursor.fetchone()
                if row is not None and row[0] == 0:
                    return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.02)

    async def died(self, worker: WorkerProcess, *, timeout: float) -> None:
        """Wait for a worker to kill itself (SIGKILL)."""

        async def gone() -> bool:
            return not worker.alive()

        await eventually(gone, timeout=timeout, what=f"{worker} to die")
        assert worker.proc.returncode == -signal.SIGKILL, f"{worker} died otherwise:\n{worker.log()}"
        self.killed.add(worker.pid)

    def reap_dead(self) -> list[WorkerProcess]:
        """The workers found dead since last asked (they must have died by SIGKILL, unless
        they were asked to stop)."""
        dead = [w for w in self.workers if w.pid not in self.killed | self.stopped and not w.alive()]
        for worker in dead:
            assert worker.proc.returncode == -signal.SIGKILL, f"{worker} died otherwise:\n{worker.log()}"
            self.killed.add(worker.pid)
        return dead

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    async def client(self) -> Engine:
        """An `Engine(url, worker=False)`; start a worker first, so the workflow names are recorded."""
        if self._client is None:
            client = Engine(self.url, worker=False)
            await client.start()
            self._client = client
        return self._client

    def journal(self) -> list[JournalLine]:
        return read_journal(self.journal_path)

    def runs(self, instance: str, step: str) -> list[JournalLine]:
        """The executions of one step body, in the order they started."""
        return [line for line in self.journal() if line.instance == instance and line.step == step]

    def returns(self, instance: str, step: str) -> list[JournalLine]:
        """The returns of one step body that notes them (app.journal_return), in order."""
        path = self.journal_path.with_name(self.journal_path.name + RETURNED_SUFFIX)
        return [line for line in read_journal(path) if line.instance == instance and line.step == step]

    def assert_no_errors(self) -> None:
        """No worker logged an error (a failed run, a failed claim or heartbeat)."""
        for worker in self.workers:
            log = worker.log()
            assert " ERROR " not in log and "Traceback" not in log, f"{worker} logged errors:\n{log}"

    async def close(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            for worker in self.workers:
                if worker.alive():
                    worker.proc.send_signal(signal.SIGKILL)
                worker.proc.wait()


def _sqlite_write_lock_free(path: str, wait: float) -> bool:
    """Whether the write lock of the SQLite database at `path` can be had within `wait` seconds."""
    conn = sqlite3.connect(path, timeout=wait, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    finally:
        conn.close()


async def assert_consistent(inst: Instance, journal: list[JournalLine], killed: set[int]) -> InstanceDetail:
    """The instance is complete, each step recorded once, and no step body ran needlessly.

    For each `do` step: its attempts are numbered 1..n, all failed but the last; each
    recorded attempt's body ran, last in the process and time span the store recorded
    for it and never after; it ran more than once only because the workers running it
    before were killed (at most once per killed worker); and no body ran for a step or
    attempt the store does not hold.
    """
    detail = await inst.describe()
    assert detail.status == "complete", f"{inst}: {detail.status} {detail.error}"
    mine = [line for line in journal if line.instance == inst.id]
    steps = [s for s in detail.steps if s.kind == "do"]
    assert len({(s.name, s.count) for s in steps}) == len(steps), f"{inst}: a step is recorded twice: {steps}"
    recorded = {s.name: s for s in steps}
    assert {line.step for line in mine} <= set(recorded), f"{inst}: a body ran for a step never recorded: {mine}"
    for step in steps:
        where = f"{inst} step {step.name!r}"
        assert step.status == "complete" and step.count == 1, f"{where}: {step}"
        numbers = [a.attempt for a in step.attempts]
        assert numbers == list(range(1, len(numbers) + 1)) and numbers, f"{where}: attempts {step.attempts}"
        outcomes = [a.outcome for a in step.attempts]
        assert outcomes == ["error"] * (len(numbers) - 1) + ["ok"], f"{where}: outcomes {outcomes}"
        bodies = [line for line in mine if line.step == step.name]
        assert max(line.attempt for line in bodies) == len(numbers), f"{where}: ran unrecorded attempts: {bodies}"
        for attempt in step.attempts:
            runs = sorted((line for line in bodies if line.attempt == attempt.attempt), key=lambda line: line.time)
            assert runs, f"{where}: attempt {attempt.attempt} is recorded but its body never ran"
            last = runs[-1]
            began, ended = attempt.started.timestamp() - CLOCK_SLACK, attempt.ended.timestamp() + CLOCK_SLACK
            assert began <= last.time <= ended, f"{where}: recorded attempt {attempt} is not the last run {last}"
            repeats = runs[:-1]
            assert all(line.pid in killed for line in repeats), f"{where}: ran again though no worker died: {runs}"
            assert len({line.pid for line in runs}) == len(runs), f"{where}: one worker ran it twice: {runs}"
    return detail

"""What only the SQLite store does: claims commit without waiting for the disk; many
processes may open one file at once; a lone write runs on the event loop's thread; steps are
kept by (instance, seq), and migration 2 moved what version 1 recorded."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stepstone.errors import InstanceExistsError, LeaseLostError, StepstoneError
from stepstone.store import migrations
from stepstone.store.base import RunWrite, StepKey, StepWrite
from stepstone.store.sqlite import SqliteStore
from stepstone.store.sqlite_connection import _use_wal

from .support import LEASE, T0, WF, Wakeups, claim, create, end, start


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_a_batch_of_claims_alone_commits_lazily_and_durable_writes_stay_synced(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'lazy.db'}")
    await store.open()
    try:
        assert await store._write(synchronous, durable=False) == 1  # NORMAL: no fsync at its commit
        assert await store._write(synchronous) == 2  # FULL again for what must be durable
        await create(store, "a")
        claims = (await store.claim("w1", [WF], 10, T0, T0 + LEASE)).claims
        assert [c.id for c in claims] == ["a"]
        assert await store._write(synchronous) == 2
    finally:
        await store.close()


async def test_a_store_set_to_normal_stays_normal(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'normal.db'}", synchronous="NORMAL")
    await store.open()
    try:
        assert await store._write(synchronous, durable=False) == 1
        assert await store._write(synchronous) == 1
    finally:
        await store.close()


async def test_leases_are_read_at_once_on_the_loop_while_a_connection_is_idle(tmp_path: Path) -> None:
    # (A run reads its lease when a timer it held fires: at once, without a turn of the loop.)
    store = SqliteStore(f"sqlite:///{tmp_path / 'leases.db'}")
    await store.open()
    try:
        leased = await start(store, "x")
        assert store.leases_at_once([leased.pk]) == {leased.pk: (leased.token, "running")}
        other = sqlite3.connect(str(tmp_path / "leases.db"), isolation_level=None)
        try:
            other.execute("UPDATE instances SET lease_token = lease_token + 1")  # another process's commit
        finally:
            other.close()
        assert store.leases_at_once([leased.pk]) == {leased.pk: (leased.token + 1, "running")}
    finally:
        await store.close()
    assert store.leases_at_once([1]) is None  # (closed)


def test_a_file_already_in_wal_mode_is_not_converted_again(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.db")
    first = sqlite3.connect(path)
    _use_wal(first, path)
    first.execute("CREATE TABLE t (x)")
    first.commit()
    seen: list[str] = []
    second = sqlite3.connect(path)
    second.set_trace_callback(seen.append)
    try:
        _use_wal(second, path)  # converting takes the file to itself: not done when not needed
    finally:
        first.close()
        second.close()
    assert seen == ["PRAGMA journal_mode"]


OPEN_AND_WRITE = """
import asyncio, sys
from stepstone.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore("sqlite:///" + sys.argv[1])
    await store.open()
    await store._write(lambda conn: conn.execute("SELECT count(*) FROM instances").fetchone())
    await store.close()

asyncio.run(main())
"""


async def test_many_processes_open_one_new_file_at_once(tmp_path: Path) -> None:
    """Workers started together on a new file all open it: none is refused while another
    converts the journal or migrates."""
    path = tmp_path / "together.db"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_AND_WRITE, str(path), stderr=subprocess.PIPE
        )
        for _ in range(12)
    ]
    results = [(await p.wait(), (await p.stderr.read()).decode() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0] * len(procs), [err for _, err in results if err]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_a_lone_write_runs_on_the_event_loop_thread_and_writes_together_on_the_writer(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'inline.db'}")
    await store.open()
    try:
        here = threading.get_ident()

        async def where_written() -> int:
            return await store._write(lambda conn: threading.get_ident())

        alone = store._write(lambda conn: threading.get_ident())
        assert alone.done() and alone.result() == here  # done at once: awaiting it does not yield
        assert await where_written() == here
        together = await asyncio.gather(*(where_written() for _ in range(3)))  # three tasks, one turn
        assert len(set(together)) == 1 and together[0] != here
    finally:
        await store.close()


class Marker:
    """An object a job refers to, to tell when nothing refers to the job any more."""


async def test_the_writer_thread_keeps_nothing_of_a_batch_it_answered(tmp_path: Path) -> None:
    # While it waits for the next batch, the thread must not hold the last one (its jobs'
    # closures, what they returned): a run's write would outlive the run, and the cycle
    # collector's oldest generation would fill with them.
    store = SqliteStore(f"sqlite:///{tmp_path / 'kept.db'}")
    await store.open()
    try:
        markers = [Marker() for _ in range(3)]
        refs = [weakref.ref(marker) for marker in markers]

        def job(marker: Marker) -> Callable[[sqlite3.Connection], Marker]:
            return lambda conn: marker

        asyncio.get_running_loop().call_soon(lambda: None)  # not alone in this turn: the jobs go to the thread
        futures = [store._write(job(marker)) for marker in markers]
        assert [await future for future in futures] == markers
        del markers, futures
        await asyncio.sleep(0)  # (the loop's handle that woke this task refers to the last future)
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        await store.close()


async def test_a_write_waiting_for_another_process_lock_leaves_the_event_loop_free(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        write = asyncio.ensure_future(create(store, "a"))
        turns = 0
        for _ in range(20):  # the loop keeps running other tasks meanwhile
            await asyncio.sleep(0.005)
            turns += 1
        assert turns == 20 and not write.done()
        other.execute("COMMIT")
        (created,) = await write
        assert created.id == "a"
    finally:
        other.close()
        await store.close()


async def test_an_idle_claim_reads_nothing_until_something_is_committed(tmp_path: Path) -> None:
    # A worker on SQLite polls; a poll that finds nothing new should not wake the reader thread.
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    store, other = SqliteStore(url), SqliteStore(url)
    await store.open()
    await other.open()
    try:
        sleeper = await start(store, "sleeper")
        await end(store, sleeper, "waiting", wake_at=T0 + 100)
        looks = 0
        read = store._read

        def counted(fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
            nonlocal looks
            looks += 1
            return read(fn)

        store._read = counted  # type: ignore[method-assign]
        assert await claim(store, now=T0 + 10) == []
        assert await claim(store, now=T0 + 20) == []
        assert looks == 1  # nothing committed since the first look
        (woken,) = await claim(store, now=T0 + 100)  # the timer it saw fell due meanwhile
        assert woken.id == "sleeper" and looks == 1
        assert await claim(store, now=T0 + 101) == []  # its own claim was a commit: it looks again
        assert await claim(store, now=T0 + 102) == []
        assert looks == 2
        await create(other, "new")  # a commit by another connection, as by another process
        (new,) = await claim(store, now=T0 + 103)
        assert new.id == "new" and looks == 3
        await create(other, "told")
        told = await store.claim("w1", [WF], 10, T0 + 104, T0 + 104 + LEASE, expect_work=True)
        assert [c.id for c in told.claims] == ["told"] and looks == 3  # told of work: no look first
    finally:
        await other.close()
        await store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="writes to the log are watched with Linux's inotify")
async def test_a_commit_by_another_connection_wakes_the_subscriber_and_its_own_do_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'watched.db'}"
    store, other = SqliteStore(url), SqliteStore(url)
    await store.open()
    await other.open()
    try:
        wakeups = Wakeups()
        await store.subscribe_wakeups(wakeups)
        assert store.wakeup_poll == 30.0  # polls are only a safety net now
        await create(store, "mine")
        await asyncio.sleep(0.5)  # ample time for a wrong wakeup
        assert wakeups.count == 0  # its own commits: this process knows of them already
        await create(other, "theirs")
        assert await wakeups.arrive()
        await store.close()  # stops watching
        await create(other, "later")
        await asyncio.sleep(0.5)
        assert wakeups.count == 1
    finally:
        await other.close()
        await store.close()


async def test_a_run_that_stops_to_wait_for_an_event_already_kept_wakes_the_workers(tmp_path: Path) -> None:
    # The event came while the run was stopping: the instance is due at once, and this
    # process's worker must hear of it although the write is its own (as LISTEN would).
    store = SqliteStore(f"sqlite:///{tmp_path / 'kept.db'}")
    await store.open()
    try:
        wakeups = Wakeups()
        await store.subscribe_wakeups(wakeups)
        leased = await start(store, "waiter")
        await store.send_event(WF, "waiter", "go", "1", T0)
        assert await end(store, leased, "waiting", wake_at=T0 + 3600, wait_types=("go",)) == "waiting"
        assert (await store.get_instance(WF, "waiter")).wake_at == T0 + 1  # due now
        assert wakeups.count >= 1
    finally:
        await store.close()


async def test_a_version_1_database_keeps_its_steps_attempts_and_events_through_migration_2(tmp_path: Path) -> None:
    """Version 2 stores an instance's steps together, keyed by (instance, seq): what version 1
    recorded survives the move, and the instance goes on from where it was."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    first = migrations.load("sqlite")[0]
    assert first.version == 1
    for statement in first.sql.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for pk, name in ((1, "a"), (2, "b")):
        conn.execute(
            "INSERT INTO instances (pk, workflow, id, status, params, created_at, updated_at) "
            "VALUES (?, ?, ?, 'queued', '{}', ?, ?)",
            (pk, WF, name, T0, T0),
        )
    # Global seqs, interleaved between the two instances, as version 1 gave them.
    for seq, pk, kind, step, status in (
        (1, 1, "do", "first", "complete"),
        (2, 2, "do", "other", "complete"),
        (3, 1, "do", "flaky", "complete"),
        (4, 1, "wait_for_event", "approval", "complete"),
        (5, 1, "sleep", "nap", "waiting"),
    ):
        conn.execute(
            "INSERT INTO steps (seq, instance_pk, kind, name, count, status, result, attempts, started_at) "
            "VALUES (?, ?, ?, ?, 1, ?, '1', 1, ?)",
            (seq, pk, kind, step, status, T0 + seq),
        )
    conn.execute("INSERT INTO attempts VALUES (3, 1, ?, ?, 'error', 'ValueError', 'boom')", (T0, T0 + 1))
    conn.execute("INSERT INTO attempts VALUES (3, 2, ?, ?, 'ok', NULL, NULL)", (T0 + 2, T0 + 3))
    conn.execute(
        "INSERT INTO events (seq, instance_pk, type, payload, sent_at, consumed_by) VALUES (7, 1, 'ok', '1', ?, 4)",
        (T0,),
    )
    conn.execute("INSERT INTO events (seq, instance_pk, type, payload, sent_at) VALUES (8, 1, 'ok', '2', ?)", (T0,))
    conn.close()

    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        history = await store.history(1)
        assert [(s.key.name, s.seq) for s in history] == [("first", 1), ("flaky", 3), ("approval", 4), ("nap", 5)]
        assert [a.outcome for a in history[1].attempt_log] == ["error", "ok"]
        assert {s.branch for s in history} == {None}  # (version 3): recorded before it, found as then
        assert [(s.key.name, s.seq) for s in await store.history(2)] == [("other", 2)]
        events = await store.events(1)
        assert [(e.seq, e.consumed_by) for e in events] == [(7, StepKey("wait_for_event", "approval", 1)), (8, None)]
        assert await store.send_event(WF, "a", "ok", "3", T0) == 9  # event numbers go on

        (claim,) = (await store.claim("w1", [WF], 1, T0 + 10, T0 + 10 + LEASE)).claims
        assert claim.id == "a"
        later = StepWrite(StepKey("do", "later", 1), "complete", T0 + 11, "2", attempts=1, ended_at=T0 + 11)
        await store.write(RunWrite(claim.pk, claim.token, T0 + 11, steps=[later]))  # no seq given: found by key
        assert [(s.key.name, s.seq) for s in await store.history(1)][-1] == ("later", 6)

        await store.control(WF, "a", "restart", T0 + 12, from_step=StepKey("wait_for_event", "approval", 1))
        assert [s.key.name for s in await store.history(1)] == ["first", "flaky"]
        assert [e.seq for e in await store.events(1)] == [8, 9]  # the event that step took went with it
        await store.delete(WF, "a")
        check = sqlite3.connect(path)
        try:
            assert check.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
            assert check.execute("SELECT count(*) FROM steps").fetchone() == (1,)
            assert check.execute("PRAGMA foreign_key_check").fetchall() == []
            latest = migrations.load("sqlite")[-1].version
            assert check.execute("SELECT max(version) FROM schema_version").fetchone() == (latest,)
        finally:
            check.close()
    finally:
        await store.close()


async def test_a_step_given_the_seq_of_another_step_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'seq.db'}")
    await store.open()
    try:
        await create(store, "a")
        (claim,) = (await store.claim("w1", [WF], 1, T0, T0 + LEASE)).claims
        one = StepWrite(StepKey("do", "one", 1), "complete", T0, "1", attempts=1, ended_at=T0, seq=1)
        await store.write(RunWrite(claim.pk, claim.token, T0, steps=[one]))
        two = StepWrite(StepKey("do", "two", 1), "complete", T0, "2", attempts=1, ended_at=T0, seq=1)
        with pytest.raises(StepstoneError, match="seq 1"):
            await store.write(RunWrite(claim.pk, claim.token, T0, steps=[two]))
        assert [(s.key.name, s.result_json) for s in await store.history(claim.pk)] == [("one", "1")]
    finally:
        await store.close()


async def test_a_new_step_the_end_of_a_run_and_a_create_alone_are_one_statement_each(tmp_path: Path) -> None:
    """The writes every instance makes commit as one fenced statement when alone; what that
    statement does not cover (a pause asked meanwhile, a lost lease, an existing id) goes
    the long way, in a transaction, and is reported as before."""
    store = SqliteStore(f"sqlite:///{tmp_path / 'solo.db'}")
    await store.open()
    assert store._writer is not None and store._writer._conn is not None
    seen: list[str] = []
    store._writer._conn.set_trace_callback(seen.append)
    try:
        for name in ("a", "b"):
            await create(store, name)
        assert not any(s.startswith("BEGIN") for s in seen), seen
        claims = {c.id: c for c in (await store.claim("w1", [WF], 2, T0, T0 + LEASE)).claims}

        def step(name: str, seq: int) -> StepWrite:
            return StepWrite(StepKey("do", name, 1), "complete", T0, "1", attempts=1, ended_at=T0, seq=seq)

        seen.clear()
        a_claim = claims["a"]
        assert await store.write(RunWrite(a_claim.pk, a_claim.token, T0, steps=[step("one", 1)])) == "running"
        assert await store.write(RunWrite(a_claim.pk, a_claim.token, T0, end="complete", output_json="7")) == "complete"
        assert len(seen) == 2 and not any(s.startswith("BEGIN") for s in seen), seen
        assert (await store.get_instance(WF, "a")).status == "complete"
        assert [s.key.name for s in await store.history(a_claim.pk)] == ["one"]

        b_claim = claims["b"]
        await store.control(WF, "b", "pause", T0)  # asked while a step runs: waitingForPause
        assert await store.write(RunWrite(b_claim.pk, b_claim.token, T0, steps=[step("one", 1)])) == "waitingForPause"
        assert await store.write(RunWrite(b_claim.pk, b_claim.token, T0, end="complete", output_json="7")) == "complete"
        with pytest.raises(LeaseLostError):  # the run ended: its lease is gone
            await store.write(RunWrite(b_claim.pk, b_claim.token, T0, steps=[step("two", 2)]))
        assert [s.key.name for s in await store.history(b_claim.pk)] == ["one"]
        with pytest.raises(InstanceExistsError, match="'a'"):
            await create(store, "a")
    finally:
        await store.close()

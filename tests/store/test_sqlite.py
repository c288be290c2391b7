"""What only the SQLite store does: claims commit without waiting for the disk; many
processes may open one file at once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from stepstone.store.sqlite import SqliteStore, _use_wal

from .support import LEASE, T0, WF, create


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

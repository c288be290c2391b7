"""What only the SQLite store does: claims commit without waiting for the disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stepstone.store.sqlite import SqliteStore

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

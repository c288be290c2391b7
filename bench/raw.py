"""The physical limit: single-row INSERT + COMMIT per second, from 1 connection and from 8.

Same durability as stepstone: SQLite in WAL mode with synchronous=FULL (each commit
fsyncs the WAL); PostgreSQL as the server has it (synchronous_commit unchanged). Each
connection runs in its own process, so the figure is the database's, not the GIL's.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from bench.common import Result, log, sqlite_path, store_of

PAYLOAD = '{"step": 1, "ok": true}'


def _sqlite_writer(path: str, start_at: float, seconds: float, counts: Any, synchronous: str = "FULL") -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=60000")
    time.sleep(max(0.0, start_at - time.time()))
    end = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < end:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO bench_raw (payload) VALUES (?)", (PAYLOAD,))
        conn.execute("COMMIT")
        done += 1
    conn.close()
    counts.put(done)


def _pg_writer(url: str, start_at: float, seconds: float, counts: Any, synchronous: str = "") -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        time.sleep(max(0.0, start_at - time.time()))
        end = time.perf_counter() + seconds
        done = 0
        while time.perf_counter() < end:
            conn.execute("INSERT INTO bench_raw (payload) VALUES (%s)", (PAYLOAD,))
            conn.commit()
            done += 1
    counts.put(done)


def _create_table(url: str) -> str:
    if store_of(url) == "sqlite":
        import sqlite3

        path = sqlite_path(url)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        conn.close()
        return path
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload text NOT NULL)")
        settings = conn.execute("SELECT current_setting('synchronous_commit'), current_setting('fsync')").fetchone()
    log(f"  postgres: synchronous_commit={settings[0]}, fsync={settings[1]} (as the server has them)")
    return url


def run(url: str, params: dict[str, Any]) -> Result:
    result = Result()
    target = _create_table(url)
    writer = _sqlite_writer if store_of(url) == "sqlite" else _pg_writer
    seconds = params["seconds"]
    context = multiprocessing.get_context("fork")
    first = 0 if params["warmup"] else 1
    for rep in range(first, params["reps"] + 1):  # round 0 (half as long) warms up
        for connections in (1, 8):
            counts = context.Queue()
            start_at = time.time() + 0.15
            length = seconds if rep > 0 else seconds / 2
            args = (target, start_at, length, counts, params.get("synchronous", "FULL"))
            procs = [context.Process(target=writer, args=args) for _ in range(connections)]
            for proc in procs:
                proc.start()
            total = sum(counts.get(timeout=length + 60) for _ in procs)
            for proc in procs:
                proc.join()
            if rep > 0:
                result.add(f"INSERT+COMMIT/s, {connections} conn", "commits/s", total / seconds)
    return result

"""What every part of the bench shares: statistics, fresh databases, the child protocol.

A scenario runs in a child process (`python -m bench.child SYSTEM SCENARIO URL PARAMS`),
one per system, store and scenario, each on a fresh database. The child prints one line
`RESULT {json}` on stdout: `{"metrics": {name: {"unit": ..., "values": [one per
repetition]}}, "notes": [...]}`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT_PREFIX = "RESULT "

# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolated linearly between the two nearest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- results of a child -------------------------------------------------------------------


class Result:
    """What one child measured: values per metric (one per repetition), and notes."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def add(self, metric: str, unit: str, value: float) -> None:
        entry = self.metrics.setdefault(metric, {"unit": unit, "values": []})
        entry["values"].append(float(value))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def emit(self) -> None:
        """Print the result line the parent reads (the last thing a child prints)."""
        sys.stdout.write(RESULT_PREFIX + json.dumps({"metrics": self.metrics, "notes": self.notes}) + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    """Progress for the person watching (stderr, so that stdout stays the protocol)."""
    print(message, file=sys.stderr, flush=True)


# -- fresh databases ----------------------------------------------------------------------

_names = itertools.count(1)


def pg_url(server: str, database: str) -> str:
    """`server` (any database on the server) with its database part replaced."""
    base, _, query = server.partition("?")
    base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{base}/{database}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def fresh_database(store: str, tag: str, pg_server: str = DEFAULT_PG) -> Iterator[str]:
    """A new empty database for one scenario: a temp SQLite file, or a PostgreSQL database.

    SQLite files go to $BENCH_TMPDIR (default: the system temp directory, a real disk
    here: a tmpfs would make fsync free and the figures meaningless).
    """
    if store == "sqlite":
        directory = tempfile.mkdtemp(prefix=f"stepstone-bench-{tag}-", dir=os.environ.get("BENCH_TMPDIR"))
        try:
            yield f"sqlite:///{directory}/bench.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    import psycopg

    name = f"bench_{tag.replace('-', '_')}_{os.getpid()}_{next(_names)}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_path(url: str) -> str:
    """`sqlite:////abs/path.db` -> /abs/path.db (the bench only makes absolute ones)."""
    return url.removeprefix("sqlite:///")


def store_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgres"

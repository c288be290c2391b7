"""Helpers of the store tests: stores opened on a URL, instances brought to a state, runs ended.

Times are explicit epoch seconds from T0; nothing here depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from stepstone.store import from_url
from stepstone.store.base import (
    Attempt,
    Claim,
    InstanceRecord,
    RunEnd,
    RunWrite,
    StepKey,
    StepKind,
    StepStatus,
    StepWrite,
    Store,
)
from stepstone.store.sqlite import path_from_url

T0 = 1_700_000_000.0
WF = "orders"
LEASE = 60.0


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = from_url(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def is_postgres(url: str) -> bool:
    return url.startswith("postgres")


def raw_execute(url: str, statement: str) -> None:
    """Run SQL on the store's database behind its back (tables in the `stepstone` schema on PostgreSQL)."""
    if is_postgres(url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement.replace("{s}", "stepstone."))
    else:
        db = sqlite3.connect(path_from_url(url))
        try:
            with db:
                db.execute(statement.replace("{s}", ""))
        finally:
            db.close()


def do_step(
    name: str,
    *,
    count: int = 1,
    kind: StepKind = "do",
    status: StepStatus = "complete",
    result: str | None = "1",
    at: float = T0,
    attempts: int = 1,
    consume_event: int | None = None,
) -> StepWrite:
    log = [
        Attempt(
            n,
            at,
            at + 0.5,
            "ok" if n == attempts else "error",
            None if n == attempts else "ValueError",
            None if n == attempts else f"try {n}",
        )
        for n in range(1, attempts + 1)
    ]
    return StepWrite(
        StepKey(kind, name, count),
        status,
        at,
        result_json=result,
        attempts=attempts if kind == "do" else 0,
        ended_at=at + 0.5 if status == "complete" else None,
        new_attempts=log if kind == "do" else [],
        consume_event=consume_event,
    )


async def create(store: Store, *ids: str, workflow: str = WF, now: float = T0) -> list[InstanceRecord]:
    return await store.create_instances(workflow, [(i, f'{{"id": "{i}"}}') for i in ids], now)


async def claim(
    store: Store, worker: str = "w1", *, now: float = T0, limit: int = 100, lease: float = LEASE
) -> list[Claim]:
    return (await store.claim(worker, [WF], limit, now, now + lease)).claims


async def start(store: Store, instance_id: str, worker: str = "w1", *, now: float = T0) -> Claim:
    """Create an instance and lease it (the only claimable instance of WF at `now`)."""
    await create(store, instance_id, now=now)
    (leased,) = await claim(store, worker, now=now)
    assert leased.id == instance_id
    return leased


async def end(
    store: Store,
    leased: Claim,
    end: RunEnd,
    *,
    now: float = T0 + 1,
    wake_at: float | None = None,
    output_json: str | None = None,
    error_json: str | None = None,
    wait_types: tuple[str, ...] = (),
) -> str:
    """Stop the leased run with `end`; the instance's status after."""
    run = RunWrite(
        leased.pk,
        leased.token,
        now,
        end=end,
        wake_at=wake_at,
        output_json=output_json,
        error_json=error_json,
        wait_types=list(wait_types),
    )
    return await store.write(run)


async def get(store: Store, instance_id: str) -> InstanceRecord:
    return await store.get_instance(WF, instance_id)


class Wakeups:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def arrive(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

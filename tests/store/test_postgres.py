"""What only the PostgreSQL store does: URLs and schemas, group commit and its recovery, LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from stepstone.errors import InvalidInputError, LeaseLostError, StepstoneError, StoreClosedError
from stepstone.store import from_url, migrations, postgres
from stepstone.store.base import RunWrite
from stepstone.store.postgres import PostgresStore
from stepstone.store.postgres_connections import GroupCommit, Tx

from .support import LEASE, T0, WF, Wakeups, create, do_step


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def submit(store: PostgresStore, job: Callable[[Tx], Awaitable[Any]]) -> Awaitable[Any]:
    return store._write(job)


def terminate_other_connections(url: str) -> int:
    """Cut every other connection to the test's database; return once their server
    processes are gone (pg_terminate_backend only signals them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            pid
            for pid, _ in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "terminated connections did not go away"
            time.sleep(0.01)
    return len(pids)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- URLs, schemas, migrations ------------------------------------------------------------------


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    store = from_url("postgresql://alice:s3cret@127.0.0.1:1/app?connect_timeout=2")
    with pytest.raises(
        StepstoneError, match=r"cannot connect to PostgreSQL at postgresql://alice@127\.0\.0\.1:1/app"
    ) as info:
        await store.open()
    assert "s3cret" not in str(info.value)


def test_passwords_are_redacted_from_urls() -> None:
    assert postgres.redact("postgresql://u:pw@h:5432/db?sslmode=require&password=pw2") == (
        "postgresql://u@h:5432/db?sslmode=require"
    )
    assert postgres.redact("postgres://h/db") == "postgres://h/db"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://u:s3cret@[::1:5432/db", "IPv6"),  # the host's ] missing: urlsplit and libpq refuse it
        ("postgresql://u:s3cret@h:5432/db?connect_timeout=abc", "connect_timeout 'abc'"),
        ("postgresql://u:s3cret@h:5432/db?connect_timeout=1.5", "connect_timeout '1.5'"),
    ],
)
def test_a_malformed_url_is_invalid_input_naming_what_is_wrong_but_not_the_password(url: str, named: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid PostgreSQL URL") as info:
        from_url(url)
    assert named in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg"])
async def test_other_url_schemes_name_the_same_database(pg_url: str, scheme: str) -> None:
    url = pg_url.replace("postgresql", scheme, 1)
    store = from_url(url)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await create(store, "a")
    finally:
        await store.close()
    async with opened(pg_url) as same:
        assert (await same.get_instance(WF, "a")).id == "a"


@pytest.mark.parametrize("schema", ["", "1abc", "has space", "semi;colon", 'quo"te', "x" * 64])
def test_a_schema_name_must_be_an_identifier(pg_url: str, schema: str) -> None:
    with pytest.raises(InvalidInputError, match="schema name"):
        PostgresStore(pg_url, schema=schema)


@pytest.mark.parametrize("port", ["notaport", "0", "65536", "-1"])
def test_a_port_must_be_a_number_in_range(port: str) -> None:
    with pytest.raises(InvalidInputError, match=f"port '{port}' is not a number"):
        PostgresStore(f"postgresql://u@127.0.0.1:{port}/db")


@pytest.mark.parametrize(("low", "high"), [(0, 5), (3, 2), (1, 1)])
def test_the_pool_needs_room_for_the_writer_and_readers(pg_url: str, low: int, high: int) -> None:
    with pytest.raises(InvalidInputError, match="pool size"):
        PostgresStore(pg_url, min_connections=low, max_connections=high)


async def test_schemas_keep_deployments_in_one_database_apart(pg_url: str) -> None:
    async with opened(pg_url) as default, opened(pg_url, schema="Tenant_B") as tenant:
        await create(default, "a")
        await create(tenant, "a")
        await tenant.control(WF, "a", "pause", T0)
        assert (await default.get_instance(WF, "a")).status == "queued"
        assert (await tenant.get_instance(WF, "a")).status == "paused"
        wakeups = Wakeups()
        await default.subscribe_wakeups(wakeups)
        await create(tenant, "b")  # another schema's channel: no wakeup here
        await create(default, "b")
        assert await wakeups.arrive()
        assert wakeups.count == 1


async def test_concurrent_opens_of_a_fresh_schema_migrate_it_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, schema="fresh", min_connections=1, max_connections=2) for _ in range(6)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        await create(stores[0], "a")
        assert (await stores[5].get_instance(WF, "a")).id == "a"
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT version FROM fresh.schema_version ORDER BY version").fetchall()
    assert versions == [(migration.version,) for migration in migrations.load("postgres")]


# -- group commit -------------------------------------------------------------------------------


async def test_concurrent_writes_share_commits(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    commit = GroupCommit._commit

    async def counted(self: GroupCommit, batch: list[Any]) -> Any:
        batches.append(len(batch))
        return await commit(self, batch)

    monkeypatch.setattr(GroupCommit, "_commit", counted)
    async with opened(pg_url) as store:
        await store.create_instances(WF, [(f"i{n}", "{}") for n in range(200)], T0)
        leases = (await store.claim("w1", [WF], 200, T0, T0 + LEASE)).claims
        batches.clear()
        await asyncio.gather(*(store.write(RunWrite(c.pk, c.token, T0 + 1, steps=[do_step("a")])) for c in leases))
        assert sum(batches) == 200
        assert len(batches) <= 200 // 32


async def test_a_refused_write_in_a_batch_undoes_only_itself(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parts: list[int] = []
    careful = GroupCommit._careful

    async def counted(self: GroupCommit, conn: Any, batch: list[Any]) -> Any:
        parts.append(len(batch))
        return await careful(self, conn, batch)

    monkeypatch.setattr(GroupCommit, "_careful", counted)
    async with opened(pg_url) as store:
        await store.create_instances(WF, [(f"i{n}", "{}") for n in range(150)], T0)
        leases = (await store.claim("w1", [WF], 150, T0, T0 + LEASE)).claims
        stale = leases[7]
        writes = [
            store.write(RunWrite(c.pk, c.token - 1 if c is stale else c.token, T0 + 1, steps=[do_step("a")]))
            for c in leases
        ]
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        assert [type(o) for o in outcomes if isinstance(o, BaseException)] == [LeaseLostError]
        assert isinstance(outcomes[7], LeaseLostError)
        assert all(o == "running" for n, o in enumerate(outcomes) if n != 7)
        assert "no longer leased" in str(outcomes[7])
        for claim in leases:
            recorded = [step.key.name for step in await store.load_steps(claim.pk)]
            assert recorded == ([] if claim is stale else ["a"])
        # The batch ran again in parts, each job in a savepoint: within PostgreSQL's subtransaction cache.
        assert len(parts) >= 2 and max(parts) <= 64


async def test_statements_first_prepared_in_a_refused_batch_keep_working(pg_url: str) -> None:
    # psycopg prepares a statement on its 5th execution. When that falls in a pipeline that
    # a refused write aborted, the server skipped the PREPARE but psycopg 3.3 keeps it as
    # prepared, and every later use of the statement on that connection failed ("prepared
    # statement _pg3_n does not exist"): step writes on it stopped landing for good.
    async with opened(pg_url) as store:
        for round in range(8):
            ids = [f"r{round}-{n}" for n in range(3)]
            await store.create_instances(WF, [(i, "{}") for i in ids], T0)
            stale, *leases = (await store.claim("w1", [WF], 3, T0, T0 + LEASE)).claims
            writes = [store.write(RunWrite(stale.pk, stale.token - 1, T0 + 1, steps=[do_step("a")]))]
            writes += [store.write(RunWrite(c.pk, c.token, T0 + 1, steps=[do_step("a")])) for c in leases]
            outcomes = await asyncio.gather(*writes, return_exceptions=True)  # one batch, the stale write first
            assert isinstance(outcomes[0], LeaseLostError), (round, outcomes)
            assert outcomes[1:] == ["running", "running"], (round, outcomes)
            for claim in leases:  # and alone, afterwards
                status = await store.write(RunWrite(claim.pk, claim.token, T0 + 2, steps=[do_step("b")]))
                assert status == "running", round


async def test_a_batch_of_claims_alone_commits_without_waiting_for_the_wal_flush(pg_url: str) -> None:
    async def setting(tx: Tx) -> str:
        cursor = await tx.conn.execute("SELECT current_setting('synchronous_commit')")
        row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    async with opened(pg_url) as store:
        assert isinstance(store, PostgresStore)
        server = await store._write(setting)  # the server's own setting, kept for what must be durable
        assert server != "off"
        assert await store._write(setting, durable=False) == "off"
        # Submitted in one turn of the loop, they share a batch: it commits durably.
        together = [store._write(setting, durable=False), store._write(setting)]
        assert await asyncio.gather(*together) == [server, server]


async def test_a_job_that_loses_a_deadlock_is_run_again_after_the_commit(pg_url: str) -> None:
    async with opened(pg_url) as store:
        tries: list[int] = []

        async def flaky(tx: Tx) -> str:
            tries.append(len(tries) + 1)
            await tx.conn.execute("INSERT INTO stepstone.workflows VALUES (%s, 0, 0)", (f"try-{len(tries)}",))
            if len(tries) < 3:
                raise pg_errors.DeadlockDetected("simulated")
            return "done"

        async def hopeless(tx: Tx) -> None:
            raise pg_errors.DeadlockDetected("always")

        assert await submit(store, flaky) == "done"
        assert tries == [1, 2, 3]
        assert await store.workflow_names() == ["try-3"]  # the failed tries left nothing
        with pytest.raises(pg_errors.DeadlockDetected, match="always"):
            await submit(store, hopeless)


async def test_crossing_row_locks_of_two_processes_still_land_every_write(pg_url: str) -> None:
    # Each store locks "x" then "y" in one batch while the other locks "y" then "x".
    url = pg_url + "?options=-c%20deadlock_timeout%3D50ms"
    async with opened(url) as one, opened(url) as two:
        await create(one, "x", "y")
        for _ in range(5):
            await asyncio.gather(
                one.send_event(WF, "x", "t", "1", T0),
                one.send_event(WF, "y", "t", "1", T0),
                two.send_event(WF, "y", "t", "2", T0),
                two.send_event(WF, "x", "t", "2", T0),
            )
        for instance_id in ("x", "y"):
            pk = (await one.get_instance(WF, instance_id)).pk
            assert len(await one.events(pk)) == 10


async def test_the_store_recovers_when_its_connections_are_cut(pg_url: str) -> None:
    async with opened(pg_url) as store:
        await create(store, "before")
        assert terminate_other_connections(pg_url) >= 2
        await create(store, "after")  # the writer's connection was cut: the batch runs again
        assert (await store.get_instance(WF, "before")).id == "before"
        assert await store.status_counts(WF) == {"queued": 2}


async def test_a_failed_job_sends_no_wakeup(pg_url: str) -> None:
    async with opened(pg_url) as worker, opened(pg_url) as client:
        await create(client, "a")
        wakeups = Wakeups()
        await worker.subscribe_wakeups(wakeups)
        with pytest.raises(StepstoneError):
            await create(client, "b", "a")  # exists: rolled back, its notification with it
        await create(client, "c")
        assert await wakeups.arrive()
        assert wakeups.count == 1


# -- LISTEN -------------------------------------------------------------------------------------


async def test_the_listener_reconnects_and_looks_for_work_at_once(pg_url: str) -> None:
    async with opened(pg_url) as worker, opened(pg_url) as client:
        wakeups = Wakeups()
        await worker.subscribe_wakeups(wakeups)
        assert terminate_other_connections(pg_url) >= 1
        assert await until(lambda: wakeups.count >= 1), "no wakeup after the LISTEN connection came back"
        seen = wakeups.count
        await create(client, "a")
        assert await until(lambda: wakeups.count > seen), "no wakeup after a create, once reconnected"


async def test_a_quiet_listener_leaves_the_event_loop_asleep(
    pg_url: str, loop_sleeps: Callable[[float], Awaitable[int]]
) -> None:
    # An idle worker should cost nothing: no wakeups while nothing is sent.
    async with opened(pg_url) as worker:
        await worker.subscribe_wakeups(Wakeups())
        sleeps = await loop_sleeps(1.0)
    assert sleeps <= 2, f"the event loop slept {sleeps} times in a quiet second"


async def test_every_subscriber_is_called(pg_url: str) -> None:
    async with opened(pg_url) as worker, opened(pg_url) as client:
        first, second = Wakeups(), Wakeups()
        await worker.subscribe_wakeups(first)
        await worker.subscribe_wakeups(second)
        await create(client, "a")
        assert await first.arrive()
        assert await second.arrive()


class Marker:
    """An object a job refers to, to tell when nothing refers to the job any more."""


async def test_the_writer_keeps_nothing_of_a_batch_it_answered(pg_url: str) -> None:
    # While it waits for the next batch, the writer must not hold the last one (its jobs'
    # closures, what they returned): a run's write would outlive the run, and the cycle
    # collector's oldest generation would fill with them.
    async with opened(pg_url) as store:
        markers = [Marker() for _ in range(3)]
        refs = [weakref.ref(marker) for marker in markers]

        def job(marker: Marker) -> Callable[[Tx], Awaitable[Marker]]:
            async def write(tx: Tx) -> Marker:
                return marker

            return write

        futures = [submit(store, job(marker)) for marker in markers]
        assert [await future for future in futures] == markers
        del markers, futures
        await asyncio.sleep(0)  # (the loop's handle that woke this task refers to the last future)
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]


async def test_a_cancelled_writer_answers_every_job_and_refuses_new_ones(pg_url: str) -> None:
    # As when asyncio.run ends abruptly (a SystemExit out of a step) and cancels every
    # task at once: the writer's, and then the run that hands its instance back on the
    # way out. Nothing may wait for ever on a writer that is gone, and closing still closes.
    async with opened(pg_url) as store:
        entered = asyncio.Event()

        async def slow(tx: Tx) -> None:
            entered.set()
            await asyncio.sleep(60)

        in_flight, queued = submit(store, slow), submit(store, slow)
        await entered.wait()
        assert store._writer is not None
        store._writer._task.cancel()
        for job in (in_flight, queued, submit(store, slow)):
            with pytest.raises(StoreClosedError, match="writer has stopped"):
                await asyncio.wait_for(job, 5)
    assert store._pool is None

"""Engines learn of workflows that other Engines record in the store after they started
(SPEC §3 "worker=False gives a client ... while separate stepstone worker processes run
them"; §5 "an Engine records the workflows it serves in the store when it starts, and a
name that no Engine has recorded is unknown")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstone import BlockingClient, Engine, Workflow, WorkflowEvent, WorkflowNotFoundError, WorkflowStep

from .support import StartEngine, finish


class Greet(Workflow):
    name = "greet"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("greet", lambda: f"hello {event.payload['who']}")


class Other(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return "other"


async def test_client_started_first_knows_a_workflow_a_later_worker_records(
    start_engine: StartEngine,
) -> None:
    client = await start_engine(worker=False)
    with pytest.raises(WorkflowNotFoundError, match="'greet'"):
        client.workflow("greet")  # nobody has recorded it yet
    await start_engine(Greet)  # a worker (in production: another process) starts later
    inst = await client.workflow("greet").create(params={"who": "world"})
    assert (await finish(inst)).output == "hello world"
    assert [i.id for i in await client.workflow(Greet).list()] == [inst.id]  # by class too


async def test_worker_engine_knows_a_workflow_another_engine_records_later(start_engine: StartEngine) -> None:
    first = await start_engine(Other)
    await start_engine(Greet)
    inst = await first.workflow("greet").create(params={"who": "there"})
    assert (await finish(inst)).output == "hello there"


async def test_a_name_no_engine_recorded_stays_unknown(start_engine: StartEngine) -> None:
    client = await start_engine(worker=False)
    await start_engine(Greet)
    for _ in range(2):
        with pytest.raises(WorkflowNotFoundError) as caught:
            client.workflow("nobody-serves-this")
        assert "'nobody-serves-this'" in str(caught.value)
        assert "greet" in str(caught.value)  # the known ones, from the store


async def test_unknown_name_before_start_raises_workflow_not_found(store_url: str) -> None:
    engine = Engine(store_url, worker=False)
    with pytest.raises(WorkflowNotFoundError, match="'greet'"):
        engine.workflow("greet")


async def test_blocking_client_knows_a_workflow_recorded_after_it_started(store_url: str) -> None:
    def drive(client: BlockingClient) -> Any:
        return client.workflow("greet").create(params={"who": "flask"}).wait(timeout=10).output

    client = await asyncio.to_thread(BlockingClient, store_url)
    try:
        with pytest.raises(WorkflowNotFoundError):
            await asyncio.to_thread(client.workflow, "greet")
        async with Engine(store_url, workflows=[Greet]):
            assert await asyncio.to_thread(drive, client) == "hello flask"
    finally:
        await asyncio.to_thread(client.close)

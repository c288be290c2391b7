"""`unknown`: a running instance whose worker stopped renewing its lease (SPEC §3 status values)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepstone import Workflow, WorkflowEvent, WorkflowStep

from .support import StartEngine, finish


class Quick(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("work", lambda: "done")


async def test_running_instance_whose_worker_went_silent_is_unknown_until_taken_over(
    start_engine: StartEngine,
) -> None:
    client = await start_engine(Quick, worker=False)
    inst = await client.workflow(Quick).create(id="orphan")
    # A worker elsewhere claims it with a short lease, then falls silent (no heartbeat).
    now = time.time()
    batch = await client.store.claim("silent-worker", ["Quick"], 1, now, now + 0.05)
    assert [c.id for c in batch.claims] == ["orphan"]
    assert (await inst.status()).status == "running"
    await asyncio.sleep(0.1)
    assert (await inst.status()).status == "unknown"
    assert (await inst.describe()).status == "unknown"
    # Lists and counts agree with the instance: it is unknown, not running.
    pipeline = client.workflow(Quick)
    assert [i.id for i in await pipeline.list(status="unknown")] == ["orphan"]
    assert [i.id for i in await pipeline.list(status="running")] == []
    assert await client.store.status_counts("Quick", now=time.time()) == {"unknown": 1}
    # A live worker takes it over once the lease has lapsed, and it runs to the end.
    worker = await start_engine(Quick)
    final = await finish(await worker.workflow(Quick).get("orphan"))
    assert (final.status, final.output) == ("complete", "done")

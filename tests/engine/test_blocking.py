"""BlockingClient: the instance operations without await, for code that is not async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstone import BlockingClient, InstanceExistsError, Workflow, WorkflowEvent, WorkflowNotFoundError, WorkflowStep

from .support import StartEngine


class Approval(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        reply = await step.wait_for_event("approval", type="approve", timeout="1 hour")
        return {"who": event.payload["who"], "approved": reply.payload}


def drive(url: str) -> dict[str, Any]:
    """What a Flask view would do: plain calls, no event loop of its own."""
    with BlockingClient(url) as client:
        approvals = client.workflow("Approval")
        inst = approvals.create(id="req-1", params={"who": "ana"})
        with pytest.raises(InstanceExistsError):
            approvals.create(id="req-1")
        with pytest.raises(WorkflowNotFoundError):
            client.workflow("nope")
        assert [i.id for i in approvals.list()] == ["req-1"]
        assert approvals.get("req-1").status().status in ("queued", "running", "waiting")
        inst.send_event("approve", True)
        final = inst.wait(timeout=10)
        steps = [(s.kind, s.name, s.status) for s in inst.describe().steps]
        return {"status": final.status, "output": final.output, "steps": steps}


async def test_blocking_client_creates_steers_and_waits_for_instances(
    start_engine: StartEngine, store_url: str
) -> None:
    await start_engine(Approval)  # the worker, in this process's event loop
    outcome = await asyncio.to_thread(drive, store_url)
    assert outcome == {
        "status": "complete",
        "output": {"who": "ana", "approved": True},
        "steps": [("wait_for_event", "approval", "complete")],
    }

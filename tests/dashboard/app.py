"""The app the dashboard tests serve: `stepstone serve|dev|worker tests/dashboard/app.py`.

$STEPSTONE_TEST_WORKFLOWS (comma-separated names) limits the workflows this engine
runs, so one process can run `slow` while nobody runs `stalled`;
$STEPSTONE_TEST_LEASE sets the lease, so a killed worker's instance soon shows `unknown`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from stepstone import Engine, StepContext, Workflow, WorkflowEvent, WorkflowStep


class Greeter(Workflow):
    """One step, then a wait for a `reply` event."""

    name = "greeter"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        greeting = await step.do("greet", lambda: f"hello {event.payload['who']}")
        reply = await step.wait_for_event("reply", type="reply", timeout="1 hour")
        return {"greeting": greeting, "reply": reply.payload}


class Flaky(Workflow):
    """A step that always fails, retried once after params' `delay`: errored, or waiting to retry."""

    name = "flaky"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        params = event.payload or {}

        def fail() -> None:
            raise ValueError(params.get("message", "no luck"))

        await step.do("try", fail, retries={"limit": 1, "delay": params.get("delay", "1 ms")})


NOTE = "Authorised by the issuer after a soft decline; 3-D Secure passed. " * 8
"""A long value: the dashboard folds it."""


class Checkout(Workflow):
    """Every kind of step: a `do`, a `do` that succeeds on its third attempt, a sleep, an event wait."""

    name = "checkout"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        order = event.payload
        reserved = await step.do("reserve stock", lambda: {"sku": order["sku"], "reserved": order["qty"]})

        def charge(ctx: StepContext) -> dict[str, Any]:
            if ctx.attempt < 3:
                raise ConnectionError("card gateway timed out")
            return {"charge": "ch_3Pq81", "amount": order["qty"] * 450, "currency": "eur", "note": NOTE}

        charged = await step.do("charge card", charge, retries={"limit": 3, "delay": "20 ms"})
        await step.sleep("cooling-off", "50 ms")
        approval = await step.wait_for_event("manager approval", type="approval", timeout="3 days")
        receipt = await step.do("email receipt", lambda: {"to": order["email"], "sent": True})
        return {"reserved": reserved, "charge": charged, "approval": approval.payload, "receipt": receipt}


class Many(Workflow):
    """More steps than the timeline shows at first."""

    name = "many"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        for n in range(205):
            await step.do(f"item {n}", lambda n=n: n)


class Slow(Workflow):
    """A step that runs for an hour: the instance stays `running`."""

    name = "slow"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("crunch", lambda: asyncio.sleep(3600), timeout="2 hours")


class Stalled(Slow):
    """The same, run by a worker the tests kill: its instance ends up `unknown`."""

    name = "stalled"


class Listed(Greeter):
    """Never run: a table of queued and paused instances to page through."""

    name = "listed"


ALL = [Greeter, Flaky, Checkout, Many, Slow, Stalled, Listed]
_chosen = os.environ.get("STEPSTONE_TEST_WORKFLOWS")
_names = None if _chosen is None else set(_chosen.split(","))

engine = Engine(
    os.environ.get("STEPSTONE_DATABASE_URL"),
    workflows=[w for w in ALL if _names is None or w.name in _names],
    lease_seconds=float(os.environ.get("STEPSTONE_TEST_LEASE", "30")),
)

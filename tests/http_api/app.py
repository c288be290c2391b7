"""The app the HTTP tests serve: `stepstone serve tests/http_api/app.py` and the in-process app alike."""

from __future__ import annotations

import os
from typing import Any

from stepstone import Engine, Workflow, WorkflowEvent, WorkflowStep


class Greeter(Workflow):
    """One step, then a wait for a `reply` event."""

    name = "greeter"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        greeting = await step.do("greet", lambda: f"hello {event.payload['who']}")
        reply = await step.wait_for_event("reply", type="reply", timeout="1 hour")
        return {"greeting": greeting, "reply": reply.payload}


class Flaky(Workflow):
    """A step that fails twice: one retry, then the instance errors."""

    name = "flaky"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def fail() -> None:
            raise ValueError("no luck")

        await step.do("try", fail, retries={"limit": 1, "delay": "1 ms"})


engine = Engine(os.environ.get("STEPSTONE_DATABASE_URL"), workflows=[Greeter, Flaky])

"""A small app for the CLI tests: `stepstone worker tests/cli/app.py` serves it."""

from __future__ import annotations

import os
from typing import Any

from stepstone import Engine, Workflow, WorkflowEvent, WorkflowStep


class Greeter(Workflow):
    name = "greeter"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        greeting = await step.do("greet", lambda: f"hello {event.payload['who']}")
        reply = await step.wait_for_event("reply", type="reply", timeout="1 hour")
        return {"greeting": greeting, "reply": reply.payload}


engine = Engine(os.environ.get("STEPSTONE_DATABASE_URL"), workflows=[Greeter])
other = Engine(os.environ.get("STEPSTONE_DATABASE_URL"), workflows=[Greeter], concurrency=3)

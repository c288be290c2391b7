"""The stepstone workflows the bench runs (imported by the bench and by `stepstone worker`).

`stepstone worker bench.ss_workflows --db URL` runs them in a worker process of their own.
Step bodies are async functions, the natural form in an async workflow: a sync body
would run in a thread, which costs a hop each way.
"""

from __future__ import annotations

import time
from typing import Any

from stepstone import Engine, Workflow, WorkflowEvent, WorkflowStep


async def _now() -> float:
    return time.time()


class Steps(Workflow):
    """`steps` steps that each return a small dict; then, if `sleep` is given, a sleep that long."""

    name = "bench-steps"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        for i in range(event.payload["steps"]):

            async def body(i: int = i) -> dict[str, Any]:
                return {"step": i, "ok": True}

            await step.do(f"step {i}", body)
        if event.payload.get("sleep"):
            await step.sleep("nap", event.payload["sleep"])
        return {"steps": event.payload["steps"]}


class Sleeper(Workflow):
    """Sleeps `seconds`, then a step that returns the time it started (epoch seconds)."""

    name = "bench-sleeper"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", event.payload["seconds"])
        return await step.do("after", _now)


class Waiter(Workflow):
    """Waits for a `go` event, then a step that returns the time it started (epoch seconds)."""

    name = "bench-waiter"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.wait_for_event("go", type="go", timeout="1 hour")
        return await step.do("after", _now)


WORKFLOWS = [Steps, Sleeper, Waiter]

# For `stepstone worker bench.ss_workflows --db URL`.
engine = Engine(workflows=WORKFLOWS)

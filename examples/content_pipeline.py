"""The AI content pipeline: draft with a model, wait for a human's review, publish, notify.

Run it with `./dev demo` (or `python examples/content_pipeline.py`). It uses a SQLite
file in a temporary directory unless STEPSTONE_DATABASE_URL or --db says otherwise,
and plays the human reviewer itself after a moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

import stepstone
from stepstone import Engine, NonRetryableError, Workflow, WorkflowEvent, WorkflowStep

console = Console(width=max(Console().width, 110))


class FlakyModel:
    """A local stand-in for an AI model API: the first call fails, as real APIs do."""

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, topic: str) -> dict[str, str]:
        self.calls += 1
        await asyncio.sleep(0.05)  # "inference"
        if self.calls == 1:
            raise ConnectionError("model API unavailable (503); the step will retry")
        return {"title": f"All about {topic}", "body": f"{topic.capitalize()} rise and fall twice a day..."}


model = FlakyModel()


def publish(draft: dict[str, str]) -> str:
    """A blocking call (a CMS client, say): sync functions run in a thread."""
    time.sleep(0.02)
    if not draft.get("title"):
        raise NonRetryableError("a draft without a title cannot be published")
    return "https://example.com/posts/" + draft["title"].lower().replace(" ", "-")


class ContentPipeline(Workflow):
    name = "content-pipeline"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> dict[str, object]:
        topic = event.payload["topic"]
        draft = await step.do(
            "generate draft",
            lambda: model.generate(topic),
            retries={"limit": 3, "delay": "200 ms", "backoff": "exponential"},
            timeout="1 minute",
        )
        review = await step.wait_for_event("await review", type="review", timeout="3 days")
        if not review.payload["approved"]:
            return {"published": False, "reason": review.payload.get("comment")}
        await step.sleep("embargo", "0.3 seconds")
        url = await step.do("publish", lambda: publish(draft))

        @step.do("notify subscribers", retries={"limit": 5, "delay": "1 second"})
        async def notify() -> int:
            return 1200  # subscribers reached

        reached = await notify()
        return {"published": True, "url": url, "reached": reached}


engine = Engine(workflows=[ContentPipeline])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def print_timeline(detail: stepstone.InstanceDetail) -> None:
    table = Table(title=f"instance {detail.id}: {detail.status}", title_justify="left")
    for column in ("step", "kind", "status", "attempts", "took", "detail"):
        table.add_column(column)
    for step in detail.steps:
        took = _ms((step.ended - step.started).total_seconds()) if step.ended else "-"
        attempts = ", ".join(
            f"#{a.attempt} {a.outcome} {_ms((a.ended - a.started).total_seconds())}"
            + (f" ({a.error['name']})" if a.error else "")
            for a in step.attempts
        )
        info = ""
        if step.kind == "sleep" and step.due:
            info = f"until {step.due:%H:%M:%S.%f}"[:-3]
        elif step.kind == "wait_for_event" and isinstance(step.result, dict):
            info = f"got {step.result['type']!r}: {step.result['payload']}"
        elif step.result is not None:
            info = str(step.result)[:60]
        kind = {"wait_for_event": "wait"}.get(step.kind, step.kind)
        table.add_row(step.name, kind, step.status, attempts or "-", took, info)
    console.print(table)


async def demo(url: str) -> None:
    global engine
    engine = Engine(url, workflows=[ContentPipeline])
    async with engine:
        pipeline = engine.workflow(ContentPipeline)
        inst = await pipeline.create(params={"topic": "tides"})
        console.print(f"created [bold]{inst.id}[/bold] on {url}")
        started = time.monotonic()
        while (await inst.status()).status != "waiting":
            await asyncio.sleep(0.02)
        console.print(f"waiting for a review after {_ms(time.monotonic() - started)}; the reviewer approves in 0.5 s")
        await asyncio.sleep(0.5)
        await inst.send_event("review", {"approved": True, "comment": "lovely"})
        final = await inst.wait(timeout=30)
        console.print(f"[bold green]{final.status}[/bold green] in {_ms(time.monotonic() - started)}: {final.output}")
        print_timeline(await inst.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    args = parser.parse_args()
    url = args.db or os.environ.get("STEPSTONE_DATABASE_URL")
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(demo(url or f"sqlite:///{directory}/pipeline.db"))


if __name__ == "__main__":
    main()

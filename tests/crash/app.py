"""Workflows for the crash tests, whose step bodies leave evidence outside the database.

Every execution of a step body first appends one line to the journal file named by
$STEPSTONE_CRASH_JOURNAL, written in one `write` and fsynced before the body goes on:

    instance,step,attempt,pid,time

so a test can count how often each body ran, in which process (pid) and when (epoch
seconds, the engine's clock), even when the process was SIGKILLed right after. Step
names are unique within each workflow but Branches, so (instance, step, attempt) names
one attempt.
Some bodies also note when they return, in the same format, in the journal's
companion file (its name + ".returned"; see `journal_return`).

Also runnable as a stepstone app: `engine` serves these workflows on
$STEPSTONE_DATABASE_URL, with a lease of $STEPSTONE_CRASH_LEASE seconds (default 30)
(tests/crash/worker_main.py builds its own Engine, or runs `stepstone worker` on this
file with --cli).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from stepstone import Engine, StepContext, Workflow, WorkflowEvent, WorkflowStep

JOURNAL_ENV = "STEPSTONE_CRASH_JOURNAL"
RETURNED_SUFFIX = ".returned"
"""The companion file of the journal, where bodies that say so note their return."""
LEASE_ENV = "STEPSTONE_CRASH_LEASE"


def _append(path: str, instance: str, step: str, attempt: int) -> None:
    line = f"{instance},{step},{attempt},{os.getpid()},{time.time()!r}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def journal(instance: str, step: str, attempt: int) -> int:
    """Append this execution's line, durably; returns how many lines (instance, step) has now."""
    path = os.environ[JOURNAL_ENV]
    _append(path, instance, step, attempt)
    prefix = f"{instance},{step},"
    with open(path) as lines:
        return sum(1 for text in lines if text.startswith(prefix))


def journal_return(instance: str, step: str, attempt: int) -> None:
    """Note, durably, that a body is returning (in the journal's companion file)."""
    _append(os.environ[JOURNAL_ENV] + RETURNED_SUFFIX, instance, step, attempt)


def journaled(instance: str, step: str, body: Callable[[StepContext], Any]) -> Callable[..., Any]:
    """A step function (run in a worker thread) that journals each execution, then runs `body`."""

    def fn(ctx: StepContext) -> Any:
        journal(instance, step, ctx.attempt)
        return body(ctx)

    return fn


def params(event: WorkflowEvent) -> dict[str, Any]:
    assert isinstance(event.payload, dict), event.payload
    return event.payload


class MultiStep(Workflow):
    """Quick steps, two of them concurrent, then one slow step for a kill to land in.

    params: {"n": int, "slow": seconds}. Output for n: a = n+1, left = 2a, right = 3a,
    slow = left+right, c = 10*slow.
    """

    name = "crash-multistep"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id
        a = await step.do("a", journaled(me, "a", lambda ctx: p["n"] + 1))
        left, right = await asyncio.gather(
            step.do("left", journaled(me, "left", lambda ctx: 2 * a)),
            step.do("right", journaled(me, "right", lambda ctx: 3 * a)),
        )

        def slow(ctx: StepContext) -> int:
            time.sleep(p["slow"])
            return int(left + right)

        total = await step.do("slow", journaled(me, "slow", slow))
        c = await step.do("c", journaled(me, "c", lambda ctx: 10 * total))
        return {"a": a, "left": left, "right": right, "slow": total, "c": c}


class Sleeper(Workflow):
    """A step, a durable sleep, a step that reports when it ran.

    params: {"nap": seconds}. Output: {"before": "awake", "woke_at": epoch seconds}.
    """

    name = "crash-sleeper"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id
        before = await step.do("before", journaled(me, "before", lambda ctx: "awake"))
        await step.sleep("nap", p["nap"])
        woke_at = await step.do("after", journaled(me, "after", lambda ctx: time.time()))
        return {"before": before, "woke_at": woke_at}


class Retrier(Workflow):
    """A step that fails its first `failures` attempts, retried after a constant `delay`.

    params: {"failures": int, "delay": seconds}. Output: {"flaky": failures+1, "after": failures+101}.
    """

    name = "crash-retrier"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id

        def flaky(ctx: StepContext) -> int:
            if ctx.attempt <= p["failures"]:
                raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
            return ctx.attempt

        retries = {"limit": p["failures"] + 2, "delay": p["delay"], "backoff": "constant"}
        attempts = await step.do("flaky", journaled(me, "flaky", flaky), retries=retries)
        after = await step.do("after", journaled(me, "after", lambda ctx: attempts + 100))
        return {"flaky": attempts, "after": after}


class Approval(Workflow):
    """A step, a wait for an `approve` event, a step that uses the event.

    params: {"tag": str}; event payload: {"by": str}.
    Output: {"before": TAG, "event": payload, "after": "TAG approved by BY"}.
    """

    name = "crash-approval"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id
        before = await step.do("before", journaled(me, "before", lambda ctx: p["tag"].upper()))
        approval = await step.wait_for_event("approval", type="approve", timeout="1 hour")
        payload = approval.payload
        assert isinstance(payload, dict), payload
        after = await step.do("after", journaled(me, "after", lambda ctx: f"{before} approved by {payload['by']}"))
        return {"before": before, "event": payload, "after": after}


class Suicide(Workflow):
    """A step whose body, the first time it runs, SIGKILLs its own worker as it returns.

    The kill is armed in another thread (`threading.Timer(0, ...)`) just before the body
    returns, so it races the engine recording the result: the signal almost always lands
    while the result travels from the step thread to the store (the body then ran once
    but nothing was recorded, and the next worker runs it again), but on a slow machine
    the commit may win (the result is recorded, and the body never runs again). Either
    way the worker dies, and the tests accept both outcomes. Later executions of the
    body (it has a journal line already) do not kill.

    params: {}. Output: {"before": 1, "fatal": 2, "after": 3}.
    """

    name = "crash-suicide"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        me = event.instance_id
        before = await step.do("before", journaled(me, "before", lambda ctx: 1))

        def fatal(ctx: StepContext) -> int:
            if journal(me, "fatal", ctx.attempt) == 1:
                threading.Timer(0, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return int(before + 1)

        value = await step.do("fatal", fatal)
        after = await step.do("after", journaled(me, "after", lambda ctx: value + 1))
        return {"before": before, "fatal": value, "after": after}


class TakenThenKilled(Workflow):
    """Waits for an `approve` event, then a step whose body, the first time it runs, SIGKILLs
    its own worker as it returns (as Suicide's does). The event taken is recorded in a commit
    of its own that the step does not wait for: a kill before that record loses it, and the
    next worker takes the event again; the step's record never lands without it.

    params: {}; event payload: {"by": str}. Output: {"event": payload, "after": "approved by BY"}.
    """

    name = "crash-taken-then-killed"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        me = event.instance_id
        approval = await step.wait_for_event("approval", type="approve", timeout="1 hour")
        payload = approval.payload
        assert isinstance(payload, dict), payload

        def fatal(ctx: StepContext) -> str:
            if journal(me, "after", ctx.attempt) == 1:
                threading.Timer(0, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return f"approved by {payload['by']}"

        return {"event": payload, "after": await step.do("after", fatal)}


class Handover(Workflow):
    """Steps that return the pid of the worker running them, around a slow one for a
    SIGSTOP or a SIGTERM to land in.

    The slow step's body sleeps `slow` seconds the first time it runs for the instance
    and `again` seconds (default: `slow`) when it runs again, after a takeover; it notes
    its return (`journal_return`), so a test sees when a frozen body has gone on. It is
    a sync function (run in a thread), or a coroutine function if `async` is true.

    params: {"slow": seconds, "again": seconds, "async": bool}. Output: {"first": pid,
    "slow": pid, "last": pid}, the workers whose results were recorded.
    """

    name = "crash-handover"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id
        first = await step.do("first", journaled(me, "first", lambda ctx: os.getpid()))

        def seconds(runs: int) -> float:
            return float(p["slow"] if runs == 1 else p.get("again", p["slow"]))

        def slow(ctx: StepContext) -> int:
            time.sleep(seconds(journal(me, "slow", ctx.attempt)))
            journal_return(me, "slow", ctx.attempt)
            return os.getpid()

        async def slow_async(ctx: StepContext) -> int:
            await asyncio.sleep(seconds(journal(me, "slow", ctx.attempt)))
            journal_return(me, "slow", ctx.attempt)
            return os.getpid()

        slow_pid = await step.do("slow", slow_async if p.get("async") else slow)
        last = await step.do("last", journaled(me, "last", lambda ctx: os.getpid()))
        return {"first": first, "slow": slow_pid, "last": last}


class Branches(Workflow):
    """Two concurrent branches calling steps of the same two names, "fetch" then "process".

    Branch 0 calls "fetch" first but its body takes longer, so live it calls "process"
    second; on replay both fetches are recorded and it calls "process" first. Branch 0's
    "process" body sleeps `slow` seconds the first time it runs (for a kill to land in).
    The only workflow whose step names repeat: its journal labels are "fetch-0",
    "fetch-1", "process-0", "process-1".

    params: {"slow": seconds}. Output: [[0, "p0"], [1, "p1"]].
    """

    name = "crash-branches"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p, me = params(event), event.instance_id

        async def branch(i: int, fetch_delay: float) -> list[Any]:
            def fetch(ctx: StepContext) -> int:
                journal(me, f"fetch-{i}", ctx.attempt)
                time.sleep(fetch_delay)
                return i

            def process(ctx: StepContext) -> str:
                if journal(me, f"process-{i}", ctx.attempt) == 1 and i == 0:
                    time.sleep(float(p["slow"]))
                return f"p{i}"

            return [await step.do("fetch", fetch), await step.do("process", process)]

        return list(await asyncio.gather(branch(0, 0.3), branch(1, 0.0)))


class Exits(Workflow):
    """A step whose body, the first time it runs, calls sys.exit(3): a SystemExit that
    escapes to the worker's event loop, which asyncio.run then cancels task by task.
    Later executions return.

    params: {}. Output: {"before": 1, "exits": 2}.
    """

    name = "crash-exits"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        me = event.instance_id
        before = await step.do("before", journaled(me, "before", lambda ctx: 1))

        def exits(ctx: StepContext) -> int:
            if journal(me, "exits", ctx.attempt) == 1:
                sys.exit(3)
            return int(before + 1)

        return {"before": before, "exits": await step.do("exits", exits)}


WORKFLOWS: list[type[Workflow]] = [
    MultiStep, Sleeper, Retrier, Approval, Suicide, TakenThenKilled, Handover, Branches, Exits,
]  # fmt: skip

engine = Engine(workflows=WORKFLOWS, lease_seconds=float(os.environ.get(LEASE_ENV) or 30.0))

"""Engines, clients and workers on one database: nothing unfinished is lost when an engine
closes and another opens, and a client's instances run on a worker (SPEC §3, §5)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from stepstone import (
    Engine,
    InvalidInputError,
    InvalidStateError,
    StepContext,
    Workflow,
    WorkflowEvent,
    WorkflowNotFoundError,
    WorkflowStep,
)

from .support import Calls, Gate, StartEngine, finish, stays, until, until_time, wait_for_status


async def test_completed_step_does_not_run_again_after_restart_of_engine(store_url: str) -> None:
    calls = Calls()

    class TwoParts(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("first", calls.returning("first", "one"))
            await step.wait_for_event("continue", type="continue", timeout="1 hour")
            second = await step.do("second", calls.returning("second", "two"))
            return [first, second]

    async with Engine(store_url, workflows=[TwoParts]) as engine:
        inst = await engine.workflow(TwoParts).create(id="job")
        await wait_for_status(inst, "waiting")
    async with Engine(store_url, workflows=[TwoParts]) as engine:
        inst = await engine.workflow(TwoParts).get("job")
        await inst.send_event("continue", None)
        assert (await finish(inst)).output == ["one", "two"]
    assert calls.log == ["first", "second"]


async def test_engine_restarted_on_the_same_database_resumes_every_unfinished_instance(store_url: str) -> None:
    calls = Calls()
    attempts: list[int] = []
    gate = Gate(first_only=True)

    class Sleeper(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("before", calls.returning("sleeper before"))
            await step.sleep("nap", "200 ms")
            return "slept"

    def flaky(ctx: StepContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    class Retrier(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("flaky", flaky, retries={"limit": 3, "delay": "200 ms", "backoff": "constant"})

    class Holder(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("hold", gate.hold)

    class Queued(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return "ran"

    workflows = [Sleeper, Retrier, Holder, Queued]
    async with Engine(store_url, workflows=workflows) as engine:
        sleeper = await engine.workflow(Sleeper).create(id="sleeper")
        retrier = await engine.workflow(Retrier).create(id="retrier")
        await engine.workflow(Holder).create(id="holder")
        await wait_for_status(sleeper, "waiting")
        await until(lambda: attempts == [1], "the first attempt failed")
        await wait_for_status(retrier, "waiting")
        await gate.wait_entered()
        closed_at = time.time()
    async with Engine(store_url, workflows=workflows, worker=False) as client:
        await client.workflow(Queued).create(id="queued")
    await until_time(closed_at + 0.3)  # the timer and the retry wait are overdue now
    async with Engine(store_url, workflows=workflows) as engine:
        outputs = {
            name: (await finish(await engine.workflow(wf).get(name))).output
            for name, wf in [("sleeper", Sleeper), ("retrier", Retrier), ("holder", Holder), ("queued", Queued)]
        }
    assert outputs == {"sleeper": "slept", "retrier": 2, "holder": 2, "queued": "ran"}
    assert calls.log == ["sleeper before"]  # recorded before the restart: not run again
    assert attempts == [1, 2]  # the retry continued where it was, with attempt 2
    assert gate.calls == 2  # the step cut short by the close ran again


async def test_instance_waiting_for_an_event_gets_one_sent_while_no_worker_ran(store_url: str) -> None:
    class Approval(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("approval", type="approve", timeout="1 hour")).payload

    async with Engine(store_url, workflows=[Approval]) as engine:
        inst = await engine.workflow(Approval).create(id="a1")
        await wait_for_status(inst, "waiting")
    async with Engine(store_url, workflows=[Approval], worker=False) as client:
        await (await client.workflow(Approval).get("a1")).send_event("approve", "yes")
    async with Engine(store_url, workflows=[Approval]) as engine:
        assert (await finish(await engine.workflow(Approval).get("a1"))).output == "yes"


async def test_client_engine_creates_instances_that_a_worker_engine_on_the_same_database_runs(
    store_url: str,
) -> None:
    class Greet(Workflow):
        name = "greet"

        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("greet", lambda: f"hello {event.payload['who']}")

    async with Engine(store_url, workflows=[Greet]) as worker:
        # A client that serves nothing itself knows the workflows a worker recorded in the store.
        async with Engine(store_url, worker=False) as client:
            inst = await client.workflow("greet").create(params={"who": "world"})
            with pytest.raises(WorkflowNotFoundError):
                client.workflow("nobody-serves-this")
            assert (await finish(inst)).output == "hello world"
        assert (await (await worker.workflow("greet").get(inst.id)).status()).output == "hello world"


async def test_client_engine_does_not_run_instances(store_url: str) -> None:
    calls = Calls()

    class Quiet(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("work", calls.returning("work", 1))

    async with Engine(store_url, workflows=[Quiet], worker=False) as client:
        inst = await client.workflow(Quiet).create()
        with pytest.raises(TimeoutError):
            await inst.wait(timeout=0.3)
        assert (await inst.status()).status == "queued"
    assert calls.log == []


async def test_engine_url_defaults_to_the_environment_variable(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class FromEnv(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return "env"

    monkeypatch.setenv("STEPSTONE_DATABASE_URL", store_url)
    async with Engine(workflows=[FromEnv]) as engine:
        inst = await engine.workflow(FromEnv).create(id="from-env")
        assert (await finish(inst)).output == "env"
    async with Engine(store_url, worker=False) as client:
        assert (await (await client.workflow("FromEnv").get("from-env")).status()).output == "env"


async def test_engine_url_defaults_to_stepstone_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Local(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return "local"

    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    async with Engine(workflows=[Local]) as engine:
        assert (await finish(await engine.workflow(Local).create())).output == "local"
    assert (tmp_path / "stepstone.db").exists()


def test_store_options_of_another_kind_of_store_are_invalid_input_naming_them() -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("sqlite:///unused.db", {"schema": "app"}, "schema for a SQLite store (for PostgreSQL stores only)"),
        ("postgresql://nobody@127.0.0.1:1/unused", {"synchronous": "NORMAL"},
         "synchronous for a PostgreSQL store (for SQLite stores only)"),
        ("sqlite:///unused.db", {"colour": "blue"}, "invalid option(s) colour for a SQLite store (unknown): it takes"),
    ]  # fmt: skip
    for url, options, message in cases:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            Engine(url, **options)


async def test_an_engine_told_another_url_drops_the_options_of_its_own_kind_of_store(store_url: str) -> None:
    class Moved(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return "moved"

    if store_url.startswith("sqlite"):
        engine = Engine("postgresql://nobody@127.0.0.1:1/unused", workflows=[Moved], schema="app")
    else:
        engine = Engine("sqlite:///unused.db", workflows=[Moved], synchronous="NORMAL")
    engine.use_url(store_url)
    async with engine:
        assert (await finish(await engine.workflow(Moved).create())).output == "moved"
        with pytest.raises(InvalidStateError):
            engine.use_url(store_url)


async def test_client_engine_steers_instances_that_a_worker_engine_runs(store_url: str) -> None:
    gate = Gate()
    calls = Calls()

    class Steered(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            if event.payload == "hold":
                await step.do("hold", gate.hold)
                return await step.do("after hold", calls.returning("after hold", "held"))
            if event.payload == "listen":
                return (await step.wait_for_event("listen", type="note", timeout="1 hour")).payload
            await step.sleep("nap", "1 hour")
            return "slept"

    async with Engine(store_url, workflows=[Steered]) as worker, Engine(store_url, worker=False) as client:
        handle = client.workflow("Steered")
        held = await handle.create(id="held", params="hold")
        listener = await handle.create(id="listener", params="listen")
        sleeper = await handle.create(id="sleeper", params="sleep")
        await gate.wait_entered()
        await wait_for_status(listener, "waiting")
        await wait_for_status(sleeper, "waiting")

        await held.pause()
        assert (await held.status()).status == "waitingForPause"
        gate.release()
        await wait_for_status(held, "paused")
        assert calls.log == []
        await held.resume()
        assert (await finish(held)).output == "held"

        await listener.send_event("note", "from the client")
        assert (await finish(listener)).output == "from the client"

        await sleeper.terminate()
        assert (await finish(sleeper)).status == "terminated"
        assert (await (await worker.workflow(Steered).get("sleeper")).status()).status == "terminated"


async def test_several_worker_engines_on_one_database_run_each_step_once(start_engine: StartEngine) -> None:
    calls = Calls()

    class Shared(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            me = event.instance_id
            await step.do("a", calls.returning(f"a:{me}"))
            await step.sleep("nap", "10 ms")
            await step.do("b", calls.returning(f"b:{me}"))
            return "ok"

    first = await start_engine(Shared)
    await start_engine(Shared)
    await start_engine(Shared)
    many = await first.workflow(Shared).create_batch([{} for _ in range(30)])
    assert [(await finish(inst)).output for inst in many] == ["ok"] * 30
    assert sorted(calls.log) == sorted(f"{step}:{inst.id}" for inst in many for step in "ab")


async def test_pause_asked_while_a_step_runs_holds_across_an_engine_restart(store_url: str) -> None:
    gate = Gate(first_only=True)
    calls = Calls()

    class Pausable(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.do("hold", gate.hold)
            return await step.do("after", calls.returning("after", "ok"))

    async with Engine(store_url, workflows=[Pausable]) as engine:
        inst = await engine.workflow(Pausable).create(id="p")
        await gate.wait_entered()
        await inst.pause()
        assert (await inst.status()).status == "waitingForPause"
    async with Engine(store_url, workflows=[Pausable]) as engine:
        inst = await engine.workflow(Pausable).get("p")
        await wait_for_status(inst, "paused")
        await stays(inst, "paused", 0.3)
        assert calls.log == []
        await inst.resume()
        assert (await finish(inst)).output == "ok"
    assert gate.calls == 2  # the step cut short by the close ran again

"""`step.wait_for_event` and `inst.send_event` (SPEC §2, §3)."""

from __future__ import annotations

import asyncio
import functools
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import stepstone
from stepstone import Event, InvalidInputError, StepFailed, WaitTimeout, Workflow, WorkflowEvent, WorkflowStep

from .support import Gate, StartEngine, finish, step_statuses, until, until_equal, until_time, wait_for_status


async def test_wait_for_event_returns_the_event_sent_while_waiting(start_engine: StartEngine) -> None:
    received: list[Event] = []

    class Review(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            review = await step.wait_for_event("await review", type="review", timeout="1 hour")
            received.append(review)
            return review.payload

    engine = await start_engine(Review)
    inst = await engine.workflow(Review).create()
    await wait_for_status(inst, "waiting")
    before = time.time()
    await inst.send_event("review", {"approved": True})
    after = time.time()
    st = await finish(inst)
    assert (st.status, st.output) == ("complete", {"approved": True})
    ev = received[-1]
    assert isinstance(ev, Event)
    assert (ev.type, ev.payload) == ("review", {"approved": True})
    assert ev.timestamp.utcoffset() == timedelta(0)
    assert before - 0.01 <= ev.timestamp.timestamp() <= after + 0.01


async def test_event_is_the_same_when_replayed_from_the_record(start_engine: StartEngine) -> None:
    seen: list[Event] = []

    class Replayed(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            got = await step.wait_for_event("wait", type="data", timeout="1 hour")
            seen.append(got)
            await step.sleep("replay", "10 ms")
            return got.payload

    engine = await start_engine(Replayed)
    inst = await engine.workflow(Replayed).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("data", {"list": [1, 2.5, None]})
    assert (await finish(inst)).output == {"list": [1, 2.5, None]}
    assert len(seen) == 2
    assert seen[0] == seen[1]


async def test_event_sent_before_the_instance_runs_is_kept_for_its_wait(start_engine: StartEngine) -> None:
    class Early(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            got = await step.wait_for_event("wait", type="ready", timeout="1 hour")
            return got.payload

    client = await start_engine(Early, worker=False)
    inst = await client.workflow(Early).create()
    await inst.send_event("ready", "early bird")
    assert (await inst.status()).status == "queued"
    await start_engine(Early)
    assert (await finish(inst)).output == "early bird"


async def test_event_sent_before_its_wait_starts_is_delivered_to_that_wait(start_engine: StartEngine) -> None:
    class TwoWaits(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.wait_for_event("first", type="first", timeout="1 hour")
            second = await step.wait_for_event("second", type="second", timeout="1 hour")
            return [first.payload, second.payload]

    engine = await start_engine(TwoWaits)
    inst = await engine.workflow(TwoWaits).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("second", 2)  # nobody waits for it yet
    await inst.send_event("first", 1)
    assert (await finish(inst)).output == [1, 2]


async def test_events_of_one_type_are_taken_first_sent_first_taken(start_engine: StartEngine) -> None:
    class Fifo(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            got = []
            for i in range(3):
                got.append((await step.wait_for_event(f"item {i}", type="item", timeout="1 hour")).payload)
            got.append((await step.wait_for_event("other", type="other", timeout="1 hour")).payload)
            return got

    client = await start_engine(Fifo, worker=False)
    inst = await client.workflow(Fifo).create()
    for payload in ("a", "b"):
        await inst.send_event("item", payload)
    await inst.send_event("other", "x")
    await inst.send_event("item", "c")
    await start_engine(Fifo)
    assert (await finish(inst)).output == ["a", "b", "c", "x"]


async def test_concurrent_waits_for_one_type_each_take_a_different_event(start_engine: StartEngine) -> None:
    class TwoListeners(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first, second = await asyncio.gather(
                step.wait_for_event("first", type="vote", timeout="1 hour"),
                step.wait_for_event("second", type="vote", timeout="1 hour"),
            )
            return sorted([first.payload, second.payload])

    engine = await start_engine(TwoListeners)
    inst = await engine.workflow(TwoListeners).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("vote", "a")
    await inst.send_event("vote", "b")
    assert (await finish(inst)).output == ["a", "b"]  # no event lost, none taken twice


async def test_a_wait_does_not_take_an_event_whose_taking_another_branch_is_recording(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Branches each run a step, then wait for an event of one type: a step's commit, slow
    # as under load, records the events other branches' waits took meanwhile, while more
    # waits look for one. Each must take another event, none the same twice.
    class Takers(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int) -> Any:
                async def work() -> None:
                    await asyncio.sleep(0.004 * i)

                await step.do(f"work {i}", work)
                return (await step.wait_for_event(f"take {i}", type="t", timeout="1 hour")).payload

            return sorted(await asyncio.gather(*(branch(i) for i in range(8))))

    engine = await start_engine(Takers, worker=False)
    instances = [await engine.workflow(Takers).create() for _ in range(6)]
    for inst in instances:
        for n in range(8):
            await inst.send_event("t", n)
    store_class = type(engine.store)
    write = store_class.write

    async def slow_write(store: Any, run: Any) -> Any:
        await asyncio.sleep(0.01)
        return await write(store, run)

    monkeypatch.setattr(store_class, "write", slow_write)
    await start_engine(Takers)
    for inst in instances:  # before: a wait took an event taken already, and the run stopped
        assert (await finish(inst)).output == list(range(8))


async def test_an_event_taken_is_recorded_while_the_step_after_it_runs(start_engine: StartEngine) -> None:
    gate = Gate()

    class Approve(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            review = await step.wait_for_event("review", type="review", timeout="1 hour")
            await step.do("act", gate.hold)
            return review.payload

    engine = await start_engine(Approve)
    inst = await engine.workflow(Approve).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("review", "approved")
    await gate.wait_entered()

    steps = functools.partial(step_statuses, inst)
    await until_equal(steps, [("review", "complete")], "the wait recorded over while 'act' runs")
    assert (await inst.status()).status == "running"
    gate.release()
    assert (await finish(inst)).output == "approved"
    assert await steps() == [("review", "complete"), ("act", "complete")]


async def test_an_event_sent_just_after_create_does_not_hide_the_instance_from_workers(
    start_engine: StartEngine,
) -> None:
    """On PostgreSQL, send_event (and a refused lifecycle operation) lock the instance's row,
    which a claim made meanwhile skips: the workers must be told to look again, or the
    instance stays queued until their next look for work (30 s)."""

    class Approve(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("go", type="go", timeout="1 hour")).payload

    await start_engine(Approve)
    client = await start_engine(Approve, worker=False)
    for i in range(8):
        inst = await client.workflow(Approve).create()
        if i % 2:
            with pytest.raises(stepstone.InvalidStateError):
                await inst.resume()  # refused: it is queued (or running)
        await inst.send_event("go", i)
        assert (await inst.wait(timeout=10)).output == i


async def test_events_are_matched_by_type(start_engine: StartEngine) -> None:
    class ByType(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            approval = await step.wait_for_event("approval", type="approve", timeout="1 hour")
            note = await step.wait_for_event("note", type="note", timeout="1 hour")
            return [approval.type, approval.payload, note.type, note.payload]

    engine = await start_engine(ByType)
    inst = await engine.workflow(ByType).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("note", "fyi")
    await inst.send_event("approve", "yes")
    assert (await finish(inst)).output == ["approve", "yes", "note", "fyi"]


async def stays_waiting(inst: stepstone.Instance, runs: list[str], seconds: float = 0.3) -> None:
    """The instance stays `waiting` for `seconds`, and its run() is not run again."""
    before = len(runs)
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        assert (await inst.status()).status == "waiting"
        await asyncio.sleep(0.002)
    assert len(runs) == before, "the run was replayed"


async def test_an_event_of_a_type_no_wait_is_for_leaves_a_waiting_instance_waiting(start_engine: StartEngine) -> None:
    runs: list[str] = []

    class Approval(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            runs.append("run")
            approval = await step.wait_for_event("approval", type="approve", timeout="1 hour")
            note = await step.wait_for_event("note", type="note", timeout="1 hour")
            return [approval.payload, note.payload]

    engine = await start_engine(Approval)
    inst = await engine.workflow(Approval).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("note", "kept for later")
    await stays_waiting(inst, runs)
    await inst.send_event("approve", "yes")
    assert (await finish(inst)).output == ["yes", "kept for later"]


@pytest.mark.parametrize("waits_for", ["a sleep", "a retry"])
async def test_an_event_leaves_an_instance_that_waits_for_no_event_waiting(
    start_engine: StartEngine, waits_for: str
) -> None:
    runs: list[str] = []

    def fails() -> None:
        raise RuntimeError("not yet")

    class NoEvents(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            runs.append("run")
            if waits_for == "a sleep":
                await step.sleep("nap", "1 hour")
            else:
                await step.do("flaky", fails, retries={"limit": 1, "delay": "1 hour"})

    engine = await start_engine(NoEvents)
    inst = await engine.workflow(NoEvents).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("poke", {"wake": "up"})
    await stays_waiting(inst, runs)


async def test_an_event_for_a_paused_wait_lets_it_go_on_at_once_when_resumed(start_engine: StartEngine) -> None:
    class Paused(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("approval", type="approve", timeout="1 hour")).payload

    engine = await start_engine(Paused)
    inst = await engine.workflow(Paused).create()
    await wait_for_status(inst, "waiting")
    await inst.pause()
    await inst.send_event("other", 1)
    await inst.send_event("approve", "yes")
    assert (await inst.status()).status == "paused"
    await inst.resume()
    assert (await finish(inst)).output == "yes"


async def test_an_event_sent_after_the_deadline_of_a_paused_wait_does_not_end_it(start_engine: StartEngine) -> None:
    # No worker could time the wait out on time (the instance was paused): it times out
    # when resumed, as it would have on time, and the late event stays for a later wait.
    class Deadline(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.wait_for_event("approval", type="approve", timeout="200 ms")
            except WaitTimeout:
                return ["timed out", (await step.wait_for_event("later", type="approve", timeout="1 hour")).payload]
            return ["approved"]

    engine = await start_engine(Deadline)
    inst = await engine.workflow(Deadline).create()
    await wait_for_status(inst, "waiting")
    await inst.pause()
    (wait,) = (await inst.describe()).steps
    assert wait.due is not None
    await until_time(wait.due.timestamp() + 0.05)
    await inst.send_event("approve", "late")
    await inst.resume()
    assert (await finish(inst)).output == ["timed out", "late"]


async def test_wait_timeout_raises_wait_timeout_which_the_workflow_can_catch(start_engine: StartEngine) -> None:
    captured: list[WaitTimeout] = []

    class Impatient(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.wait_for_event("await reply", type="reply", timeout="50 ms")
            except WaitTimeout as exc:
                captured.append(exc)
                await step.sleep("replay", "10 ms")
                return "gave up"
            return "replied"

    engine = await start_engine(Impatient)
    st = await finish(await engine.workflow(Impatient).create())
    assert (st.status, st.output) == ("complete", "gave up")
    assert len(captured) == 2  # the live run and the replay, from the record
    assert all(isinstance(exc, StepFailed) and exc.step == "await reply" for exc in captured)


async def test_uncaught_wait_timeout_errors_the_instance_naming_the_step(start_engine: StartEngine) -> None:
    class Unanswered(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.wait_for_event("await reply", type="reply", timeout=0.05)

    engine = await start_engine(Unanswered)
    st = await finish(await engine.workflow(Unanswered).create())
    assert st.status == "errored"
    assert st.error is not None
    assert st.error["step"] == "await reply"
    assert "name" in st.error and "message" in st.error


async def test_event_sent_after_a_wait_timed_out_is_kept_for_a_later_wait(start_engine: StartEngine) -> None:
    timed_out: list[str] = []

    class Later(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.wait_for_event("quick", type="ping", timeout="10 ms")
            except WaitTimeout as exc:
                timed_out.append(exc.step)
            return (await step.wait_for_event("patient", type="ping", timeout="1 hour")).payload

    engine = await start_engine(Later)
    inst = await engine.workflow(Later).create()
    await until(lambda: bool(timed_out), "the first wait timed out")
    await wait_for_status(inst, "waiting")
    await inst.send_event("ping", "pong")
    assert (await finish(inst)).output == "pong"


async def test_send_event_rejects_types_outside_the_id_grammar(start_engine: StartEngine) -> None:
    class Listener(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("listen", type="ok", timeout="1 hour")).payload

    engine = await start_engine(Listener, worker=False)
    inst = await engine.workflow(Listener).create()
    bad_types: list[Any] = ["", "-starts-with-dash", "has space", "dotted.name", "x" * 101, "émoji", None, 7]
    outcomes = {}
    for event_type in bad_types:
        try:
            await inst.send_event(event_type, None)
            outcomes[repr(event_type)] = "sent"
        except InvalidInputError:
            outcomes[repr(event_type)] = "InvalidInputError"
    assert outcomes == {repr(t): "InvalidInputError" for t in bad_types}


async def test_event_types_follow_the_id_grammar_up_to_100_characters(start_engine: StartEngine) -> None:
    long_type = "t" * 100

    class Grammar(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.wait_for_event("bad", type="no spaces allowed", timeout="1 hour")
                rejected = False
            except InvalidInputError:
                rejected = True
            got = []
            for i, event_type in enumerate([long_type, "_underscore", "0-digit", "Mixed_Case-1"]):
                got.append((await step.wait_for_event(f"w{i}", type=event_type, timeout="1 hour")).type)
            return [rejected, got]

    client = await start_engine(Grammar, worker=False)
    inst = await client.workflow(Grammar).create()
    for event_type in [long_type, "_underscore", "0-digit", "Mixed_Case-1"]:
        await inst.send_event(event_type, None)
    await start_engine(Grammar)
    assert (await finish(inst)).output == [True, [long_type, "_underscore", "0-digit", "Mixed_Case-1"]]


async def test_event_payload_that_is_not_json_raises_invalid_input_error(start_engine: StartEngine) -> None:
    class Listener(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return (await step.wait_for_event("listen", type="ok", timeout="1 hour")).payload

    engine = await start_engine(Listener, worker=False)
    inst = await engine.workflow(Listener).create()
    with pytest.raises(InvalidInputError):
        await inst.send_event("ok", {1, 2})


async def test_workflow_event_carries_params_creation_time_instance_id_and_workflow_name(
    start_engine: StartEngine,
) -> None:
    seen: list[WorkflowEvent] = []

    class Introspect(Workflow):
        name = "introspect"

        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            seen.append(event)
            return event.payload

    engine = await start_engine(Introspect)
    before = time.time()
    inst = await engine.workflow("introspect").create(id="order-1", params={"topic": "tides"})
    after = time.time()
    assert (await finish(inst)).output == {"topic": "tides"}
    event = seen[0]
    assert isinstance(event, stepstone.WorkflowEvent)
    assert (event.payload, event.instance_id, event.workflow_name) == ({"topic": "tides"}, "order-1", "introspect")
    assert event.timestamp.utcoffset() == timedelta(0)
    assert before - 0.01 <= event.timestamp.timestamp() <= after + 0.01


TWO_WAITS_APP = """
from stepstone import Engine, Workflow


class TwoWaits(Workflow):
    name = "two-waits"

    async def run(self, event, step):
        first = await step.wait_for_event("first", type="e", timeout="1 minute")
        await step.do("between", lambda: None)
        second = await step.wait_for_event("second", type="e", timeout="1 minute")
        return [first.payload, second.payload]


engine = Engine(workflows=[TwoWaits])
"""


async def test_events_sent_at_once_from_another_process_to_many_instances_meet_no_deadlock(
    start_engine: StartEngine, store_url: str, tmp_path: Path
) -> None:
    # The worker and the sender each commit the writes of many instances together (group
    # commit), each batch one transaction: if they locked the instances' rows in different
    # orders, PostgreSQL would break a deadlock after a second, stalling both writers.
    app = tmp_path / "two_waits.py"
    app.write_text(TWO_WAITS_APP)
    worker = subprocess.Popen(
        [sys.executable, "-m", "stepstone", "worker", str(app), "--db", store_url],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert worker.stderr is not None
    try:
        assert "ready" in worker.stderr.readline()
        client = await start_engine(worker=False)
        handle = client.workflow("two-waits")
        created = await handle.create_batch([{} for _ in range(150)])
        await until_equal(lambda: waiting(client), 150, "every instance to wait", timeout=60)
        before = await deadlocks(store_url)
        rng = random.Random(7)

        async def send_two(inst: stepstone.Instance) -> None:  # (sends and the worker's writes interleave)
            await asyncio.sleep(rng.uniform(0, 0.08))
            await inst.send_event("e", 1)
            await asyncio.sleep(rng.uniform(0, 0.05))
            await inst.send_event("e", 2)

        await asyncio.gather(*(send_two(inst) for inst in created))
        finals = await asyncio.gather(*(inst.wait(timeout=60) for inst in created))
        assert [final.output for final in finals] == [[1, 2]] * 150
        await asyncio.sleep(1.0)  # (PostgreSQL publishes its statistics within a second)
        assert await deadlocks(store_url) == before
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        worker.stderr.close()


async def waiting(engine: stepstone.Engine) -> int:
    return (await engine.store.status_counts("two-waits")).get("waiting", 0)


async def deadlocks(store_url: str) -> int:
    """Deadlocks PostgreSQL has broken in the test's database (0 on SQLite, which has none)."""
    if not store_url.startswith("postgresql"):
        return 0
    import psycopg

    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
        # (the statistics are a snapshot per transaction: a fresh connection sees them now)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        cursor = await conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

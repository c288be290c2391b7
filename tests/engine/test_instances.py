"""Creating, finding, listing and inspecting instances (SPEC §3)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

import stepstone
from stepstone import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    Workflow,
    WorkflowEvent,
    WorkflowNotFoundError,
    WorkflowStep,
)

from .support import DEADLINE, Gate, StartEngine, finish, wait_for_status

ID_GRAMMAR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")


class Echo(Workflow):
    name = "echo"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return event.payload


class Other(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return {"other": event.payload}


class Napper(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "1 hour")


class Unserved(Workflow):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return None


async def test_create_with_a_generated_id_returns_a_handle_with_a_fresh_valid_id(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    first = await engine.workflow("echo").create(params={"n": 1})
    second = await engine.workflow("echo").create(params={"n": 2})
    assert isinstance(first.id, str) and ID_GRAMMAR.fullmatch(first.id)
    assert first.id != second.id
    assert first.workflow == "echo"
    assert (await finish(first)).output == {"n": 1}
    assert (await finish(second)).output == {"n": 2}


async def test_create_with_a_given_id_uses_it(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    inst = await engine.workflow(Echo).create(id="order-1", params="hello")
    assert (inst.id, inst.workflow) == ("order-1", "echo")
    assert (await finish(inst)).output == "hello"
    assert (await engine.workflow("echo").get("order-1")).id == "order-1"


async def test_create_without_params_gives_none_as_payload(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    assert (await finish(await engine.workflow(Echo).create())).output is None


VALID_IDS = ["a", "Z", "0", "_", "_x", "9lives", "order-1", "A_b-C", "x" * 100, "a--_"]
INVALID_IDS: list[Any] = [
    "",
    "-a",
    "a" * 101,
    "has space",
    "dot.ted",
    "slash/ed",
    "émile",
    "tab\t",
    "new\nline",
    "a:b",
    5,
]


async def test_ids_of_the_grammar_are_accepted(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    for instance_id in VALID_IDS:
        assert (await handle.create(id=instance_id)).id == instance_id
        assert (await handle.get(instance_id)).id == instance_id


async def test_ids_outside_the_grammar_raise_invalid_input_and_create_nothing(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    outcomes = {}
    for instance_id in INVALID_IDS:
        try:
            await handle.create(id=instance_id)
            outcomes[repr(instance_id)] = "created"
        except InvalidInputError:
            outcomes[repr(instance_id)] = "InvalidInputError"
    assert outcomes == {repr(i): "InvalidInputError" for i in INVALID_IDS}
    assert list(await handle.list()) == []


async def test_params_that_are_not_json_raise_invalid_input_and_create_nothing(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    deep: list[Any] = []
    for _ in range(100_000):  # (Python 3.13's json writes 5,000 deep, 3.11's not 1,100)
        deep = [deep]
    for params in ({"when": object()}, deep, 10**5000):  # no JSON, or past what JSON writes
        with pytest.raises(InvalidInputError):
            await engine.workflow(Echo).create(id="odd", params=params)
    with pytest.raises(InstanceNotFoundError):
        await engine.workflow(Echo).get("odd")


async def test_creating_an_existing_id_raises_instance_exists_and_changes_nothing(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    original = await engine.workflow(Echo).create(id="dup", params={"v": 1})
    before = await finish(original)
    with pytest.raises(InstanceExistsError):
        await engine.workflow(Echo).create(id="dup", params={"v": 2})
    assert await original.status() == before
    assert before.output == {"v": 1}
    assert len(await engine.workflow(Echo).list()) == 1


async def test_create_batch_creates_every_instance_in_order(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    many = await engine.workflow(Echo).create_batch([{"id": "a", "params": 1}, {"params": 2}, {"id": "c"}])
    assert [inst.id for inst in many][0::2] == ["a", "c"]
    assert ID_GRAMMAR.fullmatch(many[1].id)
    assert [(await finish(inst)).output for inst in many] == [1, 2, None]


async def test_create_batch_with_one_existing_id_creates_nothing(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    await handle.create(id="taken")
    with pytest.raises(InstanceExistsError):
        await handle.create_batch([{"id": "fresh-1", "params": {}}, {"id": "taken"}, {"id": "fresh-2"}])
    for missing in ("fresh-1", "fresh-2"):
        with pytest.raises(InstanceNotFoundError):
            await handle.get(missing)
    assert [inst.id for inst in await handle.list()] == ["taken"]


async def test_create_batch_with_one_invalid_item_creates_nothing(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    with pytest.raises(InvalidInputError):
        await handle.create_batch([{"id": "good"}, {"id": "-bad"}])
    with pytest.raises(InvalidInputError):
        await handle.create_batch([{"id": "good"}, {"id": "bad-params", "params": {1, 2}}])
    with pytest.raises(InvalidInputError, match="dict key None"):  # JSON would write it as "null"
        await handle.create_batch([{"id": "good"}, {"id": "none-key", "params": {"a": [{None: 1}]}}])
    assert list(await handle.list()) == []


async def test_get_of_an_unknown_id_raises_instance_not_found(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    with pytest.raises(InstanceNotFoundError):
        await engine.workflow(Echo).get("nobody")


async def test_get_of_an_id_no_instance_can_have_is_both_not_found_and_invalid_input(
    start_engine: StartEngine,
) -> None:
    engine = await start_engine(Echo, worker=False)
    for instance_id in INVALID_IDS:
        for expected in (InstanceNotFoundError, InvalidInputError):
            with pytest.raises(expected) as raised:
                await engine.workflow(Echo).get(instance_id)
            assert repr(instance_id) in str(raised.value)


async def test_unknown_workflow_names_raise_workflow_not_found(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo)
    with pytest.raises(WorkflowNotFoundError):
        engine.workflow("no-such-workflow")
    with pytest.raises(WorkflowNotFoundError):
        engine.workflow(Unserved)


async def test_workflow_name_defaults_to_the_class_name(start_engine: StartEngine) -> None:
    engine = await start_engine(Other)
    assert (await finish(await engine.workflow("Other").create(params=1))).output == {"other": 1}
    assert Other.name == "Other"


async def test_the_same_id_may_exist_in_two_workflows(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, Other)
    echo = await engine.workflow(Echo).create(id="order-1", params="e")
    other = await engine.workflow(Other).create(id="order-1", params="o")
    assert (await finish(echo)).output == "e"
    assert (await finish(other)).output == {"other": "o"}
    assert (echo.workflow, other.workflow) == ("echo", "Other")


async def test_status_reports_output_when_complete_and_error_when_errored(start_engine: StartEngine) -> None:
    class Fails(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            raise RuntimeError("nope")

    engine = await start_engine(Echo, Fails)
    done = await engine.workflow(Echo).create(params=[1, 2])
    failed = await engine.workflow(Fails).create()
    await finish(done)
    await finish(failed)
    st = await done.status()
    assert isinstance(st, stepstone.InstanceStatus)
    assert (st.status, st.output, st.error) == ("complete", [1, 2], None)
    st = await failed.status()
    assert (st.status, st.output, st.error) == ("errored", None, {"name": "RuntimeError", "message": "nope"})


async def test_new_instance_is_queued_until_a_worker_takes_it(start_engine: StartEngine) -> None:
    client = await start_engine(Echo, worker=False)
    inst = await client.workflow(Echo).create()
    assert (await inst.status()).status == "queued"


async def test_wait_raises_timeout_error_when_the_instance_has_not_ended(start_engine: StartEngine) -> None:
    engine = await start_engine(Napper)
    inst = await engine.workflow(Napper).create()
    with pytest.raises(TimeoutError):
        await inst.wait(timeout=0.2)
    assert (await inst.status()).status == "waiting"
    await inst.terminate()


async def test_wait_on_an_instance_running_here_sleeps_through_other_instances_runs(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many waits at once (a web app awaiting its instances) must not all wake whenever
    # any instance's run ends: each waits for its own instance's run.
    gate = Gate()

    class Held(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("held", gate.hold)

    monkeypatch.setattr(stepstone.instances, "_MAX_WAIT_PAUSE", DEADLINE)  # no look but the first
    engine = await start_engine(Held, Echo)
    held = await engine.workflow(Held).create()
    await gate.wait_entered()
    looks = 0
    runs_here = engine.runs_here

    def counted(pk: int) -> bool:
        nonlocal looks
        looks += pk == held._pk
        return runs_here(pk)

    monkeypatch.setattr(engine, "runs_here", counted)
    waiter = asyncio.create_task(held.wait(timeout=DEADLINE))
    for i in range(20):
        assert (await finish(await engine.workflow(Echo).create(params=i))).output == i
    assert looks == 1 and not waiter.done()
    gate.release()
    assert (await waiter).output == 1
    assert looks == 1  # its run's end told it how the instance ended: nothing was read


async def test_wait_on_a_sleeping_instance_stops_reading_once_its_run_resumes_here(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waits on many sleeping instances (a script awaiting a batch) must not read the store
    # while their timers fire here and the runs go on: each wait watches its run instead.
    gate = Gate()

    class Sleepy(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await step.sleep("nap", 0.3)
            return await step.do("held", gate.hold)

    monkeypatch.setattr(stepstone.instances, "_MAX_WAIT_PAUSE", DEADLINE)
    engine = await start_engine(Sleepy)
    inst = await engine.workflow(Sleepy).create()
    await wait_for_status(inst, "waiting")
    reads = 0
    get_instance = engine.store.get_instance

    async def counted(workflow: str, id: str) -> Any:
        nonlocal reads
        reads += 1
        return await get_instance(workflow, id)

    monkeypatch.setattr(engine.store, "get_instance", counted)
    waiter = asyncio.create_task(inst.wait(timeout=DEADLINE))
    await gate.wait_entered()  # the timer fired; its run resumed here
    before = reads
    await asyncio.sleep(1.5)  # (the read-back intervals, growing from 5 ms, would have run out)
    assert reads == before and not waiter.done()
    gate.release()
    assert (await waiter).output == 1
    assert reads == before  # the run's start and end told the wait all it needed


# -- list --------------------------------------------------------------------------------------


async def test_list_returns_instance_handles_newest_first(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, worker=False)
    for i in range(3):
        await engine.workflow(Echo).create(id=f"i{i}")
    page = await engine.workflow(Echo).list()
    assert isinstance(page, list)
    assert [(inst.id, inst.workflow) for inst in page] == [("i2", "echo"), ("i1", "echo"), ("i0", "echo")]
    assert page.next_cursor is None
    assert (await page[0].status()).status == "queued"


@pytest.mark.parametrize("total", [5, 6])
async def test_list_pages_through_every_instance_with_the_cursor(start_engine: StartEngine, total: int) -> None:
    engine = await start_engine(Echo, worker=False)
    handle = engine.workflow(Echo)
    await handle.create_batch([{"id": f"i{i}"} for i in range(total)])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await handle.list(limit=2, cursor=cursor)
        pages += 1
        assert len(page) <= 2
        seen += [inst.id for inst in page]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert pages < 10
    assert seen == [f"i{i}" for i in reversed(range(total))]
    assert pages == (total + 1) // 2  # the last page ends the paging, even when it is full


@pytest.mark.parametrize("cursor", ["", "-1", "1.5", "abc", "\u0661", "\u00b2", str(2**63), 7])
async def test_list_refuses_what_no_page_gave_as_a_cursor(start_engine: StartEngine, cursor: Any) -> None:
    engine = await start_engine(Echo, worker=False)
    await engine.workflow(Echo).create(id="e")
    with pytest.raises(InvalidInputError, match="invalid cursor"):
        await engine.workflow(Echo).list(cursor=cursor)
    assert [inst.id for inst in await engine.workflow(Echo).list(cursor=str(2**63 - 1))] == ["e"]


async def test_list_filters_by_status(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, Napper)
    nappers = [await engine.workflow(Napper).create(id=f"nap-{i}") for i in range(3)]
    for inst in nappers:
        await wait_for_status(inst, "waiting")
    await nappers[1].terminate()
    waiting = await engine.workflow(Napper).list(status="waiting")
    assert [inst.id for inst in waiting] == ["nap-2", "nap-0"]
    assert [inst.id for inst in await engine.workflow(Napper).list(status="terminated")] == ["nap-1"]
    assert list(await engine.workflow(Napper).list(status="complete")) == []
    first = await engine.workflow(Napper).list(status="waiting", limit=1)
    more = await engine.workflow(Napper).list(status="waiting", limit=1, cursor=first.next_cursor)
    assert ([i.id for i in first], [i.id for i in more], more.next_cursor) == (["nap-2"], ["nap-0"], None)


async def test_list_shows_only_the_instances_of_its_workflow(start_engine: StartEngine) -> None:
    engine = await start_engine(Echo, Other, worker=False)
    await engine.workflow(Echo).create(id="e")
    await engine.workflow(Other).create(id="o")
    assert [inst.id for inst in await engine.workflow(Echo).list()] == ["e"]
    assert [inst.id for inst in await engine.workflow(Other).list()] == ["o"]


async def test_many_instances_created_at_once_all_run_to_completion(start_engine: StartEngine) -> None:
    class Busy(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            doubled = await step.do("double", lambda: event.payload * 2)
            await step.sleep("nap", "10 ms")
            return await step.do("add one", lambda: doubled + 1)

    engine = await start_engine(Busy)
    many = await engine.workflow(Busy).create_batch([{"params": i} for i in range(60)])
    assert [(await finish(inst)).output for inst in many] == [i * 2 + 1 for i in range(60)]


# -- instances created where a worker runs --------------------------------------------------


class Held(Workflow):
    """Holds its step until the test opens the gate."""

    gate: asyncio.Event | None = None

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def hold() -> str:
            assert Held.gate is not None
            await Held.gate.wait()
            return "done"

        return await step.do("hold", hold)


async def test_instances_created_beside_a_worker_with_room_start_there_at_once(store_url: str) -> None:
    Held.gate = asyncio.Event()
    async with stepstone.Engine(store_url, workflows=[Held], concurrency=2) as engine:
        created = await engine.workflow(Held).create_batch([{"id": f"i{n}"} for n in range(5)])
        # Two slots: two run under this worker's lease from their creation, the rest are queued.
        assert [i.id for i in created] == ["i0", "i1", "i2", "i3", "i4"]
        assert [(await i.status()).status for i in created] == ["running", "running", "queued", "queued", "queued"]
        Held.gate.set()
        assert [(await finish(i)).output for i in created] == ["done"] * 5


async def test_a_client_without_a_worker_creates_queued_instances(start_engine: StartEngine) -> None:
    client = await start_engine(Echo, worker=False)
    inst = await client.workflow(Echo).create(params={"x": 1})
    assert (await inst.status()).status == "queued"
    await start_engine(Echo)  # a worker elsewhere takes it
    assert (await finish(inst)).output == {"x": 1}

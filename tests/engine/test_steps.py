"""`step.do`: its forms, sync and async functions, `ctx`, identity, and recorded results (SPEC §2)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sqlite3
import threading
import time
import weakref
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import stepstone
from stepstone import NonRetryableError, StepContext, StepFailed, Workflow, WorkflowEvent, WorkflowStep, replay

from .support import Calls, Gate, StartEngine, awaited, finish, until, until_equal, wait_for_status


async def run_once(start_engine: StartEngine, workflow: type[Workflow], params: Any = None) -> stepstone.InstanceStatus:
    engine = await start_engine(workflow)
    inst = await engine.workflow(workflow).create(params=params)
    return await finish(inst)


def seconds_of(delay: object) -> float | None:
    """A retry delay as ctx.config shows it (a timedelta, or the value given), in seconds."""
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, int | float):
        return float(delay)
    return {"10 seconds": 10.0, "1 second": 1.0}.get(str(delay))


# -- the forms of step.do --------------------------------------------------------------------


async def test_step_do_returns_the_result_of_a_sync_function(start_engine: StartEngine) -> None:
    class Plain(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("add", lambda: 1 + 1)

    st = await run_once(start_engine, Plain)
    assert (st.status, st.output, st.error) == ("complete", 2, None)


async def test_step_do_awaits_an_async_function(start_engine: StartEngine) -> None:
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "fetched"

    class AsyncStep(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("fetch", fetch)

    assert (await run_once(start_engine, AsyncStep)).output == "fetched"


async def test_step_do_awaits_what_a_lambda_returns_when_it_is_awaitable(start_engine: StartEngine) -> None:
    async def generate(topic: str) -> str:
        await asyncio.sleep(0)
        return f"draft about {topic}"

    class LambdaAwaitable(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("generate draft", lambda: generate(event.payload["topic"]))

    assert (await run_once(start_engine, LambdaAwaitable, {"topic": "tides"})).output == "draft about tides"


async def test_a_lambda_may_return_what_asyncio_makes_on_the_loop(start_engine: StartEngine) -> None:
    # As Cloudflare's `() => Promise.all([...])`: the lambda runs in a thread, which finds
    # the engine's loop for gather and ensure_future; a sync step can still asyncio.run().
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    class Together(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            both = await step.do("both", lambda: asyncio.gather(fetch(1), fetch(2)), retries={"limit": 0})
            one = await step.do("one", lambda: asyncio.ensure_future(fetch(3)), retries={"limit": 0})
            own = await step.do("own loop", lambda: asyncio.run(fetch(4)), retries={"limit": 0})
            return [both, one, own]

    assert (await run_once(start_engine, Together)).output == [[1, 2], 3, 4]


async def test_sync_step_function_runs_in_a_thread_not_on_the_event_loop(start_engine: StartEngine) -> None:
    class WhereItRuns(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            loop_thread = threading.get_ident()
            step_thread = await step.do("where", threading.get_ident)
            return step_thread != loop_thread

    assert (await run_once(start_engine, WhereItRuns)).output is True


async def test_sync_step_function_does_not_block_the_event_loop(start_engine: StartEngine) -> None:
    # The sync step waits for a flag that only an async step, on the loop, can set.
    flag = threading.Event()

    async def set_flag() -> bool:
        flag.set()
        return True

    class NonBlocking(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await asyncio.gather(
                step.do("wait for flag", lambda: flag.wait(5), retries={"limit": 0}),
                step.do("set flag", set_flag),
            )

    assert (await run_once(start_engine, NonBlocking)).output == [True, True]


async def test_bare_decorator_makes_a_step_named_after_the_function(start_engine: StartEngine) -> None:
    calls = Calls()

    class BareDecorator(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            @step.do
            def fetch_user(ctx: StepContext) -> str:
                calls.note("fetch_user")
                return ctx.step.name

            name = await fetch_user()
            await step.sleep("replay", "10 ms")
            return name

    assert (await run_once(start_engine, BareDecorator)).output == "fetch_user"
    assert calls.count("fetch_user") == 1


async def test_decorator_with_a_name_and_options_retries_the_function(start_engine: StartEngine) -> None:
    calls = Calls()

    class NamedDecorator(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            @step.do("charge card", retries={"limit": 2, "delay": "10 ms", "backoff": "constant"}, timeout="5 s")
            async def charge(ctx: StepContext) -> dict[str, Any]:
                calls.note("charge")
                if ctx.attempt < 3:
                    raise ConnectionError("flaky")
                return {"name": ctx.step.name, "attempt": ctx.attempt, "timeout": ctx.config.timeout.total_seconds()}

            return await charge()

    st = await run_once(start_engine, NamedDecorator)
    assert st.output == {"name": "charge card", "attempt": 3, "timeout": 5.0}
    assert calls.count("charge") == 3


async def test_decorator_without_a_name_defaults_to_the_function_name(start_engine: StartEngine) -> None:
    class UnnamedDecorator(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            @step.do(retries={"limit": 0})
            def send_receipt(ctx: StepContext) -> list[Any]:
                return [ctx.step.name, ctx.config.retries.limit]

            return await send_receipt()

    assert (await run_once(start_engine, UnnamedDecorator)).output == ["send_receipt", 0]


# -- ctx ---------------------------------------------------------------------------------------


async def test_step_function_taking_ctx_sees_name_count_attempt_and_config(start_engine: StartEngine) -> None:
    def describe(ctx: StepContext) -> dict[str, Any]:
        return {
            "name": ctx.step.name,
            "count": ctx.step.count,
            "attempt": ctx.attempt,
            "limit": ctx.config.retries.limit,
            "delay": seconds_of(ctx.config.retries.delay),
            "backoff": ctx.config.retries.backoff,
            "timeout": ctx.config.timeout.total_seconds(),
        }

    async def describe_async(*, ctx: StepContext) -> dict[str, Any]:
        return describe(ctx)

    options: dict[str, Any] = {
        "retries": {"limit": 2, "delay": "1 second", "backoff": "linear"},
        "timeout": "30 seconds",
    }

    class WithCtx(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("info", describe, **options)
            second = await step.do("info", describe_async, **options)
            third = await step.do("other", lambda ctx: describe(ctx), **options)
            return [first, second, third]

    expected = {"attempt": 1, "limit": 2, "delay": 1.0, "backoff": "linear", "timeout": 30.0}
    assert (await run_once(start_engine, WithCtx)).output == [
        {"name": "info", "count": 1, **expected},
        {"name": "info", "count": 2, **expected},
        {"name": "other", "count": 1, **expected},
    ]


async def test_functions_wrapped_by_one_decorator_are_each_called_as_they_are_declared(
    start_engine: StartEngine,
) -> None:
    # A functools.wraps wrapper shares one code object among all the functions it wraps;
    # whether each takes ctx (or is a coroutine function) is its own.
    def logged(fn: Any) -> Any:
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                return await fn(*args, **kwargs)

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @logged
    def plain() -> str:
        return "plain"

    @logged
    def with_ctx(ctx: StepContext) -> str:
        return f"ctx {ctx.step.name}"

    @logged
    async def async_plain() -> str:
        return "async plain"

    @logged
    async def async_with_ctx(ctx: StepContext) -> str:
        return f"async ctx {ctx.attempt}"

    class Decorated(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return [
                await step.do("a", plain),
                await step.do("b", with_ctx),
                await step.do("c", async_plain),
                await step.do("d", async_with_ctx),
                await step.do("e", plain),
            ]

    st = await run_once(start_engine, Decorated)
    assert (st.status, st.output) == ("complete", ["plain", "ctx b", "async plain", "async ctx 1", "plain"])


async def test_ctx_attempt_counts_up_with_each_retry(start_engine: StartEngine) -> None:
    seen: list[int] = []

    def flaky(ctx: StepContext) -> int:
        seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    class Attempts(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do("flaky", flaky, retries={"limit": 5, "delay": "10 ms"})

    assert (await run_once(start_engine, Attempts)).output == 3
    assert seen == [1, 2, 3]


async def test_step_without_options_gets_the_default_retries_and_timeout(start_engine: StartEngine) -> None:
    class Defaults(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do(
                "defaults",
                lambda ctx: [
                    ctx.config.retries.limit,
                    seconds_of(ctx.config.retries.delay),
                    ctx.config.retries.backoff,
                    ctx.config.timeout.total_seconds(),
                ],
            )

    assert (await run_once(start_engine, Defaults)).output == [5, 10.0, "exponential", 600.0]


async def test_missing_retries_keys_take_the_defaults(start_engine: StartEngine) -> None:
    class PartialRetries(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await step.do(
                "partial",
                lambda ctx: [
                    ctx.config.retries.limit,
                    seconds_of(ctx.config.retries.delay),
                    ctx.config.retries.backoff,
                ],
                retries={"limit": 1},
            )

    assert (await run_once(start_engine, PartialRetries)).output == [1, 10.0, "exponential"]


async def test_config_dict_is_accepted_in_place_of_retries_and_timeout(start_engine: StartEngine) -> None:
    def flaky(ctx: StepContext) -> list[Any]:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return [ctx.attempt, ctx.config.retries.limit, ctx.config.retries.backoff, ctx.config.timeout.total_seconds()]

    class ConfigForm(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            config = {"retries": {"limit": 1, "delay": "10 ms", "backoff": "constant"}, "timeout": "5 seconds"}
            return await step.do("configured", flaky, config=config)

    assert (await run_once(start_engine, ConfigForm)).output == [2, 1, "constant", 5.0]


async def test_retries_option_accepts_a_retries_object(start_engine: StartEngine) -> None:
    class RetriesObject(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            policy = stepstone.Retries(limit=3, delay="10 ms", backoff="constant")
            return await step.do("policy", lambda ctx: [ctx.config.retries.limit, ctx.config.retries.backoff],
                                 retries=policy)  # fmt: skip

    assert (await run_once(start_engine, RetriesObject)).output == [3, "constant"]


# -- identity ----------------------------------------------------------------------------------


async def test_same_step_name_twice_is_two_steps_each_run_once(start_engine: StartEngine) -> None:
    calls = Calls()

    class SameNameTwice(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("fetch", calls.returning("first", "one"))
            second = await step.do("fetch", calls.returning("second", "two"))
            await step.sleep("replay", "10 ms")
            return [first, second]

    assert (await run_once(start_engine, SameNameTwice)).output == ["one", "two"]
    assert calls.log == ["first", "second"]


async def test_completed_step_does_not_run_again_when_run_replays_after_a_sleep(start_engine: StartEngine) -> None:
    calls = Calls()
    passes: list[Any] = []

    class Replays(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            value = await step.do("compute", calls.returning("compute", {"n": 1}))
            passes.append(value)
            await step.sleep("nap", "10 ms")
            return value

    assert (await run_once(start_engine, Replays)).output == {"n": 1}
    assert calls.count("compute") == 1
    assert passes == [{"n": 1}, {"n": 1}]  # the live run, then the replay from the record


async def test_concurrent_steps_in_gather_keep_their_identity_across_a_replay(start_engine: StartEngine) -> None:
    calls = Calls()
    second_done = asyncio.Event()

    async def part_one() -> str:
        calls.note("part-1")
        await second_done.wait()  # the first occurrence finishes last
        return "one"

    async def part_two() -> str:
        calls.note("part-2")
        second_done.set()
        return "two"

    async def other() -> str:
        calls.note("other")
        return "three"

    class Gathered(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            results = await asyncio.gather(
                step.do("part", part_one), step.do("part", part_two), step.do("other", other)
            )
            await step.sleep("replay", "10 ms")
            return results

    assert (await run_once(start_engine, Gathered)).output == ["one", "two", "three"]
    assert sorted(calls.log) == ["other", "part-1", "part-2"]


async def test_concurrent_steps_run_at_the_same_time(start_engine: StartEngine) -> None:
    barrier = asyncio.Barrier(3)

    async def meet(label: str) -> str:
        async with asyncio.timeout(5):
            await barrier.wait()
        return label

    class Concurrent(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await asyncio.gather(*(step.do(f"meet {x}", lambda x=x: meet(x), retries={"limit": 0})
                                          for x in "abc"))  # fmt: skip

    assert (await run_once(start_engine, Concurrent)).output == ["a", "b", "c"]


async def test_steps_in_a_task_group_keep_their_identity_across_a_replay(start_engine: StartEngine) -> None:
    calls = Calls()

    class InTaskGroup(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async with asyncio.TaskGroup() as tg:
                first = tg.create_task(awaited(step.do("upload", calls.returning("upload-1", "a.png"))))
                second = tg.create_task(awaited(step.do("upload", calls.returning("upload-2", "b.png"))))
                nap = tg.create_task(awaited(step.sleep("settle", "20 ms")))
            await nap
            await step.sleep("replay", "10 ms")
            return [first.result(), second.result()]

    assert (await run_once(start_engine, InTaskGroup)).output == ["a.png", "b.png"]
    assert sorted(calls.log) == ["upload-1", "upload-2"]


async def test_steps_in_as_completed_over_coroutines_keep_their_identity_across_replays(
    start_engine: StartEngine,
) -> None:
    # as_completed makes its tasks in the order of a set of the coroutines (by object id),
    # which differs from one replay to the next: branches are placed by the list instead.
    calls = Calls()

    class Completing(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def leaf(j: int) -> list[int]:
                first = await step.do("s", calls.returning(f"s {j}", j))
                await step.sleep("nap", "10 ms")  # the run is replayed after this
                second = await step.do("t", calls.returning(f"t {j}", j))
                return [j, first, second]

            async def later() -> int:
                return int(await step.do("s", calls.returning("later", 99)))

            finished = [await done for done in asyncio.as_completed([leaf(j) for j in range(8)])]
            after = await asyncio.gather(later())  # a task made after them is numbered after them
            await step.sleep("replay", "10 ms")
            return [*sorted(finished), *after]

    output = (await run_once(start_engine, Completing)).output
    assert output == [[j, j, j] for j in range(8)] + [99]
    assert sorted(calls.log) == sorted([f"s {j}" for j in range(8)] + [f"t {j}" for j in range(8)] + ["later"])


async def test_steps_not_recorded_before_a_crash_get_their_occurrence_numbers_back(start_engine: StartEngine) -> None:
    # Three branches call "work"; the middle one's is recorded, then the engine goes away
    # while the others run. Run again, those get the numbers they had (1 and 3), not 3 and
    # 4: the history has no gap, and restart(from_step=..., count=1) finds the first.
    seen: list[tuple[int, int]] = []
    released = asyncio.Event()

    class Fan(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int) -> int:
                async def work(ctx: StepContext) -> int:
                    seen.append((i, ctx.step.count))
                    if i != 1:
                        await released.wait()
                    return i

                return int(await step.do("work", work))

            return await asyncio.gather(branch(0), branch(1), branch(2))

    first = await start_engine(Fan)
    inst = await first.workflow(Fan).create()
    await until(lambda: len(seen) == 3, "the three steps to start")
    await until_equal(lambda: step_counts(inst), [2], "the middle step to be recorded")
    await first.close()  # (the runs stop; the instance is handed back)
    released.set()
    again = await start_engine(Fan)
    resumed = await again.workflow(Fan).get(inst.id)
    assert (await finish(resumed)).output == [0, 1, 2]
    assert sorted(seen) == [(0, 1), (0, 1), (1, 2), (2, 3), (2, 3)]
    assert sorted(await step_counts(resumed)) == [1, 2, 3]
    await resumed.restart(from_step="work", count=1)


def lets_go(engine: stepstone.Engine, pk: int) -> bool:
    return not engine.runs_here(pk)


async def step_counts(inst: stepstone.Instance) -> list[int]:
    return [s.count for s in (await inst.describe()).steps]


async def test_a_run_suspends_at_its_first_wait_under_an_eager_task_factory(start_engine: StartEngine) -> None:
    # An eager factory (Python 3.12+) runs a task's coroutine as it is made: the run's own
    # task must not reach its first wait before the run knows it, or the run never
    # suspends. (Python 3.11 has none: there the loop's own factory is checked alike.)
    class Naps(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            if event.payload == "gather":
                await asyncio.gather(step.sleep("a", "1 hour"), step.sleep("b", "1 hour"))
            else:
                await step.sleep("a", "1 hour")

    loop = asyncio.get_running_loop()
    loop.set_task_factory(getattr(asyncio, "eager_task_factory", None))
    try:
        engine = await start_engine(Naps)
        for shape in ("plain", "gather"):
            inst = await engine.workflow(Naps).create(params=shape)
            await wait_for_status(inst, "waiting")
            await until(functools.partial(lets_go, engine, inst._pk), f"the {shape} run to let go of its instance")
    finally:
        loop.set_task_factory(None)


async def test_branches_calling_one_step_name_after_waits_of_different_lengths_keep_their_steps(
    start_engine: StartEngine,
) -> None:
    # Branch 0 calls "fetch" first but finishes it last, so branch 1 calls "process" first.
    # On replay both fetches return at once and branch 0 calls "process" first: each
    # branch must still get its own recorded "process" (and "fetch"), not the other's.
    calls = Calls()
    seen: list[tuple[int, str, int, Any]] = []

    class SameNames(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int, delay: float) -> list[Any]:
                async def fetch() -> int:
                    calls.note(f"fetch {i}")
                    await asyncio.sleep(delay)
                    return i

                fetched = await step.do("fetch", fetch)

                def process(ctx: StepContext) -> dict[str, int]:
                    calls.note(f"process {i}")
                    return {"branch": i, "count": ctx.step.count}

                processed = await step.do("process", process)
                seen.append((i, "process", processed["count"], processed["branch"]))
                await step.sleep(f"nap {i}", "10 ms")  # the run is replayed after this
                return [fetched, processed["branch"]]

            return await asyncio.gather(branch(0, 0.3), branch(1, 0.0))

    st = await run_once(start_engine, SameNames)
    assert (st.status, st.output) == ("complete", [[0, 0], [1, 1]])
    assert sorted(calls.log) == ["fetch 0", "fetch 1", "process 0", "process 1"]
    # Live, branch 1 called "process" first (#1), branch 0 second (#2); every replay agrees.
    assert {(i, count) for i, _, count, _ in seen} == {(1, 1), (0, 2)}
    assert all(i == branch for i, _, _, branch in seen)


async def test_steps_recorded_before_schema_3_are_found_by_their_occurrence_in_call_order(
    start_engine: StartEngine, store_url: str
) -> None:
    # Records made before the `branch` column (NULL there) are found again as they were
    # then: by occurrence number in the order of the run's calls, all branches together.
    calls = Calls()
    napping = asyncio.Event()
    wake = asyncio.Event()

    class Upgraded(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int) -> Any:
                async def x() -> str:
                    calls.note(f"x{i}")
                    await asyncio.sleep(0.05 * i)  # branch 0 calls "y" first, live and on replay
                    return f"x{i}"

                return [await step.do("x", x), await step.do("y", calls.returning(f"y{i}", f"y{i}"))]

            both = await asyncio.gather(branch(0), branch(1))
            head = await step.do("x", calls.returning("x root", "root"))
            napping.set()
            await wake.wait()  # (not a step: the test rewrites the records meanwhile)
            await step.sleep("nap", "10 ms")
            tail = await step.do("x", calls.returning("x tail", "tail"))
            return [both, head, tail]

    engine = await start_engine(Upgraded)
    inst = await engine.workflow(Upgraded).create()
    await asyncio.wait_for(napping.wait(), 10)
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute("UPDATE steps SET branch = NULL")
    else:
        async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as pg:
            await pg.execute("UPDATE stepstone.steps SET branch = NULL")
    wake.set()
    st = await finish(inst)
    assert (st.status, st.output) == ("complete", [[["x0", "y0"], ["x1", "y1"]], "root", "tail"])
    assert sorted(calls.log) == ["x root", "x tail", "x0", "x1", "y0", "y1"]  # none ran again


@pytest.mark.parametrize("spawn", ["gather", "task-group"])
async def test_branches_whose_first_step_waits_on_a_sibling_keep_their_steps(
    start_engine: StartEngine, spawn: str
) -> None:
    # Each consumer calls its first step when its producer's step ends: live, p2 ends
    # first, so c2 calls "x" first; on replay both producers' steps return at once, in
    # the order called, and c1 calls "x" first. Each must get its own recorded "x".
    calls = Calls()

    class ProducersConsumers(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            ready = {"c1": asyncio.Event(), "c2": asyncio.Event()}

            async def producer(name: str, seconds: float, consumer: str) -> None:
                async def produce() -> str:
                    await asyncio.sleep(seconds)
                    return name

                await step.do(name, produce)
                ready[consumer].set()

            async def consumer(label: str) -> str:
                await ready[label].wait()
                return str(await step.do("x", calls.returning(f"x for {label}", label)))

            branches = [producer("p1", 0.3, "c1"), producer("p2", 0.0, "c2"), consumer("c1"), consumer("c2")]
            if spawn == "gather":
                results = await asyncio.gather(*branches)
            else:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(branch) for branch in branches]
                results = [task.result() for task in tasks]
            await step.sleep("nap", "10 ms")  # the run is replayed after this
            return results[2:]

    assert (await run_once(start_engine, ProducersConsumers)).output == ["c1", "c2"]
    assert sorted(calls.log) == ["x for c1", "x for c2"]


async def test_a_task_factory_set_before_the_engine_still_makes_every_task(start_engine: StartEngine) -> None:
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", "?"))
        return asyncio.Task(coro, loop=loop, **options)

    class Fan(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int) -> int:
                return int(await step.do("x", lambda: i))

            results = await asyncio.gather(branch(0), branch(1))
            await step.sleep("nap", "10 ms")  # the run is replayed after this
            return results

    loop.set_task_factory(factory)
    try:
        assert (await run_once(start_engine, Fan)).output == [0, 1]
    finally:
        loop.set_task_factory(None)
    branches = [name for name in made if name.endswith("Fan.run.<locals>.branch")]
    assert len(branches) == 4  # two runs of two branches, all made by it


async def test_branches_recorded_before_creation_order_paths_are_found_again(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance whose branches' steps were recorded under paths numbered by first call
    (before this version) replays them by that numbering, steps not run again."""
    calls = Calls()

    class Waits(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            second = asyncio.Event()

            async def branch(i: int) -> int:
                if i == 0:
                    await second.wait()  # branch 1 calls a step first: it was numbered 0
                value = await step.do("x", calls.returning(f"x {i}", i))
                second.set()
                await step.wait_for_event(f"go {i}", type="go", timeout="1 hour")
                return int(value)

            return await asyncio.gather(branch(0), branch(1))

    from stepstone import replay

    first_call = replay._Branch.child

    def recorded_as_before(self: Any, task: Any) -> Any:
        branch = first_call(self, task)
        branch.path = branch.by_first_call
        return branch

    monkeypatch.setattr(replay._Branch, "child", recorded_as_before)
    engine = await start_engine(Waits)
    inst = await engine.workflow(Waits).create()
    await wait_for_status(inst, "waiting")
    history = await engine.store.history((await engine.store.get_instance("Waits", inst.id)).pk)
    assert sorted(record.branch or "" for record in history if record.key.name == "x") == ["0#1", "1#1"]
    monkeypatch.setattr(replay._Branch, "child", first_call)
    await inst.send_event("go")
    await inst.send_event("go")
    assert (await finish(inst)).output == [0, 1]
    assert sorted(calls.log) == ["x 0", "x 1"]


async def test_nested_branches_keep_their_steps_across_a_crash_like_replay(start_engine: StartEngine) -> None:
    # Branches started by branches (a TaskGroup inside gather) and a step of one name in
    # the run itself between them: every step comes back to the call that made it.
    calls = Calls()

    class Nested(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def leaf(tag: str, delay: float) -> Any:
                async def work() -> str:
                    calls.note(tag)
                    await asyncio.sleep(delay)
                    return tag

                first = await step.do("work", work)
                second = await step.do("work", calls.returning(f"{tag} again", f"{tag}+"))
                return [first, second]

            async def group(tag: str, delays: tuple[float, float]) -> Any:
                async with asyncio.TaskGroup() as tg:
                    a = tg.create_task(leaf(f"{tag}a", delays[0]))
                    b = tg.create_task(leaf(f"{tag}b", delays[1]))
                return [a.result(), b.result()]

            head = await step.do("work", calls.returning("head", "head"))
            both = await asyncio.gather(group("x", (0.2, 0.0)), group("y", (0.0, 0.1)))
            await step.sleep("replay", "10 ms")
            tail = await step.do("work", calls.returning("tail", "tail"))
            return [head, both, tail]

    st = await run_once(start_engine, Nested)
    assert st.status == "complete", st.error
    assert st.output == [
        "head",
        [[["xa", "xa+"], ["xb", "xb+"]], [["ya", "ya+"], ["yb", "yb+"]]],
        "tail",
    ]
    assert len(calls.log) == len(set(calls.log)) == 10  # every step ran once


async def test_sleeping_branch_does_not_rerun_the_finished_steps_of_its_siblings(start_engine: StartEngine) -> None:
    calls = Calls()

    class Branches(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def slow_branch() -> list[Any]:
                before = await step.do("slow before", calls.returning("slow before", 1))
                await step.sleep("slow nap", "30 ms")
                after = await step.do("slow after", calls.returning("slow after", 2))
                return [before, after]

            async def quick_branch() -> Any:
                return await step.do("quick", calls.returning("quick", 3))

            return await asyncio.gather(slow_branch(), quick_branch())

    assert (await run_once(start_engine, Branches)).output == [[1, 2], 3]
    assert sorted(calls.log) == ["quick", "slow after", "slow before"]


async def test_step_failure_escaping_gather_errors_the_instance_while_a_sibling_sleeps(
    start_engine: StartEngine,
) -> None:
    class FailsBesideASleep(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            await asyncio.gather(
                step.do("fail", Calls().raising("fail", ValueError("broken")), retries={"limit": 0}),
                step.sleep("nap", "1 hour"),
            )

    st = await run_once(start_engine, FailsBesideASleep)
    assert (st.status, st.error) == ("errored", {"name": "ValueError", "message": "broken", "step": "fail"})


async def test_a_branch_busy_before_its_first_step_keeps_the_run_from_suspending(start_engine: StartEngine) -> None:
    # The branch awaits something of its own (not a step) while its sibling sleeps: were the
    # run to suspend meanwhile, the branch would run its step outside any run, then again.
    calls = Calls()

    class BusyBranch(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def sleeper() -> str:
                await step.sleep("nap", "300 ms")
                return "slept"

            async def busy() -> Any:
                await asyncio.sleep(0.05)
                return await step.do("after busy", calls.returning("after busy", "done"))

            return await asyncio.gather(sleeper(), busy())

    assert (await run_once(start_engine, BusyBranch)).output == ["slept", "done"]
    assert calls.log == ["after busy"]


async def test_a_branch_that_outlives_its_run_is_cancelled_before_it_calls_a_step(start_engine: StartEngine) -> None:
    calls = Calls()

    class Outlived(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def late() -> Any:
                await asyncio.sleep(0.1)
                return await step.do("late", calls.returning("late"))

            await asyncio.gather(step.do("fail", Calls().raising("fail", ValueError("broken")), retries={"limit": 0}),
                                 late())  # fmt: skip

    engine = await start_engine(Outlived)
    inst = await engine.workflow(Outlived).create()
    assert (await finish(inst)).status == "errored"
    await asyncio.sleep(0.3)  # past when the branch would have called its step
    assert calls.log == []
    assert [s.name for s in (await inst.describe()).steps] == ["fail"]


async def test_gather_with_return_exceptions_waits_out_a_sleep_and_an_event_of_its_branches(
    start_engine: StartEngine,
) -> None:
    # The run suspends while its branches wait: nothing of that may reach gather as a result.
    class Lenient(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            results = await asyncio.gather(
                step.sleep("nap", "300 ms"),
                step.wait_for_event("approval", type="approval", timeout="1 hour"),
                step.do("fail", Calls().raising("fail", ValueError("caught")), retries={"limit": 0}),
                return_exceptions=True,
            )
            nap, approval, failed = results
            assert not isinstance(approval, BaseException)
            return [nap, approval.payload, type(failed).__name__]

    engine = await start_engine(Lenient)
    inst = await engine.workflow(Lenient).create()
    await wait_for_status(inst, "waiting")
    await inst.send_event("approval", {"ok": True})
    assert (await finish(inst)).output == [None, {"ok": True}, "StepFailed"]
    assert [s.name for s in (await inst.describe()).steps if s.status == "complete"] == ["nap", "approval"]


async def test_a_plain_await_between_the_steps_of_a_branch_does_not_wait_for_a_sibling(
    start_engine: StartEngine,
) -> None:
    # While one branch awaits something of its own between two steps, the run is busy: it
    # must not suspend until the sibling's hour is over, which would hold the second step back.
    class Between(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def busy() -> Any:
                await step.do("first", lambda: 1)
                await asyncio.sleep(0.05)
                return await step.do("second", lambda: 2)

            return await asyncio.gather(step.sleep("hour", "1 hour"), busy())

    engine = await start_engine(Between)
    inst = await engine.workflow(Between).create()

    await wait_for_status(inst, "waiting")  # (suspended once both branches wait)
    steps = {s.name: s.status for s in (await inst.describe()).steps}
    assert steps == {"hour": "waiting", "first": "complete", "second": "complete"}


async def test_a_run_that_awaits_on_its_own_before_waiting_suspends_once_every_task_waits(
    start_engine: StartEngine,
) -> None:
    class OwnAwait(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            nap = asyncio.ensure_future(step.sleep("nap", "1 hour"))
            await asyncio.sleep(0.05)  # the task sleeps meanwhile: the run is not idle yet
            reply = await step.wait_for_event("reply", type="reply", timeout="1 hour")
            await nap
            return reply.payload

    engine = await start_engine(OwnAwait)
    inst = await engine.workflow(OwnAwait).create()
    await wait_for_status(inst, "waiting")
    waits = {s.name: s.status for s in (await inst.describe()).steps}
    assert waits == {"nap": "waiting", "reply": "waiting"}
    await inst.terminate()


@pytest.mark.parametrize("shape", ["task-group", "await-task", "own-await-then-task"])
async def test_a_run_that_turns_from_its_own_code_to_waiting_for_its_tasks_suspends(
    start_engine: StartEngine, shape: str
) -> None:
    # Nothing tells the run when a task goes from running its own code (a step, an
    # asyncio.sleep) to waiting for the others (the end of a TaskGroup block, `await task`).
    class Turns(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            if shape == "task-group":
                async with asyncio.TaskGroup() as group:
                    group.create_task(awaited(step.sleep("nap", "1 hour")))
                    await step.do("a", lambda: 1)
                return 1
            nap = asyncio.ensure_future(step.sleep("nap", "1 hour"))
            if shape == "await-task":
                await step.do("a", lambda: 1)
            else:
                await asyncio.sleep(0.05)
            await nap
            return 1

    engine = await start_engine(Turns)
    inst = await engine.workflow(Turns).create()
    await wait_for_status(inst, "waiting", timeout=3)
    await inst.terminate()


async def test_an_in_process_timeout_around_a_wait_and_a_thread_racing_one_are_kept(start_engine: StartEngine) -> None:
    # The run does not suspend under a timer or a thread's work of the workflow's own: a
    # replay would begin them anew, and they would never win against the durable wait.
    class Races(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await asyncio.wait_for(step.sleep("nap", "400 ms"), 0.1)
                timed = "slept"
            except TimeoutError:
                timed = "timed out"
            def work_of_its_own() -> int:
                time.sleep(0.2)
                return 42

            work: asyncio.Future[Any] = asyncio.get_running_loop().run_in_executor(None, work_of_its_own)
            deadline: asyncio.Future[Any] = asyncio.ensure_future(step.sleep("deadline", "1 hour"))
            done, _ = await asyncio.wait([work, deadline], return_when=asyncio.FIRST_COMPLETED)
            deadline.cancel()
            return [timed, work.result() if work in done else "deadline"]

    assert (await run_once(start_engine, Races)).output == ["timed out", 42]


async def test_a_step_called_while_the_run_suspends_does_not_run(start_engine: StartEngine) -> None:
    # Cleanup in a `finally:`, or code that swallowed the run's cancellation, would run its
    # step ahead of the wait before it, and a replay would find it done.
    calls = Calls()

    class Cleanup(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                approval = await step.wait_for_event("approval", type="approval", timeout="1 hour")
            finally:
                await step.do("release", calls.returning("release"))
            with contextlib.suppress(asyncio.CancelledError):  # (code that should not: it swallows the suspension)
                await step.sleep("nap", "1 hour")
            await step.do("after", calls.returning("after"))
            return approval.payload

    engine = await start_engine(Cleanup)
    inst = await engine.workflow(Cleanup).create()
    await wait_for_status(inst, "waiting")
    assert [s.name for s in (await inst.describe()).steps] == ["approval"] and calls.log == []
    await inst.send_event("approval", "yes")
    await until(lambda: calls.log == ["release"], "the release, once approved")
    await wait_for_status(inst, "waiting")
    assert calls.log == ["release"]  # not "after", whose sleep was not over
    await inst.terminate()


async def test_waits_begun_beside_a_running_step_are_recorded_while_it_runs(start_engine: StartEngine) -> None:
    # The run cannot suspend while a step runs; its other branches' waits must reach the
    # store anyway, or a crash meanwhile would begin them anew (a sleep's end, the attempts).
    gate = Gate()

    class Beside(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            return await asyncio.gather(
                step.sleep("nap", "1 hour"),
                step.do("flaky", Calls().raising("flaky", ValueError("once")), retries={"limit": 1, "delay": "1 hour"}),
                step.wait_for_event("reply", type="reply", timeout="1 hour"),
                step.do("long", gate.hold),
            )

    engine = await start_engine(Beside)
    inst = await engine.workflow(Beside).create()
    await gate.wait_entered()

    async def recorded() -> dict[str, tuple[str, int]]:
        return {s.name: (s.status, len(s.attempts)) for s in (await inst.describe()).steps}

    expected = {"nap": ("waiting", 0), "flaky": ("waiting", 1), "reply": ("waiting", 0)}
    deadline = time.monotonic() + 5
    while (seen := await recorded()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert seen == expected
    assert (await inst.status()).status == "running"  # (the step still runs)
    gate.release()
    await wait_for_status(inst, "waiting")
    assert await recorded() == expected | {"long": ("complete", 1)}
    await inst.terminate()


async def test_a_run_whose_branches_only_start_branches_suspends_once_those_sleep(start_engine: StartEngine) -> None:
    # A branch that gathers branches of its own waits for them: it is not busy, and does not
    # keep the run (a coroutine) alive while every step sleeps.
    class Nested(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def group(name: str) -> Any:
                return await asyncio.gather(step.sleep(f"{name} a", "1 hour"), step.sleep(f"{name} b", "1 hour"))

            return await asyncio.gather(group("x"), group("y"))

    engine = await start_engine(Nested)
    inst = await engine.workflow(Nested).create()
    await wait_for_status(inst, "waiting")
    assert len((await inst.describe()).steps) == 4


# -- results -----------------------------------------------------------------------------------

JSON_VALUE: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": 42,
    "negative": -7,
    "big": 2**53 + 1,
    "float": 2.5,
    "tenth": 0.1,
    "text": 'héllo ✓ "quoted"\nnew line\ttab',
    "empty text": "",
    "list": [1, "two", [3.0, None]],
    "nested": {"k": {"deep": [], "empty": {}}},
}


async def test_step_result_round_trips_through_json_unchanged(start_engine: StartEngine) -> None:
    passes: list[Any] = []

    class RoundTrip(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            value = await step.do("make", lambda: JSON_VALUE)
            passes.append(value)
            await step.sleep("replay", "10 ms")
            return value

    assert (await run_once(start_engine, RoundTrip)).output == JSON_VALUE
    assert passes == [JSON_VALUE, JSON_VALUE]


async def test_step_names_may_hold_any_characters(start_engine: StartEngine) -> None:
    names = ["héllo ✓", 'it\'s "quoted"', "new\nline\ttab", "slash/dot.colon:", " padded ", "日本語"]

    class OddNames(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = [await step.do(name, lambda ctx: ctx.step.name) for name in names]
            await step.sleep("replay", "10 ms")
            return first

    assert (await run_once(start_engine, OddNames)).output == names


async def test_a_step_function_that_is_not_callable_raises_invalid_input_naming_it(start_engine: StartEngine) -> None:
    class NotCallable(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes = []
            odd: list[Any] = [None, 42, "text"]
            for fn in odd:
                try:
                    await step.do(f"odd {fn!r}", fn)
                    outcomes.append("accepted")
                except stepstone.InvalidInputError as exc:
                    outcomes.append("rejected" if repr(fn) in str(exc) else str(exc))
            return outcomes

    assert (await run_once(start_engine, NotCallable)).output == ["rejected"] * 3


@pytest.mark.parametrize("name", ["nul\x00byte", "lone \ud800 surrogate"], ids=["nul", "surrogate"])
async def test_step_name_that_cannot_be_stored_raises_invalid_input_without_running_the_function(
    start_engine: StartEngine, name: str
) -> None:
    calls = Calls()

    class OddName(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do(name, calls.returning("ran"))
            except stepstone.InvalidInputError as exc:
                return ["rejected", repr(name) in str(exc)]
            return "accepted"

    assert (await run_once(start_engine, OddName)).output == ["rejected", True]
    assert calls.log == []


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_result_that_is_not_json_fails_the_step_with_type_error_and_no_retry(start_engine: StartEngine) -> None:
    calls = Calls()
    odd_values: dict[str, Any] = {
        "set": {1, 2},
        "object": object(),
        "int key": {1: "x"},
        "bytes": b"bytes",
        "bool key deep in a tuple": ([{"a": {True: "x"}}],),
        "None key": {None: 1},
        "nested past what JSON writes": nested(100_000),
        "a number past what JSON writes": 10**5000,
    }

    class NotJson(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            outcomes = {}
            for label, value in odd_values.items():
                name = f"make {label}"
                try:
                    await step.do(name, calls.returning(label, value), retries={"limit": 3, "delay": "10 ms"})
                    outcomes[label] = "recorded"
                except StepFailed as exc:
                    outcomes[label] = f"{exc.error_type}, names step: {exc.step == name and name in exc.message}"
            return outcomes

    assert (await run_once(start_engine, NotJson)).output == dict.fromkeys(odd_values, "TypeError, names step: True")
    assert sorted(calls.log) == sorted(odd_values)  # one attempt each


async def test_a_result_reads_back_as_its_json_both_at_once_and_on_replay(start_engine: StartEngine) -> None:
    """A tuple is recorded as a JSON array: the step returns a list at once, as a replay does."""
    value: tuple[Any, ...] = ({"k": (1, 2.5, "x", None, True)}, [{"n": {"m": []}}])
    expected = [{"k": [1, 2.5, "x", None, True]}, [{"n": {"m": []}}]]

    class Tuples(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("tuple", lambda: value)
            await step.sleep("replay", "10 ms")
            return {"first": first, "same": first == expected, "replayed": await step.do("again", lambda: first)}

    output = (await run_once(start_engine, Tuples)).output
    assert output == {"first": expected, "same": True, "replayed": expected}


async def test_result_over_the_size_limit_fails_the_step_with_limit_exceeded_and_no_retry(
    start_engine: StartEngine,
) -> None:
    calls = Calls()

    class Oversize(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            try:
                await step.do("big", calls.returning("big", "x" * 2000), retries={"limit": 3, "delay": "10 ms"})
            except StepFailed as exc:
                return [exc.step, exc.error_type]
            return "no error"

    engine = await start_engine(Oversize, limits=stepstone.Limits(max_value_bytes=1000))
    st = await finish(await engine.workflow(Oversize).create())
    assert st.output == ["big", "stepstone.LimitExceededError"]
    assert calls.count("big") == 1


async def test_an_async_step_goes_on_from_each_of_its_waits_as_a_plain_await_would(start_engine: StartEngine) -> None:
    """A coroutine step runs up to its first wait before its timeout timer is set; from
    there each wait (a bare yield, a timer, a future, a cancellation caught inside) goes
    on as usual."""
    seen: list[str] = []

    class Waits(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def body() -> int:
                seen.append("start")
                await asyncio.sleep(0)
                seen.append("yielded")
                await asyncio.sleep(0.01)
                loop = asyncio.get_running_loop()
                answer: asyncio.Future[int] = loop.create_future()
                loop.call_later(0.01, answer.set_result, 7)
                value = await answer
                try:
                    await asyncio.wait_for(asyncio.sleep(10), 0.01)
                except TimeoutError:
                    seen.append("inner timeout")
                return value

            return await step.do("waits", body, timeout="5 seconds")

    st = await run_once(start_engine, Waits)
    assert (st.status, st.output) == ("complete", 7)
    assert seen == ["start", "yielded", "inner timeout"]


class RunsMade:
    """Counts the runs made from now on, and keeps track of those not yet freed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alive: weakref.WeakSet[replay.Run] = weakref.WeakSet()
        self.made = 0
        make = replay.Run.__init__

        def noted(run: replay.Run, *args: Any, **kwargs: Any) -> None:
            make(run, *args, **kwargs)
            self.alive.add(run)
            self.made += 1

        monkeypatch.setattr(replay.Run, "__init__", noted)


async def test_a_finished_run_is_freed_as_it_ends_not_left_to_the_cycle_collector(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs kept in reference cycles wait for Python's full collection, which then frees
    # them all in one pause, late enough to delay timers firing meanwhile.
    runs = RunsMade(monkeypatch)

    class Usual(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            first = await step.do("first", lambda: 1)
            await step.sleep("nap", "300 ms")  # long enough to suspend: a second run
            approval = await step.wait_for_event("approval", type="approve", timeout="1 hour")
            return [first, approval.payload, await step.do("last", lambda: 2)]

    engine = await start_engine(Usual)
    gc.collect()
    gc.disable()
    try:
        inst = await engine.workflow(Usual).create()
        await until(lambda: runs.made == 2, "the run after the sleep")
        await wait_for_status(inst, "waiting")
        await inst.send_event("approve", "yes")
        assert (await finish(inst)).output == [1, "yes", 2]
        await until(lambda: not runs.alive, f"every run freed ({runs.made} made)")
    finally:
        gc.enable()


async def test_runs_that_fail_steps_or_gather_branches_across_sleeps_are_freed_as_they_end(
    start_engine: StartEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step's failure (its traceback holds the frame that kept it), and the tasks a run
    # gathers (each one's context holds its branch): neither may keep a run in a cycle.
    runs = RunsMade(monkeypatch)

    def refuse() -> None:
        raise NonRetryableError("no")

    class Failing(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            with contextlib.suppress(StepFailed):
                await step.do("refused", refuse)
            await step.do("refused again", refuse)  # escapes: the instance errors

    class Gathering(Workflow):
        async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
            async def branch(i: int) -> int:
                await step.sleep(f"nap {i}", 0.05 if i else 0.3)  # one held here, one long enough to suspend
                return int(await step.do(f"after {i}", lambda: i))

            return sum(await asyncio.gather(branch(0), branch(1), branch(2)))

    engine = await start_engine(Failing, Gathering)
    gc.collect()
    gc.disable()
    try:
        failing = await engine.workflow(Failing).create()
        gathering = await engine.workflow(Gathering).create()
        assert (await finish(failing)).status == "errored"
        assert (await finish(gathering)).output == 3
        await until(lambda: not runs.alive, f"every run freed ({runs.made} made)")
    finally:
        gc.enable()

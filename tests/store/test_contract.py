"""The store contract: every `Store` behaves alike, checked on SQLite and on PostgreSQL.

Times are explicit epoch seconds from T0; nothing here depends on the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    InvalidStateError,
    LeaseLostError,
    StepstoneError,
)
from stepstone.store import from_url
from stepstone.store.base import (
    FIRST_TOKEN,
    Attempt,
    Claim,
    ControlOp,
    Lease,
    RunEnd,
    RunWrite,
    StepKey,
    StepWrite,
    Store,
)

from .support import (
    LEASE,
    T0,
    WF,
    Wakeups,
    claim,
    create,
    do_step,
    end,
    get,
    is_postgres,
    opened,
    raw_execute,
    start,
)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with opened(store_url) as store:
        yield store


# -- creating, reading, listing ---------------------------------------------------------------


async def test_created_instances_are_queued_with_their_params(store: Store) -> None:
    records = await create(store, "a", "b")
    assert [(r.id, r.workflow, r.status, r.params_json) for r in records] == [
        ("a", WF, "queued", '{"id": "a"}'),
        ("b", WF, "queued", '{"id": "b"}'),
    ]
    assert records[0].pk < records[1].pk
    assert (records[0].created_at, records[0].updated_at) == (T0, T0)
    assert (records[0].output_json, records[0].error_json, records[0].started_at) == (None, None, None)
    assert await get(store, "a") == records[0]


async def test_get_of_an_unknown_instance_raises_not_found(store: Store) -> None:
    await create(store, "a")
    with pytest.raises(InstanceNotFoundError, match="'nope'"):
        await get(store, "nope")
    with pytest.raises(InstanceNotFoundError):
        await store.get_instance("other-workflow", "a")


async def test_list_is_newest_first_filtered_by_status_and_paged_by_pk(store: Store) -> None:
    records = await create(store, *(f"i{n}" for n in range(7)))
    await store.control(WF, "i2", "pause", T0)
    await store.control(WF, "i5", "pause", T0)
    await create(store, "elsewhere", workflow="other")

    listed = await store.list_instances(WF, status=None, limit=100, before_pk=None)
    assert [r.id for r in listed] == [f"i{n}" for n in reversed(range(7))]

    first = await store.list_instances(WF, status=None, limit=3, before_pk=None)
    second = await store.list_instances(WF, status=None, limit=3, before_pk=first[-1].pk)
    last = await store.list_instances(WF, status=None, limit=3, before_pk=second[-1].pk)
    assert [r.id for r in first + second + last] == [r.id for r in listed]
    assert await store.list_instances(WF, status=None, limit=3, before_pk=records[0].pk) == []

    paused = await store.list_instances(WF, status="paused", limit=100, before_pk=None)
    assert [r.id for r in paused] == ["i5", "i2"]
    assert [r.id for r in await store.list_instances(WF, status="paused", limit=1, before_pk=paused[0].pk)] == ["i2"]


async def test_status_counts_group_one_workflows_instances(store: Store) -> None:
    await create(store, "a", "b", "c")
    await store.control(WF, "c", "terminate", T0)
    await create(store, "x", workflow="other")
    assert await store.status_counts(WF) == {"queued": 2, "terminated": 1}
    assert await store.status_counts("unknown") == {}


async def test_registered_workflow_names_are_kept_once_sorted(store: Store) -> None:
    assert await store.workflow_names() == []
    await store.register_workflows(["zeta", "alpha"], T0)
    await store.register_workflows(["alpha", "beta", "beta"], T0 + 1)
    assert await store.workflow_names() == ["alpha", "beta", "zeta"]


async def test_an_existing_id_creates_nothing_and_names_the_id(store: Store) -> None:
    await create(store, "a")
    with pytest.raises(InstanceExistsError, match="'a'"):
        await create(store, "new-1", "a", "new-2")
    assert [r.id for r in await store.list_instances(WF, status=None, limit=10, before_pk=None)] == ["a"]


async def test_a_batch_repeating_an_id_creates_nothing(store: Store) -> None:
    with pytest.raises(InstanceExistsError, match="'twice'"):
        await create(store, "once", "twice", "twice")
    assert await store.list_instances(WF, status=None, limit=10, before_pk=None) == []


async def test_ids_are_unique_per_workflow_only(store: Store) -> None:
    (mine,) = await create(store, "order-1")
    (theirs,) = await create(store, "order-1", workflow="other")
    assert mine.pk != theirs.pk
    assert (await store.get_instance("other", "order-1")).workflow == "other"


# -- control: the lifecycle table -------------------------------------------------------------

# How to bring an instance to each status, by the store's own operations.
SETUPS = [
    "queued",
    "running",
    "waiting",
    "paused",
    "paused-from-waiting",
    "waitingForPause",
    "complete",
    "errored",
    "terminated",
]
WAKE = T0 + 3600


async def bring_to(store: Store, setup: str) -> Claim | None:
    """Create instance "x" in the state `setup` names; the lease if a worker holds one."""
    if setup in ("queued", "paused", "terminated"):
        await create(store, "x")
        if setup == "paused":
            await store.control(WF, "x", "pause", T0)
        if setup == "terminated":
            await store.control(WF, "x", "terminate", T0)
        return None
    leased = await start(store, "x")
    if setup in ("waiting", "paused-from-waiting"):
        await end(store, leased, "waiting", wake_at=WAKE, wait_types=("approval",))
        if setup == "paused-from-waiting":
            await store.control(WF, "x", "pause", T0 + 2)
        return None
    if setup == "waitingForPause":
        await store.control(WF, "x", "pause", T0 + 2)
    elif setup == "complete":
        await end(store, leased, "complete", output_json='{"done": true}')
        return None
    elif setup == "errored":
        await end(store, leased, "errored", error_json='{"name": "ValueError", "message": "no"}')
        return None
    return leased


# (op, setup) -> status after; a pair not listed must raise InvalidStateError (SPEC §3).
ALLOWED: dict[tuple[ControlOp, str], str] = {
    ("pause", "queued"): "paused",
    ("pause", "running"): "waitingForPause",
    ("pause", "waiting"): "paused",
    ("resume", "paused"): "queued",
    ("resume", "paused-from-waiting"): "waiting",
    ("resume", "waitingForPause"): "running",
    **{
        ("terminate", s): "terminated"
        for s in ("queued", "running", "waiting", "paused", "paused-from-waiting", "waitingForPause")
    },
    **{("restart", s): "queued" for s in SETUPS},
}
OPS: tuple[ControlOp, ...] = ("pause", "resume", "terminate", "restart")


@pytest.mark.parametrize(("op", "setup"), [(op, s) for op in OPS for s in SETUPS], ids=lambda v: str(v))
async def test_control_follows_the_lifecycle_table(store: Store, op: ControlOp, setup: str) -> None:
    await bring_to(store, setup)
    before = await get(store, "x")
    expected = ALLOWED.get((op, setup))
    if expected is None:
        with pytest.raises(InvalidStateError, match=f"cannot {op}"):
            await store.control(WF, "x", op, T0 + 10)
        assert await get(store, "x") == before
        return
    after = await store.control(WF, "x", op, T0 + 10)
    assert after.status == expected
    assert after == await get(store, "x")
    assert after.updated_at == T0 + 10
    if op == "pause" and expected == "paused":
        assert after.paused_status == before.status
        assert after.wake_at == before.wake_at
    if op == "terminate":
        assert (after.ended_at, after.wake_at, after.paused_status) == (T0 + 10, None, None)
    if op == "restart":
        assert (after.output_json, after.error_json, after.wake_at, after.ended_at) == (None, None, None, None)
        assert await store.history(after.pk) == []


async def test_control_of_an_unknown_instance_raises_not_found(store: Store) -> None:
    for op in OPS:
        with pytest.raises(InstanceNotFoundError):
            await store.control(WF, "ghost", op, T0)


async def test_resume_of_a_paused_waiting_instance_keeps_its_timer(store: Store) -> None:
    await bring_to(store, "paused-from-waiting")
    resumed = await store.control(WF, "x", "resume", T0 + 10)
    assert (resumed.status, resumed.wake_at, resumed.paused_status) == ("waiting", WAKE, None)
    assert await claim(store, now=WAKE - 1) == []
    assert [c.id for c in await claim(store, now=WAKE)] == ["x"]


async def test_a_paused_instance_is_not_claimed_even_when_its_timer_is_due(store: Store) -> None:
    await bring_to(store, "paused-from-waiting")
    assert await claim(store, now=WAKE + 10) == []
    await store.control(WF, "x", "resume", WAKE + 20)
    assert [c.id for c in await claim(store, now=WAKE + 20)] == ["x"]


@pytest.mark.parametrize("op", ["terminate", "restart"])
async def test_terminate_and_restart_revoke_the_running_lease(store: Store, op: ControlOp) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", op, T0 + 1)
    with pytest.raises(LeaseLostError):
        await store.write(RunWrite(leased.pk, leased.token, T0 + 2, steps=[do_step("late")]))
    assert await store.history(leased.pk) == []
    assert await store.renew_leases("w1", {leased.pk: leased.token}, T0 + 100) == {leased.pk}


async def test_leases_read_the_token_and_status_of_leased_instances(store: Store) -> None:
    leased = await start(store, "x")
    await store.create_instances(WF, [("y", "{}")], T0)
    assert await store.leases([leased.pk, 999]) == {leased.pk: (leased.token, "running")}
    assert store.leases_at_once([leased.pk, 999]) in (None, {leased.pk: (leased.token, "running")})
    await store.control(WF, "x", "pause", T0 + 1)
    assert await store.leases([leased.pk]) == {leased.pk: (leased.token, "waitingForPause")}
    await store.control(WF, "x", "terminate", T0 + 2)
    assert await store.leases([leased.pk]) == {}
    assert store.leases_at_once([leased.pk]) in (None, {})
    assert (await store.get_instance(WF, "x")).status == "terminated"  # (a read: nothing changed)


async def test_restart_discards_the_history_and_the_events_taken(store: Store) -> None:
    leased = await start(store, "x")
    seq = await store.send_event(WF, "x", "approval", '{"ok": true}', T0)
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("a"),
                do_step("wait", kind="wait_for_event", result='{"ok": true}', consume_event=seq),
            ],
            end="complete",
            output_json="1",
        )
    )
    restarted = await store.control(WF, "x", "restart", T0 + 2)
    assert (restarted.status, restarted.output_json) == ("queued", None)
    assert await store.history(leased.pk) == []
    assert await store.events(leased.pk) == []
    (again,) = await claim(store, now=T0 + 3)
    assert again.resumed
    assert again.token > leased.token


async def test_restart_from_a_step_keeps_the_steps_before_it(store: Store) -> None:
    leased = await start(store, "x")
    early = await store.send_event(WF, "x", "early", "1", T0)
    late = await store.send_event(WF, "x", "late", "2", T0)
    unused = await store.send_event(WF, "x", "unused", "3", T0)
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("a"),
                do_step("e", kind="wait_for_event", result="1", consume_event=early),
                do_step("b"),
                do_step("b", count=2),
                do_step("l", kind="wait_for_event", result="2", consume_event=late),
                do_step("c"),
            ],
            end="complete",
            output_json="1",
        )
    )

    await store.control(WF, "x", "restart", T0 + 2, from_step=StepKey("do", "b", 2))
    assert [(s.key.name, s.key.count) for s in await store.history(leased.pk)] == [("a", 1), ("e", 1), ("b", 1)]
    events = await store.events(leased.pk)
    assert [(e.seq, e.consumed_by) for e in events] == [
        (early, StepKey("wait_for_event", "e", 1)),
        (unused, None),
    ]
    assert late not in [e.seq for e in events]


async def test_restart_from_a_step_not_in_the_history_changes_nothing(store: Store) -> None:
    leased = await start(store, "x")
    await end(store, leased, "complete", output_json="1")
    before = await get(store, "x")
    with pytest.raises(InvalidInputError, match="'missing'"):
        await store.control(WF, "x", "restart", T0 + 5, from_step=StepKey("do", "missing", 1))
    assert await get(store, "x") == before


async def test_restart_from_a_step_of_another_kind_or_count_is_not_found(store: Store) -> None:
    leased = await start(store, "x")
    await store.write(RunWrite(leased.pk, leased.token, T0 + 1, steps=[do_step("a")], end="complete"))
    for key in (StepKey("sleep", "a", 1), StepKey("do", "a", 2)):
        with pytest.raises(InvalidInputError):
            await store.control(WF, "x", "restart", T0 + 5, from_step=key)
    assert len(await store.history(leased.pk)) == 1


async def test_delete_removes_the_instance_its_steps_and_events(store: Store) -> None:
    leased = await start(store, "x")
    seq = await store.send_event(WF, "x", "t", "1", T0)
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("w", kind="wait_for_event", consume_event=seq),
                do_step("a", attempts=2),
            ],
        )
    )
    await store.send_event(WF, "x", "t", "2", T0)
    await store.delete(WF, "x")
    with pytest.raises(InstanceNotFoundError):
        await get(store, "x")
    assert await store.history(leased.pk) == []
    assert await store.events(leased.pk) == []
    with pytest.raises(LeaseLostError):
        await store.write(RunWrite(leased.pk, leased.token, T0 + 2, steps=[do_step("b")]))
    with pytest.raises(InstanceNotFoundError):
        await store.delete(WF, "x")
    (again,) = await create(store, "x")
    assert again.pk != leased.pk


async def finish_at(store: Store, instance_id: str, at: float, *, workflow: str = WF, errored: bool = False) -> int:
    """Create an instance, run it and end it (complete or errored) at `at`; its pk."""
    await create(store, instance_id, workflow=workflow, now=at - 1)
    (leased,) = (await store.claim("w1", [workflow], 1, at - 1, at + LEASE)).claims
    assert leased.id == instance_id
    await store.write(
        RunWrite(leased.pk, leased.token, at - 0.5, steps=[do_step("a", at=at - 0.5)], end=None),
    )
    await end(store, leased, "errored" if errored else "complete", now=at, output_json="1")
    return leased.pk


async def test_prune_deletes_the_oldest_instances_ended_in_a_status(store: Store) -> None:
    first = await finish_at(store, "first", T0 + 1)
    await finish_at(store, "second", T0 + 2)
    await finish_at(store, "at-the-limit", T0 + 3)
    await finish_at(store, "failed", T0 + 1, errored=True)
    await finish_at(store, "elsewhere", T0 + 1, workflow="other")
    await create(store, "stopped", now=T0)
    await store.control(WF, "stopped", "terminate", T0 + 1)
    await create(store, "waiting-to-run", now=T0)

    assert await store.prune([WF], "complete", T0 + 3, 1) == 1
    with pytest.raises(InstanceNotFoundError):
        await get(store, "first")
    assert await store.history(first) == []
    assert await store.prune([WF], "complete", T0 + 3, 10) == 1
    assert sorted(r.id for r in await store.list_instances(WF, status=None, limit=10, before_pk=None)) == [
        "at-the-limit",
        "failed",
        "stopped",
        "waiting-to-run",
    ]
    assert await store.prune([WF, "other"], "complete", T0 + 10, 10) == 2
    assert await store.prune([WF], "terminated", T0 + 10, 10) == 1
    assert await store.prune([WF], "errored", T0 + 10, 10) == 1
    assert await store.prune([WF], "queued", T0 + 10, 10) == 0
    assert await store.prune([], "complete", T0 + 10, 10) == 0
    assert [r.id for r in await store.list_instances(WF, status=None, limit=10, before_pk=None)] == ["waiting-to-run"]


# -- events -----------------------------------------------------------------------------------


async def test_events_are_kept_and_taken_first_sent_first_by_type(store: Store) -> None:
    leased = await start(store, "x")
    a1 = await store.send_event(WF, "x", "a", '{"n": 1}', T0 + 1)
    b1 = await store.send_event(WF, "x", "b", '{"n": 2}', T0 + 2)
    a2 = await store.send_event(WF, "x", "a", '{"n": 3}', T0 + 3)
    assert a1 < b1 < a2

    first = await store.next_event(leased.pk, "a")
    assert first is not None
    assert (first.seq, first.type, first.payload_json, first.sent_at, first.consumed_by) == (
        a1,
        "a",
        '{"n": 1}',
        T0 + 1,
        None,
    )
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 4,
            steps=[
                do_step("wait a", kind="wait_for_event", result='{"n": 1}', consume_event=a1),
            ],
        )
    )
    second = await store.next_event(leased.pk, "a")
    assert second is not None and second.seq == a2
    assert await store.next_event(leased.pk, "c") is None

    events = await store.events(leased.pk)
    assert [(e.seq, e.type, e.consumed_by) for e in events] == [
        (a1, "a", StepKey("wait_for_event", "wait a", 1)),
        (b1, "b", None),
        (a2, "a", None),
    ]


async def test_taking_an_event_already_taken_loses_the_write(store: Store) -> None:
    leased = await start(store, "x")
    seq = await store.send_event(WF, "x", "a", "1", T0)
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("first", kind="wait_for_event", consume_event=seq),
            ],
        )
    )
    with pytest.raises(LeaseLostError):
        await store.write(
            RunWrite(
                leased.pk,
                leased.token,
                T0 + 2,
                steps=[
                    do_step("other"),
                    do_step("second", kind="wait_for_event", consume_event=seq),
                ],
            )
        )
    assert [s.key.name for s in await store.history(leased.pk)] == ["first"]


async def test_an_event_wakes_a_waiting_instance_at_once(store: Store) -> None:
    leased = await start(store, "x")
    await end(store, leased, "waiting", wake_at=WAKE, wait_types=("approval",))
    assert await claim(store, now=T0 + 5) == []
    await store.send_event(WF, "x", "approval", "true", T0 + 10)
    assert (await get(store, "x")).wake_at == T0 + 10
    (woken,) = await claim(store, now=T0 + 10)
    assert (woken.id, woken.resumed) == ("x", True)


@pytest.mark.parametrize("waits_for", [("approval", "rejection"), ()], ids=["other-types", "no-event"])
async def test_an_event_no_wait_is_for_is_only_kept(store: Store, waits_for: tuple[str, ...]) -> None:
    leased = await start(store, "x")
    await end(store, leased, "waiting", wake_at=WAKE, wait_types=waits_for)
    await store.send_event(WF, "x", "note", "true", T0 + 10)
    assert (await get(store, "x")).wake_at == WAKE
    assert await claim(store, now=T0 + 10) == []
    assert [e.type for e in await store.events(leased.pk)] == ["note"]


async def test_an_instance_waiting_since_before_wait_types_were_kept_wakes_for_any_event(
    store: Store, store_url: str
) -> None:
    leased = await start(store, "x")
    await end(store, leased, "waiting", wake_at=WAKE, wait_types=("approval",))
    raw_execute(store_url, "UPDATE {s}instances SET wait_types = NULL")  # as schema version 3 left it
    await store.send_event(WF, "x", "note", "true", T0 + 10)
    assert [c.id for c in await claim(store, now=T0 + 10)] == ["x"]


async def test_a_paused_run_waiting_for_an_event_already_kept_goes_on_at_once_when_resumed(store: Store) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    await store.send_event(WF, "x", "approval", "true", T0 + 2)  # while running: kept only
    assert await end(store, leased, "paused", now=T0 + 3, wake_at=WAKE, wait_types=("approval",)) == "paused"
    await store.control(WF, "x", "resume", T0 + 4)
    assert [c.id for c in await claim(store, now=T0 + 4)] == ["x"]


async def test_an_event_for_a_paused_waiting_instance_fires_on_resume(store: Store) -> None:
    await bring_to(store, "paused-from-waiting")
    await store.send_event(WF, "x", "approval", "true", T0 + 10)
    assert await claim(store, now=T0 + 10) == []
    await store.control(WF, "x", "resume", T0 + 11)
    assert [c.id for c in await claim(store, now=T0 + 11)] == ["x"]


async def test_an_event_for_a_queued_or_running_instance_is_only_kept(store: Store) -> None:
    leased = await start(store, "r")
    await store.send_event(WF, "r", "t", "1", T0)
    assert (await get(store, "r")).status == "running"
    assert len(await store.events(leased.pk)) == 1
    await create(store, "q")
    await store.send_event(WF, "q", "t", "1", T0)
    assert (await get(store, "q")).wake_at is None


@pytest.mark.parametrize("setup", ["complete", "errored", "terminated"])
async def test_an_ended_instance_refuses_events(store: Store, setup: str) -> None:
    await bring_to(store, setup)
    pk = (await get(store, "x")).pk
    with pytest.raises(InvalidStateError, match="it is " + setup):
        await store.send_event(WF, "x", "t", "1", T0 + 10)
    assert await store.events(pk) == []


async def test_an_event_for_an_unknown_instance_raises_not_found(store: Store) -> None:
    with pytest.raises(InstanceNotFoundError):
        await store.send_event(WF, "ghost", "t", "1", T0)


async def test_a_run_waiting_for_an_event_already_kept_wakes_at_once(store: Store) -> None:
    leased = await start(store, "x")
    await store.send_event(WF, "x", "approval", "true", T0)
    status = await end(store, leased, "waiting", now=T0 + 1, wake_at=WAKE, wait_types=("other", "approval"))
    assert status == "waiting"
    assert (await get(store, "x")).wake_at == T0 + 1
    assert [c.id for c in await claim(store, now=T0 + 1)] == ["x"]


async def test_a_run_waiting_for_other_event_types_keeps_its_timer(store: Store) -> None:
    leased = await start(store, "x")
    await store.send_event(WF, "x", "approval", "true", T0)
    await end(store, leased, "waiting", now=T0 + 1, wake_at=WAKE, wait_types=("rejection",))
    assert (await get(store, "x")).wake_at == WAKE


async def test_an_event_taken_in_the_same_write_does_not_wake_the_run(store: Store) -> None:
    leased = await start(store, "x")
    seq = await store.send_event(WF, "x", "approval", "true", T0)
    await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("approve", kind="wait_for_event", consume_event=seq),
            ],
            end="waiting",
            wake_at=WAKE,
            wait_types=["approval"],
        )
    )
    assert (await get(store, "x")).wake_at == WAKE


# -- claims -----------------------------------------------------------------------------------


async def test_claims_take_due_timers_then_expired_leases_then_queued(store: Store) -> None:
    orphan = await start(store, "orphan", "dead")  # its lease ends at T0 + LEASE
    due = await start(store, "due", "w0")
    await end(store, due, "waiting", wake_at=T0 + 5)
    later = await start(store, "later", "w0")
    await end(store, later, "waiting", wake_at=T0 + 1000)
    await create(store, "new-1", "new-2")

    now = T0 + LEASE + 1
    batch = await store.claim("w2", [WF], 10, now, now + LEASE)
    assert [(c.id, c.resumed) for c in batch.claims] == [
        ("due", True),
        ("orphan", True),
        ("new-1", False),
        ("new-2", False),
    ]
    assert batch.next_wake_at == T0 + 1000
    assert orphan.token != batch.claims[1].token
    for leased in batch.claims:
        record = await get(store, leased.id)
        assert (record.status, record.updated_at) == ("running", now)
        assert record.started_at is not None


async def test_a_claim_may_take_timers_due_a_moment_later_but_never_an_unexpired_lease(store: Store) -> None:
    soon = await start(store, "soon", "w0")
    await end(store, soon, "waiting", wake_at=T0 + 10.03)
    later = await start(store, "later", "w0")
    await end(store, later, "waiting", wake_at=T0 + 10.2)
    await start(store, "busy", "w0", now=T0 + 10 - LEASE + 0.01)  # its lease ends at T0 + 10.01

    batch = await store.claim("w1", [WF], 10, T0 + 10, T0 + 10 + LEASE, due_by=T0 + 10.05)
    assert [c.id for c in batch.claims] == ["soon"]
    assert batch.next_wake_at == T0 + 10.01  # the lease of "busy", not taken early
    assert (await get(store, "busy")).status == "running"
    assert (await get(store, "later")).status == "waiting"
    # Without due_by, only what is due now.
    assert (await store.claim("w1", [WF], 10, T0 + 10.005, T0 + 70)).claims == []


async def test_a_full_claim_batch_asks_to_claim_again_now(store: Store) -> None:
    await create(store, "a", "b", "c")
    batch = await store.claim("w1", [WF], 2, T0, T0 + LEASE)
    assert [c.id for c in batch.claims] == ["a", "b"]
    assert batch.next_wake_at == T0
    rest = await store.claim("w1", [WF], 2, T0, T0 + LEASE)
    assert [c.id for c in rest.claims] == ["c"]
    assert rest.next_wake_at is None


async def test_claims_take_only_the_workflows_asked_for(store: Store) -> None:
    await create(store, "a")
    await create(store, "b", workflow="other")
    await create(store, "c", workflow="third")
    batch = await store.claim("w1", [WF, "other"], 10, T0, T0 + LEASE)
    assert sorted((c.workflow, c.id) for c in batch.claims) == [("orders", "a"), ("other", "b")]
    assert (await store.claim("w1", [], 10, T0, T0 + LEASE)).claims == []


async def test_a_claim_carries_what_the_run_needs(store: Store) -> None:
    (record,) = await create(store, "a", now=T0 - 5)
    (leased,) = await claim(store, now=T0)
    assert (leased.pk, leased.workflow, leased.id, leased.params_json, leased.created_at, leased.resumed) == (
        record.pk,
        WF,
        "a",
        '{"id": "a"}',
        T0 - 5,
        False,
    )
    assert (await get(store, "a")).started_at == T0


async def test_a_claim_brings_the_steps_recorded_so_far(store: Store) -> None:
    first = await start(store, "x")
    await store.write(RunWrite(first.pk, first.token, T0 + 1, steps=[do_step("a"), do_step("b", attempts=2)]))
    await end(store, first, "waiting", now=T0 + 2, wake_at=T0 + 3)
    await create(store, "fresh", now=T0 + 2)
    by_id = {c.id: c for c in await claim(store, "w2", now=T0 + 3)}
    assert by_id["fresh"].steps == ()
    resumed = by_id["x"]
    assert resumed.resumed and resumed.steps is not None
    assert list(resumed.steps) == await store.load_steps(first.pk)
    assert [s.key.name for s in resumed.steps] == ["a", "b"]


async def test_next_wake_at_reports_the_earliest_timer_or_lease_of_other_workers(store: Store) -> None:
    mine = await start(store, "mine", "w1")  # w1's own lease does not count for w1
    assert mine.id == "mine"
    theirs = await start(store, "theirs", "w2", now=T0 + 10)  # lease ends T0 + 10 + LEASE
    assert theirs.id == "theirs"
    assert (await store.claim("w1", [WF], 10, T0 + 20, T0 + 80)).next_wake_at == T0 + 10 + LEASE
    sleeper = await start(store, "sleeper", "w3", now=T0 + 20)
    await end(store, sleeper, "waiting", now=T0 + 21, wake_at=T0 + 30)
    assert (await store.claim("w1", [WF], 10, T0 + 22, T0 + 80)).next_wake_at == T0 + 30


async def test_an_expired_lease_is_taken_over_and_the_old_worker_is_fenced_off(store: Store) -> None:
    old = await start(store, "x", "dead")
    assert await claim(store, "w2", now=T0 + LEASE - 1) == []
    (new,) = await claim(store, "w2", now=T0 + LEASE + 1)
    assert new.token > old.token and new.resumed
    with pytest.raises(LeaseLostError):
        await store.write(RunWrite(old.pk, old.token, T0 + LEASE + 2, steps=[do_step("stale")]))
    assert await store.write(RunWrite(new.pk, new.token, T0 + LEASE + 2, steps=[do_step("fresh")])) == "running"
    assert [s.key.name for s in await store.history(new.pk)] == ["fresh"]


async def test_a_pause_pending_on_a_dead_worker_takes_effect_when_its_lease_expires(store: Store) -> None:
    await start(store, "x", "dead")
    await store.control(WF, "x", "pause", T0 + 1)
    batch = await store.claim("w2", [WF], 10, T0 + 5, T0 + 5 + LEASE)
    assert (batch.claims, batch.next_wake_at) == ([], T0 + LEASE)
    assert (await get(store, "x")).status == "waitingForPause"

    assert await claim(store, "w2", now=T0 + LEASE + 1) == []
    record = await get(store, "x")
    assert (record.status, record.paused_status, record.updated_at) == ("paused", "queued", T0 + LEASE + 1)
    await store.control(WF, "x", "resume", T0 + LEASE + 2)
    assert [c.id for c in await claim(store, "w2", now=T0 + LEASE + 2)] == ["x"]


async def test_instances_created_under_a_lease_run_at_once_and_the_rest_are_queued(store: Store) -> None:
    lease = Lease("w1", T0 + LEASE, 2)
    records = await store.create_instances(WF, [(i, "{}") for i in ("a", "b", "c")], T0, lease)
    assert [(r.id, r.status, r.started_at, r.lease_expires) for r in records] == [
        ("a", "running", T0, T0 + LEASE),
        ("b", "running", T0, T0 + LEASE),
        ("c", "queued", None, None),
    ]
    assert [c.id for c in await claim(store, "w2", lease=10 * LEASE)] == ["c"]  # the leased ones are not claimable
    first = records[0]
    write = RunWrite(first.pk, FIRST_TOKEN, T0 + 1, steps=[do_step("s")], end="complete", output_json="1")
    assert await store.write(write) == "complete"
    (taken,) = await claim(store, "w2", now=T0 + LEASE + 1)  # b's lease lapsed: its worker died
    assert (taken.id, taken.resumed) == ("b", True)
    with pytest.raises(LeaseLostError):
        await store.write(RunWrite(records[1].pk, FIRST_TOKEN, T0 + LEASE + 2, steps=[do_step("stale")]))


async def test_a_leased_create_of_an_existing_id_creates_nothing(store: Store) -> None:
    await create(store, "a")
    with pytest.raises(InstanceExistsError, match="'a'"):
        await store.create_instances(WF, [("new", "{}"), ("a", "{}")], T0, Lease("w1", T0 + LEASE, 2))
    assert [r.id for r in await store.list_instances(WF, status=None, limit=10, before_pk=None)] == ["a"]


async def test_creates_committed_together_fail_alone_on_an_existing_id(store: Store) -> None:
    await create(store, "a")
    lease = Lease("w1", T0 + LEASE, 1)
    results = await asyncio.gather(
        store.create_instances(WF, [("b", "{}")], T0, lease),
        store.create_instances(WF, [("a", "{}")], T0, lease),
        store.create_instances(WF, [("c", "{}")], T0),
        return_exceptions=True,
    )
    assert [r.id for r in results[0]] == ["b"]  # type: ignore[union-attr]
    assert isinstance(results[1], InstanceExistsError) and "'a'" in str(results[1])
    assert [r.id for r in results[2]] == ["c"]  # type: ignore[union-attr]
    listed = await store.list_instances(WF, status=None, limit=10, before_pk=None)
    assert sorted(r.id for r in listed) == ["a", "b", "c"]


async def test_a_leased_create_wakes_subscribers_only_for_instances_left_queued(pg_url: str) -> None:
    # (PostgreSQL only: SQLite has no cross-process wakeups, its workers poll.)
    async with opened(pg_url) as worker, opened(pg_url) as client:
        wakeups = Wakeups()
        await worker.subscribe_wakeups(wakeups)
        await client.create_instances(WF, [("a", "{}")], T0, Lease("w1", T0 + LEASE, 1))
        await client.create_instances(WF, [("b", "{}"), ("c", "{}")], T0, Lease("w1", T0 + LEASE, 1))
        assert await wakeups.arrive()
        await asyncio.sleep(0.3)
        assert wakeups.count == 1


async def test_concurrent_claimers_never_share_an_instance(store_url: str) -> None:
    async with opened(store_url) as setup:
        await setup.create_instances(WF, [(f"i{n}", "{}") for n in range(120)], T0)

    async def claimer(store: Store, worker: str) -> list[int]:
        taken: list[int] = []
        while True:
            batch = await store.claim(worker, [WF], 3, T0, T0 + LEASE)
            if not batch.claims:
                return taken
            taken += [c.pk for c in batch.claims]

    async with opened(store_url) as a, opened(store_url) as b, opened(store_url) as c:
        results = await asyncio.gather(*(claimer(s, f"{s_n}-{k}") for s_n, s in enumerate((a, b, c)) for k in range(4)))
        leftovers = await a.claim("last", [WF], 1000, T0, T0 + LEASE)
    taken = [pk for result in results for pk in result] + [c.pk for c in leftovers.claims]
    assert len(taken) == len(set(taken)) == 120


# -- writes -----------------------------------------------------------------------------------


async def test_a_write_records_steps_with_their_attempt_log(store: Store) -> None:
    leased = await start(store, "x")
    retrying = StepWrite(
        StepKey("do", "flaky", 1),
        "waiting",
        T0,
        attempts=1,
        due_at=T0 + 10,
        error_type="ValueError",
        error_message="boom",
        new_attempts=[Attempt(1, T0, T0 + 0.25, "error", "ValueError", "boom")],
    )
    status = await store.write(
        RunWrite(
            leased.pk,
            leased.token,
            T0 + 1,
            steps=[
                do_step("a"),
                do_step("nap", kind="sleep", status="waiting", result=None),
                retrying,
            ],
        )
    )
    assert status == "running"
    assert (await get(store, "x")).updated_at == T0 + 1

    done = StepWrite(
        StepKey("do", "flaky", 1),
        "complete",
        T0 + 99,
        result_json='"ok"',
        attempts=2,
        ended_at=T0 + 11,
        new_attempts=[Attempt(2, T0 + 10, T0 + 11, "ok")],
    )
    await store.write(RunWrite(leased.pk, leased.token, T0 + 12, steps=[done]))

    history = await store.history(leased.pk)
    assert [(s.key, s.status) for s in history] == [
        (StepKey("do", "a", 1), "complete"),
        (StepKey("sleep", "nap", 1), "waiting"),
        (StepKey("do", "flaky", 1), "complete"),
    ]
    assert history[0].seq < history[1].seq < history[2].seq
    flaky = history[2]
    assert (flaky.result_json, flaky.attempts, flaky.due_at, flaky.error_type, flaky.ended_at) == (
        '"ok"',
        2,
        None,
        None,
        T0 + 11,
    )
    assert flaky.started_at == T0  # kept from the first record
    assert flaky.attempt_log == (
        Attempt(1, T0, T0 + 0.25, "error", "ValueError", "boom"),
        Attempt(2, T0 + 10, T0 + 11, "ok", None, None),
    )
    loaded = await store.load_steps(leased.pk)
    assert [s.key for s in loaded] == [s.key for s in history]
    assert all(s.attempt_log == () for s in loaded)
    assert loaded[2].result_json == '"ok"'


async def test_a_step_done_at_its_first_attempt_reads_back_with_that_attempt(store: Store) -> None:
    leased = await start(store, "x")
    once = StepWrite(StepKey("do", "once", 1), "complete", T0, '"ok"', attempts=1, ended_at=T0 + 0.5)
    await store.write(RunWrite(leased.pk, leased.token, T0 + 1, steps=[once]))
    (recorded,) = await store.history(leased.pk)
    assert recorded.attempt_log == (Attempt(1, T0, T0 + 0.5, "ok"),)
    (loaded,) = await store.load_steps(leased.pk)
    assert loaded.attempt_log == ()


async def test_values_and_times_survive_the_round_trip_exactly(store: Store) -> None:
    leased = await start(store, "x")
    odd = '{"text": "caf\\u00e9 ☕ \\"quoted\\" %s {s}", "n": 0.1}'
    at = 1_700_000_000.123456789
    step = StepWrite(
        StepKey("do", "naïve %s {s} 'name'", 3),
        "complete",
        at,
        result_json=odd,
        attempts=1,
        ended_at=at + 1e-6,
        new_attempts=[Attempt(1, at, at + 1e-6, "ok", None, "é")],
    )
    await store.write(RunWrite(leased.pk, leased.token, at, steps=[step]))
    (recorded,) = await store.history(leased.pk)
    assert (recorded.key, recorded.result_json, recorded.started_at, recorded.ended_at) == (
        step.key,
        odd,
        at,
        at + 1e-6,
    )
    assert recorded.attempt_log == (Attempt(1, at, at + 1e-6, "ok", None, "é"),)


async def test_where_a_step_was_called_is_kept_from_its_first_write(store: Store) -> None:
    leased = await start(store, "x")
    key = StepKey("do", "fetch", 2)
    first = StepWrite(key, "waiting", T0, attempts=1, due_at=T0 + 5, branch="0.1#1")
    plain = StepWrite(StepKey("do", "fetch", 1), "complete", T0, "1", attempts=1, ended_at=T0)
    await store.write(RunWrite(leased.pk, leased.token, T0, steps=[plain, first]))
    # Later writes of the step do not carry it (and could not change it).
    done = StepWrite(key, "complete", T0, "2", attempts=2)
    await store.write(RunWrite(leased.pk, leased.token, T0 + 6, steps=[done]))
    for steps in (await store.load_steps(leased.pk), await store.history(leased.pk)):
        assert [(s.key, s.status, s.branch) for s in steps] == [
            (StepKey("do", "fetch", 1), "complete", None),
            (key, "complete", "0.1#1"),
        ]
    await end(store, leased, "waiting", now=T0 + 7, wake_at=T0 + 8)
    (resumed,) = await claim(store, "w2", now=T0 + 8)
    assert [s.branch for s in resumed.steps or ()] == [None, "0.1#1"]


async def test_a_write_with_a_stale_token_changes_nothing(store: Store) -> None:
    leased = await start(store, "x")
    seq = await store.send_event(WF, "x", "t", "1", T0)
    before = await get(store, "x")
    stale = RunWrite(
        leased.pk,
        leased.token + 1,
        T0 + 1,
        steps=[
            do_step("a"),
            do_step("w", kind="wait_for_event", consume_event=seq),
        ],
        end="complete",
        output_json="1",
    )
    with pytest.raises(LeaseLostError, match="no longer leased"):
        await store.write(stale)
    assert await get(store, "x") == before
    assert await store.history(leased.pk) == []
    assert [e.consumed_by for e in await store.events(leased.pk)] == [None]


@pytest.mark.parametrize(
    ("end_as", "wake_at", "output", "error", "ended_at"),
    [
        ("complete", None, '{"url": "u"}', None, T0 + 1),
        ("errored", None, None, '{"name": "E"}', T0 + 1),
        ("waiting", WAKE, None, None, None),
        ("queued", None, None, None, None),
    ],
    ids=["complete", "errored", "waiting", "queued"],
)
async def test_a_run_that_stops_releases_its_lease(
    store: Store, end_as: RunEnd, wake_at: float | None, output: str | None, error: str | None, ended_at: float | None
) -> None:
    leased = await start(store, "x")
    assert await end(store, leased, end_as, wake_at=wake_at, output_json=output, error_json=error) == end_as
    expected = (end_as, output, error, wake_at, ended_at)
    record = await get(store, "x")
    assert (record.status, record.output_json, record.error_json, record.wake_at, record.ended_at) == expected
    assert await store.renew_leases("w1", {leased.pk: leased.token}, T0 + 100) == {leased.pk}


async def test_a_run_stopping_for_a_pause_is_paused_and_resumes_to_its_timer(store: Store) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    assert await end(store, leased, "paused", now=T0 + 2, wake_at=WAKE) == "paused"
    record = await get(store, "x")
    assert (record.status, record.paused_status, record.wake_at) == ("paused", "waiting", WAKE)
    assert (await store.control(WF, "x", "resume", T0 + 3)).status == "waiting"


@pytest.mark.parametrize(("wake_at", "status"), [(WAKE, "waiting"), (None, "queued")])
async def test_a_run_stopping_for_a_pause_withdrawn_meanwhile_goes_on(
    store: Store, wake_at: float | None, status: str
) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    await store.control(WF, "x", "resume", T0 + 2)
    assert await end(store, leased, "paused", now=T0 + 3, wake_at=wake_at) == status
    record = await get(store, "x")
    assert (record.status, record.paused_status, record.wake_at) == (status, None, wake_at)


@pytest.mark.parametrize(
    ("end_as", "wake_at", "paused_status"), [("waiting", WAKE, "waiting"), ("queued", None, "queued")]
)
async def test_a_pause_asked_during_a_step_takes_effect_when_the_run_stops(
    store: Store, end_as: RunEnd, wake_at: float | None, paused_status: str
) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    assert await store.write(RunWrite(leased.pk, leased.token, T0 + 2, steps=[do_step("a")])) == "waitingForPause"
    assert await end(store, leased, end_as, now=T0 + 3, wake_at=wake_at) == "paused"
    record = await get(store, "x")
    assert (record.status, record.paused_status, record.wake_at) == ("paused", paused_status, wake_at)
    resumed = await store.control(WF, "x", "resume", T0 + 4)
    assert resumed.status == end_as


async def test_a_run_that_completes_while_a_pause_is_pending_completes(store: Store) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    assert await end(store, leased, "complete", output_json="1") == "complete"


async def test_resume_cancels_a_pending_pause(store: Store) -> None:
    leased = await start(store, "x")
    await store.control(WF, "x", "pause", T0 + 1)
    await store.control(WF, "x", "resume", T0 + 2)
    assert await store.write(RunWrite(leased.pk, leased.token, T0 + 3, steps=[do_step("a")])) == "running"
    assert await end(store, leased, "waiting", wake_at=WAKE) == "waiting"


# -- group commit -----------------------------------------------------------------------------


async def test_many_concurrent_writes_all_land(store: Store) -> None:
    await store.create_instances(WF, [(f"i{n}", "{}") for n in range(150)], T0)
    leases = await claim(store, limit=150)
    statuses = await asyncio.gather(
        *(store.write(RunWrite(c.pk, c.token, T0 + 1, steps=[do_step("a"), do_step("b", attempts=3)])) for c in leases)
    )
    assert statuses == ["running"] * 150
    ends = await asyncio.gather(*(end(store, c, "complete", now=T0 + 2, output_json=f'"{c.id}"') for c in leases))
    assert ends == ["complete"] * 150
    for c in leases[::15]:
        assert [(s.key.name, len(s.attempt_log)) for s in await store.history(c.pk)] == [("a", 1), ("b", 3)]
        assert (await get(store, c.id)).output_json == f'"{c.id}"'
    assert await store.status_counts(WF) == {"complete": 150}


async def test_one_failing_write_does_not_sink_the_writes_committed_with_it(store: Store) -> None:
    await store.create_instances(WF, [(f"i{n}", "{}") for n in range(40)], T0)
    leases = await claim(store, limit=40)
    good, stale, taker = leases[:30], leases[30:39], leases[39]
    seq = await store.send_event(WF, taker.id, "t", "1", T0)

    jobs: list[Awaitable[object]] = [
        store.write(RunWrite(c.pk, c.token, T0 + 1, steps=[do_step("a")], end="complete")) for c in good
    ]
    jobs += [store.write(RunWrite(c.pk, c.token - 1, T0 + 1, steps=[do_step("a")], end="complete")) for c in stale]
    jobs += [
        create(store, "fresh", "i5"),
        store.control(WF, "ghost", "pause", T0 + 1),
        store.control(WF, "i31", "resume", T0 + 1),
        store.write(
            RunWrite(
                taker.pk,
                taker.token,
                T0 + 1,
                steps=[
                    do_step("takes", kind="wait_for_event", consume_event=seq),
                    do_step("takes-again", kind="wait_for_event", consume_event=seq),
                ],
            )
        ),
        create(store, "new"),
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)

    assert results[:30] == ["complete"] * 30
    assert all(isinstance(r, LeaseLostError) for r in results[30:39])
    assert [type(r) for r in results[39:43]] == [
        InstanceExistsError,
        InstanceNotFoundError,
        InvalidStateError,
        LeaseLostError,
    ]
    created = results[43]
    assert isinstance(created, list)
    assert [r.id for r in created] == ["new"]
    assert await store.status_counts(WF) == {"complete": 30, "running": 10, "queued": 1}
    for c in [*stale, taker]:
        assert await store.history(c.pk) == []
    assert [e.consumed_by for e in await store.events(taker.pk)] == [None]
    with pytest.raises(InstanceNotFoundError):
        await get(store, "fresh")


# -- leases and workers -----------------------------------------------------------------------


async def test_renewing_leases_reports_those_no_longer_held(store: Store) -> None:
    await store.create_instances(WF, [(i, "{}") for i in ("kept", "terminated", "taken", "deleted")], T0)
    leases = {c.id: c for c in await claim(store, "w1", now=T0, lease=10)}
    await store.control(WF, "terminated", "terminate", T0 + 1)
    await store.delete(WF, "deleted")
    assert await store.renew_leases("w1", {leases["kept"].pk: leases["kept"].token}, T0 + 30) == set()
    (taken,) = await claim(store, "w2", now=T0 + 11)  # "kept" was renewed, "taken" expired
    assert taken.id == "taken"

    tokens = {c.pk: c.token for c in leases.values()}
    lost = await store.renew_leases("w1", tokens, T0 + 40)
    assert lost == {leases[i].pk for i in ("terminated", "taken", "deleted")}
    assert await store.renew_leases("w2", {leases["kept"].pk: leases["kept"].token}, T0 + 40) == {leases["kept"].pk}
    assert await store.renew_leases("w1", {}, T0 + 40) == set()
    assert await claim(store, "w3", now=T0 + 35) == []


async def test_the_worker_registry_tracks_workers_by_host(store: Store) -> None:
    await store.worker_seen("w1", "host-a", 101, T0)
    await store.worker_seen("w2", "host-a", 102, T0)
    await store.worker_seen("w3", "host-b", 103, T0)
    await store.worker_seen("w1", "host-a", 101, T0 + 5)
    assert sorted(await store.workers_on_host("host-a")) == [("w1", 101), ("w2", 102)]
    await store.forget_worker("w1")
    assert await store.workers_on_host("host-a") == [("w2", 102)]
    assert await store.workers_on_host("host-c") == []


async def test_expiring_dead_workers_frees_their_leases_at_once(store: Store) -> None:
    await store.create_instances(WF, [(i, "{}") for i in ("a", "b", "c")], T0)
    await store.worker_seen("dead", "host", 1, T0)
    await store.worker_seen("alive", "host", 2, T0)
    mine = await store.claim("dead", [WF], 2, T0, T0 + 1000)
    await store.claim("alive", [WF], 1, T0, T0 + 1000)
    assert await store.expire_workers(["dead", "never-seen"], T0 + 5) == 2
    assert await store.expire_workers([], T0 + 5) == 0
    assert await store.workers_on_host("host") == [("alive", 2)]
    taken = await claim(store, "w2", now=T0 + 5)
    assert sorted(c.id for c in taken) == sorted(c.id for c in mine.claims)


# -- schema -----------------------------------------------------------------------------------


async def test_reopening_a_store_keeps_its_data_and_migrates_nothing(store_url: str) -> None:
    async with opened(store_url) as first:
        await create(first, "a")
    async with opened(store_url) as second, opened(store_url) as third:
        assert [r.id for r in await second.list_instances(WF, status=None, limit=10, before_pk=None)] == ["a"]
        await create(third, "b")


async def test_a_database_newer_than_the_code_is_refused(store_url: str) -> None:
    async with opened(store_url):
        pass
    raw_execute(store_url, "INSERT INTO {s}schema_version (version) VALUES (999)")
    store = from_url(store_url)
    with pytest.raises(StepstoneError, match="version 999, newer"):
        await store.open()
    await store.close()  # a failed open leaves nothing open: closing is harmless


async def test_a_store_that_is_not_open_says_so(store_url: str) -> None:
    store = from_url(store_url)
    with pytest.raises(StepstoneError, match="not open"):
        await store.get_instance(WF, "a")
    with pytest.raises(StepstoneError, match="not open"):
        await store.create_instances(WF, [("a", "{}")], T0)


# -- wakeups ----------------------------------------------------------------------------------


async def leased_by_a_dead_worker(store: Store) -> Claim:
    await store.worker_seen("dead", "host", 1, T0)
    return await start(store, "x", "dead")


async def waiting(store: Store, *, paused: bool = False) -> None:
    await end(store, await start(store, "x"), "waiting", wake_at=WAKE, wait_types=("t",))
    if paused:
        await store.control(WF, "x", "pause", T0 + 2)


async def prepare(store: Store, trigger: str) -> Callable[[], Awaitable[object]]:
    """Bring instance "x" to the state that `trigger` acts on; the action that makes work runnable."""
    if trigger == "create":
        return lambda: create(store, "new")
    if trigger == "event":
        await waiting(store)
        return lambda: store.send_event(WF, "x", "t", "1", T0 + 3)
    if trigger == "resume":
        await waiting(store, paused=True)
        return lambda: store.control(WF, "x", "resume", T0 + 3)
    if trigger == "restart":
        await bring_to(store, "complete")
        return lambda: store.control(WF, "x", "restart", T0 + 3)
    leased = await leased_by_a_dead_worker(store)
    if trigger == "run-ends":
        return lambda: end(store, leased, "queued", now=T0 + 3)
    assert trigger == "worker-expired"
    return lambda: store.expire_workers(["dead"], T0 + 3)


@pytest.mark.parametrize("trigger", ["create", "event", "resume", "restart", "run-ends", "worker-expired"])
async def test_work_made_runnable_elsewhere_wakes_subscribers(store_url: str, trigger: str) -> None:
    async with opened(store_url) as worker, opened(store_url) as client:
        make_runnable = await prepare(client, trigger)
        wakeups = Wakeups()
        await worker.subscribe_wakeups(wakeups)  # listening from here on: the setup's wakeups are not heard
        await make_runnable()
        if is_postgres(store_url):
            assert await wakeups.arrive(), f"no wakeup after {trigger}"
        else:  # SQLite has no notifications: subscribing does nothing, workers poll
            assert wakeups.count == 0

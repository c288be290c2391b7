"""Handles on workflows and their instances: create, inspect and steer (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stepstone import clock, durations, serialization
from stepstone.durations import to_datetime
from stepstone.errors import InvalidInputError, NoSuchIdError
from stepstone.serialization import JSON, check_id
from stepstone.store.base import (
    STATUSES,
    STEP_KINDS,
    InstanceRecord,
    Status,
    StepKey,
    StepRecord,
    is_terminal,
    observed_status,
)

if TYPE_CHECKING:
    from stepstone.engine import Engine

_MAX_PAGE = 1000
_MAX_INT64 = 2**63 - 1
"""The largest integer both stores hold (a cursor, a step's occurrence number)."""
_CURSOR = re.compile("[0-9]+")


@dataclass(frozen=True)
class InstanceStatus:
    """An instance's status, and its output (complete) or error (errored)."""

    status: Status
    output: JSON = None
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class AttemptDetail:
    attempt: int
    started: datetime
    ended: datetime
    outcome: str
    """ok, error or timeout."""
    error: dict[str, str] | None


@dataclass(frozen=True)
class StepDetail:
    """One step of an instance's history."""

    kind: str
    name: str
    count: int
    status: str
    """complete, failed, or waiting (a sleep, an event wait, a wait before a retry)."""
    started: datetime
    ended: datetime | None
    due: datetime | None
    """When a sleep ends, an event wait times out, or the next retry is due."""
    result: JSON
    error: dict[str, str] | None
    attempts: list[AttemptDetail]


@dataclass(frozen=True)
class InstanceDetail:
    """Everything known of an instance: its status, params, result and step history."""

    id: str
    workflow: str
    status: Status
    params: JSON
    output: JSON
    error: dict[str, str] | None
    created: datetime
    updated: datetime
    started: datetime | None
    ended: datetime | None
    wake: datetime | None
    steps: list[StepDetail]

    def as_dict(self, *, steps: bool = True) -> dict[str, Any]:
        """Plain data (datetimes kept), the one shape of `describe --json` and the HTTP API.

        JSON values (params, output, results) are the detail's own, not copies: a copy made
        as dataclasses.asdict does, one call deeper per level, would fail on a value nested
        a few hundred levels deep, which JSON itself reads and writes."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "steps"}
        if steps:
            data["steps"] = [_shallow(step) | {"attempts": [_shallow(a) for a in step.attempts]} for step in self.steps]
        return data


def _shallow(detail: Any) -> dict[str, Any]:
    """A detail record's fields as a dict, each value as it is."""
    return {f.name: getattr(detail, f.name) for f in fields(detail)}


class InstanceList(list["Instance"]):
    """A page of instances, newest first; pass `next_cursor` to `list()` for the next page."""

    def __init__(self, items: Iterable[Instance], next_cursor: str | None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor


def _error(text: str | None) -> dict[str, str] | None:
    return None if text is None else dict(json.loads(text))


def _status(record: InstanceRecord) -> InstanceStatus:
    return status_of(observed_status(record, clock.now()), record.output_json, record.error_json)


def status_of(status: Status, output_json: str | None, error_json: str | None) -> InstanceStatus:
    return InstanceStatus(status, serialization.loads(output_json), _error(error_json))


def _maybe_time(epoch: float | None) -> datetime | None:
    return None if epoch is None else to_datetime(epoch)


def _step_detail(step: StepRecord) -> StepDetail:
    error = None if step.error_type is None else {"name": step.error_type, "message": step.error_message or ""}
    return StepDetail(
        kind=step.key.kind,
        name=step.key.name,
        count=step.key.count,
        status=step.status,
        started=to_datetime(step.started_at),
        ended=_maybe_time(step.ended_at),
        due=_maybe_time(step.due_at),
        result=serialization.loads(step.result_json),
        error=error if step.status != "complete" else None,
        attempts=[
            AttemptDetail(
                a.attempt,
                to_datetime(a.started_at),
                to_datetime(a.ended_at),
                a.outcome,
                None if a.error_type is None else {"name": a.error_type, "message": a.error_message or ""},
            )
            for a in step.attempt_log
        ],
    )


_FIRST_WAIT_PAUSE = 0.005
_MAX_WAIT_PAUSE = 0.25
"""Longest pause of `Instance.wait` between two reads, when no change in this process wakes it."""


def detail_of(record: InstanceRecord, history: Sequence[StepRecord] = ()) -> InstanceDetail:
    """The InstanceDetail of a record already read (with `history`, its steps), as `describe` gives it."""
    return InstanceDetail(
        id=record.id,
        workflow=record.workflow,
        status=observed_status(record, clock.now()),
        params=serialization.loads(record.params_json),
        output=serialization.loads(record.output_json),
        error=_error(record.error_json),
        created=to_datetime(record.created_at),
        updated=to_datetime(record.updated_at),
        started=_maybe_time(record.started_at),
        ended=_maybe_time(record.ended_at),
        wake=_maybe_time(record.wake_at),
        steps=[_step_detail(step) for step in history],
    )


async def workflow_rows(engine: Engine) -> list[dict[str, object]]:
    """Every workflow an Engine recorded, with its instance counts by status, every status
    named (GET /workflows, `stepstone workflows list --json`)."""
    rows: list[dict[str, object]] = []
    for name in await engine.store.workflow_names():
        counts = await engine.store.status_counts(name, now=clock.now())
        rows.append({"name": name, "counts": {status: counts.get(status, 0) for status in STATUSES}})
    return rows


def cursor_position(cursor: object) -> int:
    """Where a page's `next_cursor` says the next page starts; InvalidInputError if it is no cursor."""
    if not isinstance(cursor, str) or len(cursor) > 19 or not _CURSOR.fullmatch(cursor) or int(cursor) > _MAX_INT64:
        raise InvalidInputError(f"invalid cursor {cursor!r}: pass the next_cursor of a previous page")
    return int(cursor)


class Instance:
    """A handle on one workflow instance."""

    def __init__(self, engine: Engine, record: InstanceRecord) -> None:
        self._engine = engine
        self._pk = record.pk
        self.id: str = record.id
        self.workflow: str = record.workflow

    def __repr__(self) -> str:
        return f"<Instance {self.workflow}/{self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instance) and (self.workflow, self.id) == (other.workflow, other.id)

    def __hash__(self) -> int:
        return hash((self.workflow, self.id))

    async def _record(self) -> InstanceRecord:
        return await self._engine.store.get_instance(self.workflow, self.id)

    async def status(self) -> InstanceStatus:
        """The current status, with the output or error once it has ended."""
        return _status(await self._record())

    async def describe(self, *, steps: bool = True) -> InstanceDetail:
        """Status, params, output or error, and (unless steps=False) the step history with every attempt."""
        record = await self._record()
        return detail_of(record, await self._engine.store.history(record.pk) if steps else ())

    async def send_event(self, type: str, payload: JSON = None) -> None:
        """Send an event; the first wait for its `type` takes it (now or later)."""
        check_id(type, what="event type")
        payload_json = serialization.dumps_input(payload, self._engine.limits, what=f"payload of event {type!r}")
        await self._engine.store.send_event(self.workflow, self.id, type, payload_json, clock.now())
        self._engine.poke(self._pk)

    async def pause(self) -> None:
        """Stop before the next step (a running step finishes first: `waitingForPause`)."""
        record = await self._engine.store.control(self.workflow, self.id, "pause", clock.now())
        if record.status == "waitingForPause":
            self._engine.hold(self._pk, True)  # a run here stops before its next step

    async def resume(self) -> None:
        """Continue a paused instance (or cancel a pending pause)."""
        await self._engine.store.control(self.workflow, self.id, "resume", clock.now())
        self._engine.hold(self._pk, False)
        self._engine.wake()

    async def terminate(self) -> None:
        """End the instance for good."""
        await self._engine.store.control(self.workflow, self.id, "terminate", clock.now())
        self._engine.revoke(self._pk)

    async def restart(self, from_step: str | None = None, count: int = 1, type: str = "do") -> None:
        """Run again from the start with the same params, discarding the step history.

        With `from_step`, keep what was recorded before that step (its `count`-th
        occurrence, of kind `type`: do, sleep or wait_for_event) and run again from it.
        """
        key = None
        if from_step is not None:
            if not isinstance(from_step, str):
                raise InvalidInputError(f"invalid from_step {from_step!r}: expected a step's name (a str)")
            if type not in STEP_KINDS:
                raise InvalidInputError(f"invalid step type {type!r}: expected one of {', '.join(STEP_KINDS)}")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_INT64:
                raise InvalidInputError(f"invalid step count {count!r}: expected an integer from 1 to {_MAX_INT64}")
            key = StepKey(type, from_step, count)
        elif (count, type) != (1, "do"):
            raise InvalidInputError(
                f"restart(count={count!r}, type={type!r}) without from_step: they name the step to restart "
                "from, so give from_step too"
            )
        await self._engine.store.control(self.workflow, self.id, "restart", clock.now(), from_step=key)
        self._engine.revoke(self._pk)
        self._engine.wake()

    async def delete(self) -> None:
        """Remove the instance and its history, stopping it first."""
        await self._engine.store.delete(self.workflow, self.id)
        self._engine.revoke(self._pk)

    async def wait(self, timeout: float | None = None) -> InstanceStatus:
        """Wait until the instance is complete, errored or terminated; TimeoutError after `timeout` s.

        While a run of it in this process goes on, this waits for that run's end alone (no
        read, and no wakeup by other instances' runs). Otherwise it reads the status at
        growing intervals, up to a quarter of a second, each drawn a little at random so
        that many waits do not read all at once, and a run of it starting in this process
        (its timer due, an event come) ends the interval: the wait then watches that run.
        """
        limit = None if timeout is None else durations.seconds(timeout, what="wait timeout")
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        pause = _FIRST_WAIT_PAUSE
        # The last pause ran out: read the status even if a run here goes on (another
        # process may have ended the instance, its lease lost).
        looked = False
        while True:
            # Watched before the status is read, so that a run here starting or ending in between is seen.
            ended = self._engine.watch_run(self._pk)
            try:
                status: InstanceStatus | None = None
                if ended is not None and self._engine.runs_here(self._pk) and not looked:
                    pause = _MAX_WAIT_PAUSE
                else:
                    status = await self.status()
                    if is_terminal(status.status):
                        return status
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    state = "running" if status is None else status.status
                    raise TimeoutError(
                        f"instance {self.id!r} of {self.workflow!r} did not end within {limit:g} s (it is {state})"
                    )
                nap = pause * random.uniform(0.75, 1.0)
                if remaining is not None:
                    nap = min(nap, remaining)
                if ended is None:
                    await asyncio.sleep(nap)
                else:
                    await asyncio.wait([ended], timeout=nap)
                if ended is not None and ended.done():
                    final = ended.result()
                    if final is not None:
                        return final  # ended by a run here: what it recorded, without a read
                    looked, pause = False, _FIRST_WAIT_PAUSE  # started here, or suspended, stopped: look again
                else:
                    looked, pause = True, min(pause * 2, _MAX_WAIT_PAUSE)
            finally:
                if ended is not None:
                    self._engine.unwatch_run(self._pk, ended)


class WorkflowHandle:
    """Creates, finds and lists the instances of one workflow."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self.name = name

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.name}>"

    async def create(self, id: str | None = None, params: JSON = None) -> Instance:
        """Create an instance (queued), with a generated id unless one is given."""
        return (await self.create_batch([{"id": id, "params": params}]))[0]

    async def create_batch(self, items: Iterable[Mapping[str, Any]]) -> list[Instance]:
        """Create several instances, all or none: `[{"id": ..., "params": ...}, ...]`."""
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, Mapping) or set(item) - {"id", "params"}:
                raise InvalidInputError(f"invalid batch item {item!r}: expected a dict with keys id and params")
            instance_id = item.get("id")
            instance_id = str(uuid.uuid4()) if instance_id is None else check_id(instance_id)
            if instance_id in seen:
                raise InvalidInputError(f"invalid batch: instance id {instance_id!r} appears more than once")
            seen.add(instance_id)
            params = serialization.dumps_input(
                item.get("params"), self._engine.limits, what=f"params of instance {instance_id!r}"
            )
            rows.append((instance_id, params))
        if not rows:
            return []
        # Instances the local worker has room for are created leased to it and run at once.
        lease = self._engine.lease_new(self.name, len(rows))
        try:
            records = await self._engine.store.create_instances(self.name, rows, clock.now(), lease)
        except BaseException:
            self._engine.adopt(lease, [])
            raise
        self._engine.adopt(lease, records)
        if lease is None or len(records) > lease.limit:
            self._engine.wake()
        return [Instance(self._engine, record) for record in records]

    async def get(self, id: str) -> Instance:
        """The instance with this id; InstanceNotFoundError if there is none (for an id no
        instance can have, NoSuchIdError: an InstanceNotFoundError and an InvalidInputError)."""
        try:
            check_id(id)
        except InvalidInputError as exc:
            raise NoSuchIdError(f"no instance of workflow {self.name!r} can have the id {id!r}: {exc}") from None
        return Instance(self._engine, await self._engine.store.get_instance(self.name, id))

    async def list(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> InstanceList:
        """A page of instances, newest first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise InvalidInputError(f"invalid status {status!r}: expected one of {', '.join(STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
            raise InvalidInputError(f"invalid limit {limit!r}: expected an integer from 1 to {_MAX_PAGE}")
        before = None if cursor is None else cursor_position(cursor)
        records = await self._engine.store.list_instances(
            self.name, status=status, limit=limit + 1, before_pk=before, now=clock.now()
        )
        page = records[:limit]
        next_cursor = str(page[-1].pk) if len(records) > limit else None
        return InstanceList((Instance(self._engine, r) for r in page), next_cursor)

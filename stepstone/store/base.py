"""The store: one interface (`Store`) of domain operations, and the records it returns.

Two implementations (sqlite.py, postgres.py) own their SQL and migrations; one
contract suite (tests/store/) runs against both. Callers never see SQL.

Times are epoch seconds (float) throughout. JSON values travel as their serialized
text (`*_json` fields), so a store never parses what it does not need to.

Ownership of a running instance is a lease: `claim` hands an instance to a worker
with a fresh `token`; every write a run makes (`write`) is fenced by that token, so
a worker that lost its lease (expired, terminated, restarted, deleted) can no longer
change the record: its write raises `LeaseLostError` and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Status = Literal[
    "queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown"
]
STATUSES: tuple[Status, ...] = (
    "queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown"
)  # fmt: skip
TERMINAL: frozenset[str] = frozenset({"complete", "errored", "terminated"})

StepKind = Literal["do", "sleep", "wait_for_event"]
STEP_KINDS: tuple[StepKind, ...] = ("do", "sleep", "wait_for_event")

StepStatus = Literal["complete", "failed", "waiting"]
"""complete: result recorded; failed: failed for good; waiting: a sleep, an event wait
or a retry wait, due at `due_at`."""

Outcome = Literal["ok", "error", "timeout"]

ControlOp = Literal["pause", "resume", "terminate", "restart"]


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Answer a caller waiting on a store job (unless it gave up waiting, or has its answer)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class StepKey:
    """A step's identity: its kind, its name and its occurrence (1-based) within the run."""

    kind: StepKind
    name: str
    count: int


@dataclass(frozen=True)
class Attempt:
    """One attempt of a `do` step."""

    attempt: int
    started_at: float
    ended_at: float
    outcome: Outcome
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """What the store holds of one step."""

    key: StepKey
    status: StepStatus
    result_json: str | None = None
    """The recorded result (do), or the delivered event (wait_for_event), as JSON text."""
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    """Attempts made so far (do steps)."""
    due_at: float | None = None
    """When a sleep ends, an event wait times out, or the next retry is due."""
    started_at: float = 0.0
    ended_at: float | None = None
    seq: int = 0
    """Order in which steps were first recorded within the instance."""
    attempt_log: tuple[Attempt, ...] = ()
    """Every attempt; filled by `history`, empty from `load_steps`."""
    branch: str | None = None
    """Where in the run the step was called, as 'path#n' (see StepWrite.branch)."""


def attempt_log(
    kind: StepKind,
    status: str,
    attempts: int,
    started_at: float,
    ended_at: float | None,
    logged: tuple[Attempt, ...] | None,
) -> tuple[Attempt, ...]:
    """A step's attempts as `history` gives them, from its attempt rows (`logged`; None when
    they were not read, as by `load_steps`: then none). A `do` step that succeeded at its
    first attempt is recorded without an attempt log (most steps: one row less to write),
    and reads back with that one attempt, timed by the step's own start and end."""
    if logged is None:
        return ()
    if not logged and kind == "do" and status == "complete" and attempts == 1 and ended_at is not None:
        return (Attempt(1, started_at, ended_at, "ok"),)
    return logged


@dataclass(frozen=True)
class InstanceRecord:
    pk: int
    workflow: str
    id: str
    status: Status
    params_json: str
    output_json: str | None
    error_json: str | None
    created_at: float
    updated_at: float
    wake_at: float | None = None
    """When a waiting (or paused-while-waiting) instance is due to run again."""
    paused_status: str | None = None
    """The status a paused instance returns to when resumed."""
    started_at: float | None = None
    ended_at: float | None = None
    lease_expires: float | None = None
    """When the lease of the worker running it lapses unless renewed."""


def observed_status(record: InstanceRecord, now: float) -> Status:
    """The status to show: `unknown` for a running instance whose worker stopped renewing its lease.

    Its worker may be dead or cut off; until another worker takes it over, nobody knows
    whether it still runs.
    """
    if record.status == "running" and record.lease_expires is not None and record.lease_expires < now:
        return "unknown"
    return record.status


@dataclass(frozen=True)
class EventRecord:
    seq: int
    type: str
    payload_json: str
    sent_at: float
    consumed_by: StepKey | None = None


@dataclass(frozen=True)
class Claim:
    """An instance handed to a worker, with the fencing token of that lease."""

    pk: int
    workflow: str
    id: str
    params_json: str
    created_at: float
    token: int
    resumed: bool
    """True if the instance ran before (it may have recorded steps)."""
    steps: tuple[StepRecord, ...] | None = None
    """Its recorded steps (as `load_steps` gives them) when the claim read them; None: not read."""


@dataclass(frozen=True)
class Lease:
    """New instances taken at once by a worker of the creating process, which has free slots."""

    worker_id: str
    until: float
    limit: int
    """At most this many of the new instances (the first ones) are taken."""


FIRST_TOKEN = 1
"""The fencing token of an instance's first lease."""


@dataclass(frozen=True)
class ClaimBatch:
    claims: list[Claim]
    next_wake_at: float | None
    """Earliest time something else becomes claimable (a timer, an expiring lease)."""


@dataclass
class StepWrite:
    """A step record to insert or update (by key), with attempts to append."""

    key: StepKey
    status: StepStatus
    started_at: float
    result_json: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    due_at: float | None = None
    ended_at: float | None = None
    new_attempts: list[Attempt] = field(default_factory=list)
    consume_event: int | None = None
    """seq of a buffered event this step takes (wait_for_event)."""
    seq: int | None = None
    """The step's place in its instance's history, if the writer gives it: its record's
    seq, or for a step not recorded yet one above every seq the run has seen. The SQLite
    store keys an instance's steps by seq, and so needs no lookup by key when it is
    given; PostgreSQL numbers steps itself and finds them by key. None: found by key."""
    branch: str | None = None
    """Where in the run the step was called: 'path#n', the n-th call of its kind and name
    in the branch at `path` of the run's concurrent branches ('' the run itself, '0' its
    first branch, '0.1' that one's second). Written when the step is first recorded,
    never changed. None only in records made before schema version 3."""


RunEnd = Literal["complete", "errored", "waiting", "paused", "queued"]


@dataclass
class RunWrite:
    """Everything one run records in one commit: step records and, if the run stops, how.

    With `end` None the instance stays `running` under the same lease. Otherwise the
    lease is released and the instance becomes `end`: complete (with output), errored
    (with error), waiting (until `wake_at`), paused (resumed later to `paused_status`,
    i.e. waiting if `wake_at` is set, else queued), or queued (handed back).
    """

    pk: int
    token: int
    now: float
    steps: list[StepWrite] = field(default_factory=list)
    end: RunEnd | None = None
    wake_at: float | None = None
    output_json: str | None = None
    error_json: str | None = None
    wait_types: list[str] = field(default_factory=list)
    """Event types the run waits for; if one is already kept, `wake_at` becomes now."""
    instance: tuple[str, str] | None = None
    """(workflow, id) of the instance: where a store that writes for several instances in
    one transaction (group commit) puts this write, so that every process locks
    instances in one order (no deadlock between two processes' batches)."""


class Store(Protocol):
    """The persistence interface of the engine. Every method is one atomic operation."""

    url: str
    wakeup_poll: float
    """Seconds between a worker's safety-net polls for work made runnable elsewhere."""

    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    async def close(self) -> None: ...

    # -- workflows --------------------------------------------------------------------

    async def register_workflows(self, names: Sequence[str], now: float) -> None:
        """Record that an engine serves these workflows (idempotent)."""

    async def workflow_names(self) -> list[str]:
        """Names of every workflow any engine has recorded."""

    async def status_counts(self, workflow: str, *, now: float | None = None) -> dict[str, int]:
        """Number of instances of `workflow` by status.

        With `now`, running instances whose lease lapsed before it count as `unknown`
        (see observed_status); without, by the status stored.
        """

    # -- instances, for clients -------------------------------------------------------

    async def create_instances(
        self, workflow: str, items: Sequence[tuple[str, str]], now: float, lease: Lease | None = None
    ) -> list[InstanceRecord]:
        """Create queued instances from (id, params_json) pairs, all or nothing.

        With `lease`, the first `lease.limit` of them are created `running` instead,
        leased to `lease.worker_id` until `lease.until` with token FIRST_TOKEN, as if
        that worker had claimed them (it saves a claim: a commit, and a wakeup). Only
        the instances left queued wake the workers. Raises InstanceExistsError (naming
        the id) if any id exists in `workflow`.
        """

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord:
        """Raises InstanceNotFoundError."""

    async def list_instances(
        self, workflow: str, *, status: str | None, limit: int, before_pk: int | None, now: float | None = None
    ) -> list[InstanceRecord]:
        """Newest first (descending pk), optionally of one status, pks below `before_pk`.

        With `now`, `status` is the observed one: `unknown` selects running instances whose
        lease lapsed before `now`, and `running` the others.
        """

    async def history(self, pk: int) -> list[StepRecord]:
        """Every step of an instance with its attempt log, in `seq` order."""

    async def events(self, pk: int) -> list[EventRecord]:
        """Every event kept for an instance, in `seq` order."""

    async def send_event(self, workflow: str, instance_id: str, type: str, payload_json: str, now: float) -> int:
        """Keep an event for the instance and wake it if it is waiting. Returns the event seq.

        Raises InstanceNotFoundError, or InvalidStateError if the instance has ended.
        """

    async def control(
        self, workflow: str, instance_id: str, op: ControlOp, now: float, *, from_step: StepKey | None = None
    ) -> InstanceRecord:
        """pause / resume / terminate / restart, as lifecycle.py rules; returns the new record.

        Raises InstanceNotFoundError, InvalidStateError (nothing changed), or for a
        `from_step` not in the history InvalidInputError.
        """

    async def delete(self, workflow: str, instance_id: str) -> None:
        """Remove the instance, its steps and events. Raises InstanceNotFoundError."""

    async def prune(self, workflows: Sequence[str], status: str, ended_before: float, limit: int) -> int:
        """Delete up to `limit` instances of `workflows` in `status` that ended before `ended_before`."""

    # -- workers ----------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        workflows: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        *,
        due_by: float | None = None,
        expect_work: bool = False,
    ) -> ClaimBatch:
        """Lease up to `limit` runnable instances of `workflows` to `worker_id`.

        Runnable: queued; waiting with wake_at <= `due_by` (default `now`: a worker may
        take timers due a moment later, to fire them in-process on time); running or
        waitingForPause whose lease expired before `now` (a waitingForPause one becomes
        paused instead). `expect_work`: the caller was just told that something became
        runnable, so a store that looks before it takes a write lock need not.
        """

    async def load_steps(self, pk: int) -> list[StepRecord]:
        """The step records of an instance (no attempt log), for replay."""

    async def next_event(self, pk: int, type: str) -> EventRecord | None:
        """The first-sent event of `type` not yet taken by a step."""

    def leases_at_once(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]] | None:
        """`leases`, read at once on the caller's thread if the store can (a connection of
        its own at hand, idle), without a turn of the event loop; None if not."""

    async def leases(self, pks: Sequence[int]) -> dict[int, tuple[int, Status]]:
        """The lease token and status (running, or waitingForPause once a pause was asked)
        of each of the instances `pks` that is leased; those not leased are left out."""

    async def write(self, run: RunWrite) -> Status:
        """Record a run's steps and end, in one commit, if `run.token` still holds the lease.

        Returns the instance's status after the write (e.g. `waitingForPause` when a
        pause was asked meanwhile). Raises LeaseLostError, changing nothing, if not.
        Concurrent calls may share one commit (group commit).
        """

    async def renew_leases(self, worker_id: str, tokens: dict[int, int], lease_until: float) -> set[int]:
        """Extend the leases (pk -> token) still held; returns the pks no longer held."""

    async def worker_seen(self, worker_id: str, host: str, pid: int, now: float) -> None:
        """Register or refresh a worker process (used to spot dead workers on one host)."""

    async def workers_on_host(self, host: str) -> list[tuple[str, int]]:
        """(worker_id, pid) of the workers registered on `host`."""

    async def expire_workers(self, worker_ids: Sequence[str], now: float) -> int:
        """Expire now every lease these (dead) workers hold, and forget them. Returns leases freed."""

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's registration (clean shutdown)."""

    async def subscribe_wakeups(self, callback: Callable[[], None]) -> None:
        """Call `callback` (in the event loop) whenever any process makes work runnable:
        an instance created, resumed or restarted, an event sent, a lease released.
        PostgreSQL uses LISTEN/NOTIFY; a store without notifications does nothing."""

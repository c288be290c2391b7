"""One pass of a workflow's `run()` for a claimed instance: replay, record, suspend.

`run()` starts from the top each time an instance is claimed. A step found complete
in the history returns its recorded result; the first step that is not runs for
real and is recorded (one commit) before `step.do` returns.

A step that must wait (a sleep, an event wait, a wait before a retry) *blocks* its
branch of the run. When every branch of the run is blocked and no step is running,
the run is *suspended*: its `run()` task is cancelled, the blocked steps and the
instance's next due time are recorded in one commit, and the lease is released, so a
waiting instance holds no coroutine, thread or connection. The worker claims it again
when it is due (or when an event arrives) and replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import math
import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

from stepstone import attempts, clock, serialization
from stepstone.durations import to_datetime
from stepstone.errors import (
    InvalidInputError,
    LeaseLostError,
    LimitExceededError,
    NonRetryableError,
    StepFailed,
    StepTimeoutError,
    StoreClosedError,
    WaitTimeout,
    error_type_name,
    exception_text,
)
from stepstone.retries import StepConfig
from stepstone.serialization import Limits
from stepstone.step import WorkflowStep
from stepstone.store.base import (
    Attempt,
    Claim,
    Outcome,
    RunEnd,
    RunWrite,
    Status,
    StepKey,
    StepKind,
    StepRecord,
    StepWrite,
    Store,
    settle,
)
from stepstone.workflow import Event, Workflow, WorkflowEvent

log = logging.getLogger("stepstone.run")

T = TypeVar("T")

# Loop turns to let every branch reach its next step before a run is deemed idle.
_SETTLE_TURNS = 3
_LOOK_AGAIN_FIRST, _LOOK_AGAIN_MAX = 0.001, 1.0
"""Seconds before a run whose tasks do not all wait looks again, at first and at most (Run._look_again_later)."""

RECORD_WAIT = 0.05
"""Seconds: how long a wait found over may wait to be recorded with the step after it
before it is recorded by itself (see Run._record_soon)."""
STORE_RETRY_SECONDS = 10.0
"""How long a run tries again a store operation that fails, before it stops (see _persist)."""
_RUN_OVER = (LeaseLostError, StoreClosedError)
"""Store failures after which a run stops at once: trying again cannot help (another
worker owns the instance, or the store is closed or closing)."""
HOLD_WAIT = 0.1
"""Seconds: a recorded wait that a resumed run finds ending within this is waited out
in-process instead of suspending again. Workers claim instances a moment before their
timers are due (worker.CLAIM_AHEAD, less than this), so that the timers fire on time."""


class Stopped(BaseException):
    """The run lost its lease (taken over, terminated, restarted, deleted): stop silently.

    A BaseException so that user code's `except Exception` cannot swallow it.
    """


@dataclass
class _Block:
    """A branch of the run that waits: until `wake_at` (None: until the run pauses)."""

    wake_at: float | None
    write: StepWrite | None
    wait_type: str | None = None
    recorded: bool = False
    """The wait was recorded by an earlier run: this run is its resumption."""
    queued: bool = False
    """`write` is on its way to the store while the run goes on (Run._record_waits_soon)."""
    lease_read: bool = False
    """The run's lease was read when its timer fired (Run._read_lease_then_wake)."""
    wakeup: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Task[Any] | None = field(default_factory=asyncio.current_task)
    """The task that waits (a run's task, or one it started)."""


def _weak(task: asyncio.Task[Any] | None) -> weakref.ref[asyncio.Task[Any]] | None:
    """A weak reference to a task of a run, for what the task's own context holds: a strong
    one would make a reference cycle (task, context, what it holds, task), which only the
    cycle collector frees."""
    return None if task is None else weakref.ref(task)


class _Branch:
    """A task of the run that calls steps: the run's own, or one it started (gather, TaskGroup).

    Concurrent branches call steps in an order that depends on timing: a step's
    occurrence number, given in call order, can go to another branch's step on replay.
    So a step is found again by where it was called: its branch's path and the number of
    calls of its kind and name in that branch before it. The path is the task's origin
    (see _Origin): '~' then the positions, in the order each task's parent created it, of
    the tasks from the run's own down to it ('' is the run itself), which do not depend on
    timing. Steps recorded before origins were kept have a path of another form (`by_first_call`:
    the n-th branch its parent branch started, counted in the order they first call a
    step); a run whose history has such steps goes on numbering branches that way.
    """

    __slots__ = ("_task", "by_first_call", "calls", "children", "owner", "path")

    def __init__(self, owner: object, task: asyncio.Task[Any] | None, path: str, by_first_call: str) -> None:
        self.owner = owner
        """The run's `identity`: not the run itself, which would make a reference cycle."""
        self._task = _weak(task)
        self.path = path
        self.by_first_call = by_first_call
        self.children = 0
        self.calls: dict[tuple[StepKind, str], int] = {}

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The branch's task (held weakly: the task's context holds the branch)."""
        return None if self._task is None else self._task()

    @task.setter
    def task(self, task: asyncio.Task[Any] | None) -> None:
        self._task = _weak(task)

    def child(self, task: asyncio.Task[Any] | None) -> _Branch:
        by_first_call = f"{self.by_first_call}.{self.children}" if self.by_first_call else str(self.children)
        self.children += 1
        origin = _origin.get()
        if origin is None or not origin.take(task):  # a task created where the run's task factory could not see it
            return _Branch(self.owner, task, f"?{by_first_call}", by_first_call)
        return _Branch(self.owner, task, f"~{origin.path}", by_first_call)


_branch: contextvars.ContextVar[_Branch | None] = contextvars.ContextVar("stepstone_branch", default=None)
"""The branch of the task at hand: set in the run's task, inherited by the tasks it starts
(asyncio copies the context into a new task) until they call a step and become branches."""


class _Origin:
    """Where a task of a run was created: its position among the tasks its parent created."""

    __slots__ = ("_reserved", "_task", "created", "path", "run")

    def __init__(self, path: str, run: weakref.ref[Run]) -> None:
        self.path = path
        self.run = run
        """The run whose workflow code the task runs (held weakly, as the task's context holds this)."""
        self.created = 0
        self._task: weakref.ref[asyncio.Task[Any]] | None = None
        self._reserved: tuple[Sequence[Any], dict[int, int]] | None = None
        """The list of an as_completed call making tasks now, and the positions reserved
        for those of its coroutines not yet made into tasks (by id)."""

    def take(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether `task` is the one created here: the first task of the run to ask is
        (another that inherited this origin with its parent's context is not, even once
        the first is gone). Held weakly: the task's context holds this."""
        if self._task is None:
            self._task = _weak(task)
            return True
        return self._task() is task

    def child(self, coro: object) -> _Origin:
        """The origin of a task made now of `coro` by this origin's task."""
        position = self._position_in_as_completed(coro)
        if position is None:
            position = self.created
            self.created += 1
        path = f"{self.path}.{position}" if self.path else str(position)
        return _Origin(path, self.run)

    def _position_in_as_completed(self, coro: object) -> int | None:
        """Where the task of `coro` goes, if asyncio.as_completed is making it now out of
        a list of coroutines: by the coroutine's place in that list. as_completed makes
        its tasks in the order of a set (by object id), which differs from one replay to
        the next, so the order of creation would give branches other paths each time.
        The positions of all its coroutines are reserved at the first one's, so tasks
        made later number on after them."""
        given = _as_completed_list()
        if given is None:
            return None
        if self._reserved is None or self._reserved[0] is not given:
            reserved: dict[int, int] = {}
            for aw in given:
                if asyncio.iscoroutine(aw):
                    reserved.setdefault(id(aw), self.created + len(reserved))
            self._reserved = given, reserved
            self.created += len(reserved)
        positions = self._reserved[1]
        position = positions.pop(id(coro), None)
        if not positions:
            self._reserved = None  # (all made: let go of the list)
        return position


_AS_COMPLETED = asyncio.as_completed.__code__


def _as_completed_list() -> Sequence[Any] | None:
    """The list or tuple given to asyncio.as_completed, if as_completed is what makes a task
    now (a few frames up: the loop's create_task, ensure_future, its set comprehension or,
    on Python 3.13, its iterator's __init__)."""
    frame: FrameType | None = sys._getframe(3)  # (above _position_in_as_completed, child and the task factory)
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_code is _AS_COMPLETED:
            given = frame.f_locals.get("fs")
            return given if isinstance(given, list | tuple) else None
        frame = frame.f_back
    return None


_origin: contextvars.ContextVar[_Origin | None] = contextvars.ContextVar("stepstone_origin", default=None)
"""The origin of the task at hand, if it belongs to a run's workflow code (not a step's body)."""


def _task_factory(previous: Any) -> Any:
    """A loop task factory that gives each task a run's workflow code creates its _Origin,
    at creation (whatever the order in which the tasks later run), then makes it as
    `previous` (the loop's factory before, None for asyncio's own) would."""

    def create(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> Any:
        # `options`: what the loop passes on from create_task (context; from Python 3.13 also name).
        parent = _origin.get()
        run = None
        if parent is not None:
            context = options.get("context") or contextvars.copy_context()
            if context.get(_origin) is parent:
                context.run(_origin.set, parent.child(coro))
                run = parent.run()
            options["context"] = context
        task = asyncio.Task(coro, loop=loop, **options) if previous is None else previous(loop, coro, **options)
        if run is not None:
            run.adopt(task)
        return task

    create.stepstone = True  # type: ignore[attr-defined]
    return create


def _ensure_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    factory = loop.get_task_factory()
    if not getattr(factory, "stepstone", False):
        loop.set_task_factory(_task_factory(factory))


def _outside_workflow_code() -> contextvars.Context:
    """A copy of the current context in which tasks created are none of the run's branches."""
    context = contextvars.copy_context()
    context.run(_origin.set, None)
    return context


_WAITING_FOR_TASKS = {asyncio.TaskGroup.__aexit__.__code__, asyncio.wait.__code__, asyncio.wait_for.__code__}
"""Code in which a coroutine waits for tasks: the end of an `async with TaskGroup()` block,
asyncio.wait, and asyncio.wait_for (which, on Python 3.11, awaits its task through a future
of its own)."""


def _in_asyncio(code: Any) -> bool:
    """Whether `code` is asyncio's own (as_completed's `_wait_for_one`, not a namesake of the workflow's)."""
    return bool(code.co_filename == asyncio.tasks.__file__)


def _awaits(task: asyncio.Task[Any]) -> tuple[bool, bool, list[Any]]:
    """What the task's coroutine waits in, down its chain of awaits: (code that waits for
    tasks (_WAITING_FOR_TASKS, or as_completed's), a timer of its own (asyncio.wait or
    wait_for with a timeout, which must fire in this process, on time), what asyncio.wait
    waits for)."""
    for_tasks = False
    awaited: list[Any] = []
    coro: Any = task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code in _WAITING_FOR_TASKS or (code is not None and code.co_name == "_wait_for_one" and _in_asyncio(code)):
            for_tasks = True
            frame = getattr(coro, "cr_frame", None)
            if frame is not None:
                if frame.f_locals.get("timeout") is not None:
                    return for_tasks, True, awaited
                awaited.extend(frame.f_locals.get("fs") or ())
        coro = getattr(coro, "cr_await", None)
    return for_tasks, False, awaited


def _read_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as read: asyncio reports an unread one as an
    error when the future is collected, and where this is called there is nothing to do
    with it (the run stops or suspends)."""
    if future.done() and not future.cancelled():
        future.exception()


def _wake(wakeup: asyncio.Future[None]) -> None:
    if not wakeup.done():
        wakeup.set_result(None)


def _wake_block(block: _Block) -> None:
    _wake(block.wakeup)


class _Alarm:
    """Calls `fire` (which wakes a blocked branch) at `wake_at` (epoch seconds): in legs, each
    timed again from the clock, so that it fires on time after a long idle (clock.first_leg)."""

    __slots__ = ("_fire", "_handle", "_wake_at")

    def __init__(self, wake_at: float, fire: Callable[[], None]) -> None:
        self._wake_at = wake_at
        self._fire: Callable[[], None] | None = fire
        self._handle: asyncio.TimerHandle
        self._arm()

    def _arm(self) -> None:
        fire = self._fire
        if fire is None:  # (cancelled)
            return
        delay = max(0.0, self._wake_at - clock.now())
        leg = clock.first_leg(delay)
        loop = asyncio.get_running_loop()
        if leg < delay:
            self._handle = loop.call_later(leg, self._arm)
        else:
            self._handle = loop.call_later(delay, fire)

    def cancel(self) -> None:
        """Never fire; and let go of what it would call (the frame awaiting the wakeup holds
        this: no reference cycle through it)."""
        self._handle.cancel()
        self._fire = None


def _error_of(exc: BaseException) -> tuple[str, str]:
    """An exception's recorded name and message (whatever its text holds, or its str() does)."""
    return error_type_name(exc), serialization.storable_text(exception_text(exc))


def _first_leaf(exc: BaseException | None) -> BaseException | None:
    """The exception itself, or the first one inside an exception group (asyncio.TaskGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _event_result(type_: str, payload_json: str, sent_at: float) -> str:
    return f'{{"type":{json.dumps(type_)},"payload":{payload_json},"timestamp":{sent_at!r}}}'


def _event_from_result(text: str) -> Event:
    data = json.loads(text)
    return Event(data["type"], data["payload"], to_datetime(data["timestamp"]))


def _held(leases: dict[int, tuple[int, Status]], pk: int, token: int) -> Status | None:
    """The status of instance `pk` in `leases` (store.leases) if `token` holds its lease."""
    held = leases.get(pk)
    return held[1] if held is not None and held[0] == token else None


class LeaseReads:
    """Reads of runs' leases (Run._still_leased), many in one query: while one query is
    under way, the reads asked meanwhile wait for the next, as the runs of many timers
    falling due together would otherwise each make a round trip."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._asked: dict[tuple[int, int], list[Callable[[Status | None, BaseException | None], None]]] = {}
        self._reading: asyncio.Task[None] | None = None

    def ask(self, pk: int, token: int, answer: Callable[[Status | None, BaseException | None], None]) -> None:
        """Read the lease of instance `pk`: `answer(status, None)` with its status if `token`
        still holds it, else None; `answer(None, error)` if the store failed. At once, without
        a turn of the loop, where the store can (SQLite); else with the next query."""
        found = self.store.leases_at_once([pk])
        if found is not None:
            answer(_held(found, pk, token), None)
            return
        self._asked.setdefault((pk, token), []).append(answer)
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read(), context=_outside_workflow_code())

    async def status(self, pk: int, token: int) -> Status:
        """The instance's status if `token` still holds its lease; LeaseLostError if not."""
        answered: asyncio.Future[Status | None] = asyncio.get_running_loop().create_future()
        self.ask(pk, token, functools.partial(settle, answered))
        status = await answered
        if status is None:
            raise LeaseLostError(f"instance {pk} is no longer leased with token {token}")
        return status

    async def _read(self) -> None:
        try:
            while self._asked:
                asked, self._asked = self._asked, {}
                try:
                    leases = await self.store.leases(sorted({pk for pk, _ in asked}))
                except Exception as exc:
                    for answers in asked.values():
                        for answer in answers:
                            answer(None, exc)
                    continue
                for (pk, token), answers in asked.items():
                    for answer in answers:
                        answer(_held(leases, pk, token), None)
        finally:
            self._reading = None


class Run:
    """Executes `run()` once for a claimed instance, recording and suspending as it goes."""

    def __init__(
        self,
        store: Store,
        claim: Claim,
        workflow_class: type[Workflow],
        history: list[StepRecord],
        *,
        limits: Limits,
        executor: Executor,
        lease_reads: LeaseReads | None = None,
    ) -> None:
        self.store = store
        self.lease_reads = lease_reads or LeaseReads(store)
        self.claim = claim
        self.workflow_class = workflow_class
        self.limits = limits
        self.executor = executor
        self.records = {record.key: record for record in history}
        self.seqs: dict[StepKey, int] = {}
        self.next_seq = max((record.seq for record in history), default=0) + 1
        self.step_total = sum(1 for key in self.records if key.kind != "sleep")
        self.calls: dict[tuple[StepKind, str, str], StepRecord] = {}
        """The history by where each step was called: (kind, name, 'path#n'); see _Branch."""
        self.legacy: dict[tuple[StepKind, str, int], StepRecord] = {}
        """Steps recorded before schema version 3, which did not keep where they were called:
        found again as they were then, by occurrence number in the run's order of calls."""
        self.called: dict[tuple[StepKind, str], int] = {}
        """Calls of each kind and name so far in the run, all branches together (for `legacy`)."""
        self.recorded_counts: dict[tuple[StepKind, str], set[int]] = {}
        """The occurrence numbers of each kind and name in the history."""
        self.next_count: dict[tuple[StepKind, str], int] = {}
        """Where the search for the next free occurrence number of each kind and name begins."""
        self.first_call_paths = False
        """Whether the history has steps recorded in branches numbered by first call (_Branch.by_first_call)."""
        for record in history:
            kind, name, count = record.key.kind, record.key.name, record.key.count
            if record.branch is None:
                self.legacy[(kind, name, count)] = record
            else:
                self.calls[(kind, name, record.branch)] = record
                self.first_call_paths = self.first_call_paths or record.branch[:1].isdigit()
            self.recorded_counts.setdefault((kind, name), set()).add(count)
        self.branches: dict[StepKey, str] = {}
        """Where each step new to the history was called, to record with it."""
        self.identity = object()
        """What the run's branches know it by."""
        self.root = _Branch(self.identity, None, "", "")
        self.blocked: dict[StepKey, _Block] = {}
        self.inflight = 0
        self.pending: list[StepWrite] = []
        """Waits found over (a sleep, an event taken), to record with the next write, or by
        themselves if none comes soon (_record_soon)."""
        self._recording: asyncio.Task[None] | None = None
        self._record_timer: asyncio.TimerHandle | None = None
        self.pause_requested = False
        self.lease_doubtful_at = math.inf
        """When the worker's renewals of the lease are overdue (set by the worker): past this,
        the process may have been stopped or its loop blocked long enough for the lease to
        lapse and another worker to take the instance over, and the run reads its lease
        before it starts a step's function."""
        self.suspend_blocks: list[_Block] | None = None
        self.stopped = False
        self.ending = False
        """Set once the run records how it ends (its lease is then given up on purpose)."""
        self.wake_at: float | None = None
        """When the instance falls due again, if the run suspended with a timer."""
        self.output_json: str | None = None
        self.error_json: str | None = None
        """What the run recorded as the instance's output or error, if it ended it."""
        self._task: asyncio.Task[Any] | None = None
        self._branches: set[asyncio.Task[Any]] = set()
        """The tasks of the run's workflow code that it started (see adopt), and any that called a step."""
        self._event_locks: dict[str, asyncio.Lock] = {}
        self._look_again: asyncio.TimerHandle | None = None
        self._look_delay = _LOOK_AGAIN_FIRST
        self._taking = 0
        """Commits under way that record events taken by this run's waits."""
        self._taken: list[asyncio.Future[None]] = []
        """Waits for those commits to end (_all_takes_recorded)."""

    # -- the run as a whole -----------------------------------------------------------------

    async def execute(self) -> Status | None:
        """Run until `run()` ends or the run suspends; returns the instance's new status.

        None if the lease was lost. Cancelling `execute` hands the instance back.
        """
        try:
            return await self._execute()
        finally:
            self._unlink()

    def _unlink(self) -> None:
        """Let go of the run's tasks and waits once it is over. They hold the run in
        reference cycles (a task's exception, its traceback, the frames of `run()`, the
        step object, the run, its task), which only Python's full garbage collection would
        free: for runs that waited in-process, in one pause for all of them, late enough
        to delay timers firing meanwhile. Let go of, they are freed as the run ends."""
        self._task = None
        self.root.task = None
        self._branches.clear()
        self.blocked.clear()
        self.suspend_blocks = None
        self._recording = None
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        if self._look_again is not None:
            self._look_again.cancel()
            self._look_again = None

    async def _execute(self) -> Status | None:
        event = WorkflowEvent(
            payload=serialization.loads(self.claim.params_json),
            timestamp=to_datetime(self.claim.created_at),
            instance_id=self.claim.id,
            workflow_name=self.claim.workflow,
        )
        loop = asyncio.get_running_loop()
        _ensure_task_factory(loop)
        context = contextvars.copy_context()
        context.run(_branch.set, self.root)
        context.run(_origin.set, _Origin("", weakref.ref(self)))
        try:
            run = self._start(event)
        except Exception as exc:  # the workflow's own code failed before run() began
            name, message = _error_of(exc)
            return await self._end("errored", error={"name": name, "message": message})
        # A Task made directly, not by the loop's factory: an eager one (Python 3.12's
        # eager_task_factory) would run the workflow up to its first wait before the run
        # knows its task, and that wait could not suspend it. (Branches keep the factory.)
        task = self._task = asyncio.Task(run, loop=loop, context=context)
        self.root.task = task
        # Told by a callback, as asyncio.wait would but cheaper (no set, no callbacks to
        # remove); not by awaiting the task, whose failure raised here would make a
        # reference cycle (the task, its exception, traceback, this frame, the task).
        ended: asyncio.Future[None] = loop.create_future()
        task.add_done_callback(lambda _: _wake(ended))
        try:
            await ended
        except asyncio.CancelledError:  # this run is cancelled (stopped, shut down): hand the instance back
            await self._cancelled(task)
            raise
        return await self._outcome(task)

    async def _cancelled(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        await asyncio.wait([task])
        self._cancel_branches()
        _read_outcome(task)
        if not self.stopped:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._end("queued"))

    async def _outcome(self, task: asyncio.Task[Any]) -> Status | None:
        """Record how the run ended: its task's outcome (ended, suspended, stopped)."""
        self._cancel_branches()
        if self.stopped:
            _read_outcome(task)  # Stopped, raised by the write that found the lease gone
            return None
        if self.suspend_blocks is not None:  # (its tasks cancelled: however run() took that)
            _read_outcome(task)
            return await self._suspend_write(self.suspend_blocks)
        if task.cancelled():
            return await self._end("errored", error={"name": "CancelledError", "message": "run() was cancelled"})
        failure = _first_leaf(task.exception())
        if isinstance(failure, Stopped):
            return None
        if self.pause_requested:
            # The run ended (complete or errored) after a step during which a pause was asked:
            # the instance pauses when that step ends, and ends when resumed (by a replay).
            return await self._end("paused")
        if isinstance(failure, StepFailed):
            error = {"name": failure.error_type, "message": failure.message, "step": failure.step}
            return await self._end("errored", error=error)
        if failure is not None:
            name, message = _error_of(failure)
            return await self._end("errored", error={"name": name, "message": message})
        try:
            output_json = serialization.dumps(task.result(), what=f"output of workflow {self.claim.workflow!r}")
        except TypeError as exc:
            return await self._end("errored", error={"name": "TypeError", "message": str(exc)})
        return await self._end("complete", output_json=output_json)

    def _start(self, event: WorkflowEvent) -> Coroutine[Any, Any, Any]:
        """The coroutine of the workflow's `run()` for this run; what the workflow's class or
        `run()` raised if they fail when called (a TypeError if `run` is not async)."""
        coro = self.workflow_class().run(event, WorkflowStep(self))
        if not asyncio.iscoroutine(coro):
            raise TypeError(
                f"run() of workflow {self.claim.workflow!r} returned {coro!r}, not a coroutine: "
                "define it as async def run(self, event, step)"
            )
        return coro

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """A task started by the run's workflow code (gather, TaskGroup, create_task): one of
        the run's branches from now on, which the run waits for before it suspends (see
        `_all_waiting`), and cancels if it outlives the run."""
        if self.ending or self.stopped or self.suspend_blocks is not None:  # nothing of the run runs on
            task.cancel()
            return
        self._branches.add(task)
        task.add_done_callback(self._branch_done)

    def _branch_done(self, task: asyncio.Task[Any]) -> None:
        if self.blocked:  # the others may all wait now
            self._maybe_suspend()

    def _track_branch(self) -> None:
        """Note the task calling a step as one of the run's; cancel the step if the run is
        suspending (workflow code that took its cancellation for a value, or a `finally:`
        calling a step, runs no step then: it would run ahead of the waits before it)."""
        if self.suspend_blocks is not None:
            raise asyncio.CancelledError("the run is suspending")
        task = asyncio.current_task()
        if task is not None:
            self._branches.add(task)

    def _cancel_branches(self) -> None:
        """Cancel tasks the run started that outlived it (a gather sibling of a failed step, a
        task never awaited)."""
        for task in self._branches:
            if task is not self._task and not task.done():
                task.cancel()
        self._branches.clear()

    def _all_waiting(self) -> bool:
        """Whether every task of the run waits: blocked in a step's wait, or for other tasks of
        the run (awaiting one, gather, TaskGroup, asyncio.wait), and none runs code of its own
        meanwhile (a plain `await asyncio.sleep(...)`, a computation, an awaited call): such
        a task is about to call its next step, and the run must not suspend under it."""
        blocked = {block.task for block in self.blocked.values()}
        gathered = asyncio.tasks._GatheringFuture  # type: ignore[attr-defined]
        for task in (self._task, *self._branches):
            if task is None or task.done():
                continue
            if task in blocked:
                # From Python 3.12, wait_for awaits a coroutine in the task itself (earlier, in
                # a task of its own): a wait under its timeout is found by walking the chain.
                if _awaits(task)[1]:
                    return False
                continue
            waiter = getattr(task, "_fut_waiter", None)  # what the task awaits (asyncio's own record)
            if waiter is None or waiter.done():
                return False  # it runs, or is about to
            for_tasks, timed, awaited = _awaits(task)
            if timed:
                return False
            if isinstance(waiter, gathered):
                awaited.extend(waiter._children)
            elif isinstance(waiter, asyncio.Task) and waiter in self._branches:
                continue
            elif not for_tasks:
                return False
            # Waiting for the run's tasks only: not for a thread's work or a future of its own.
            if any(not (f.done() or f in self._branches) for f in awaited if isinstance(f, asyncio.Future)):
                return False
        return True

    def _look_again_later(self) -> None:
        """A task of the run runs code of its own while the others wait: look again at whether
        the run can suspend soon, then less and less often (nothing tells when such a task
        turns to waiting for the others: the end of a TaskGroup block, `await task`)."""
        if self._look_again is None:
            delay, self._look_delay = self._look_delay, min(self._look_delay * 2, _LOOK_AGAIN_MAX)
            self._look_again = asyncio.get_running_loop().call_later(delay, self._looked_again)

    def _looked_again(self) -> None:
        self._look_again = None
        self._maybe_suspend()

    async def _end(
        self,
        end: RunEnd,
        *,
        output_json: str | None = None,
        error: dict[str, str] | None = None,
        steps: list[StepWrite] | None = None,
        wake_at: float | None = None,
        wait_types: list[str] | None = None,
    ) -> Status | None:
        self.ending = True
        await self._recorded()
        self.wake_at = wake_at
        self.output_json = output_json
        self.error_json = None if error is None else json.dumps(error)
        write = RunWrite(
            self.claim.pk,
            self.claim.token,
            clock.now(),
            self._placed(self._take_pending() + (steps or [])),
            end=end,
            wake_at=wake_at,
            output_json=output_json,
            error_json=self.error_json,
            wait_types=wait_types or [],
            instance=(self.claim.workflow, self.claim.id),
        )
        try:
            return await self.store.write(write)
        except _RUN_OVER:
            return None
        except Exception as exc:
            try:
                return await self._persist(lambda: self.store.write(write), exc)
            except _RUN_OVER:
                return None
            except Exception:
                log.exception("store failure ending the run of instance %r; it will be run again", self.claim.id)
                return None

    async def _suspend_write(self, blocks: list[_Block]) -> Status | None:
        due = [b.wake_at for b in blocks if b.wake_at is not None]
        pausing = any(b.wake_at is None for b in blocks)
        return await self._end(
            "paused" if pausing else "waiting",
            steps=[b.write for b in blocks if b.write is not None],
            wake_at=min(due) if due else None,
            wait_types=sorted({b.wait_type for b in blocks if b.wait_type is not None}),
        )

    def _placed(self, steps: list[StepWrite]) -> list[StepWrite]:
        """The steps, each given its seq: its record's, or for a step new to the history the
        next one (a step keeps the seq it was first given in this run). Of several writes of
        one step (a wait begun, then over), the last."""
        if len(steps) > 1:
            last = {step.key: step for step in steps}
            if len(last) < len(steps):
                steps = [step for step in steps if last[step.key] is step]
        for step in steps:
            seq = self.seqs.get(step.key)
            if seq is None:
                record = self.records.get(step.key)
                if record is not None:
                    seq = record.seq
                else:
                    seq, self.next_seq = self.next_seq, self.next_seq + 1
                    step.branch = self.branches.get(step.key)
                self.seqs[step.key] = seq
            step.seq = seq
        return steps

    def _take_pending(self) -> list[StepWrite]:
        pending, self.pending = self.pending, []
        return pending

    def _record_soon(self) -> None:
        """Record the waits just found over (or begun) soon: with the next write if one comes within
        RECORD_WAIT (the step after a wait, if quick, is then recorded in the same commit),
        else in a commit of their own that the step running meanwhile does not wait for, so
        that the history shows the wait over while that step runs."""
        if self._record_timer is None:
            self._record_timer = asyncio.get_running_loop().call_later(RECORD_WAIT, self._start_recording)

    def _start_recording(self) -> None:
        self._record_timer = None
        idle = self._recording is None or self._recording.done()  # (else it records these too)
        if self.pending and idle and not self.ending and not self.stopped:
            self._recording = asyncio.get_running_loop().create_task(
                self._record_pending(), context=_outside_workflow_code()
            )

    async def _record_pending(self) -> None:
        with contextlib.suppress(Stopped):  # (the run's own writes find the lease gone too)
            while self.pending and not self.ending and not self.stopped:
                await self._commit([])

    async def _recorded(self) -> None:
        """Wait for the commit of waits found over, if one is under way: a write that must
        follow it (the run's end, a wait taking the next event) waits for it."""
        if self._recording is not None:
            await asyncio.wait([self._recording])

    async def _commit(self, steps: list[StepWrite]) -> None:
        """Record steps now, under the lease; stop the run if the lease is gone."""
        write = RunWrite(
            self.claim.pk,
            self.claim.token,
            clock.now(),
            self._placed(self._take_pending() + steps),
            instance=(self.claim.workflow, self.claim.id),
        )
        takes = any(step.consume_event is not None for step in write.steps)
        if takes:
            self._taking += 1
        try:
            status = await self._guard(lambda: self.store.write(write))
        finally:
            if takes:
                self._taking -= 1
                if not self._taking:
                    for waiter in self._taken:
                        _wake(waiter)
                    self._taken.clear()
        if status == "waitingForPause":
            self.pause_requested = True

    async def _all_takes_recorded(self) -> None:
        """Wait until no commit under way records an event taken (the store still shows
        such an event kept: another wait must not take it again)."""
        while self._taking:
            waiter = asyncio.get_running_loop().create_future()
            self._taken.append(waiter)
            await waiter

    async def _guard(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await a store operation of the run; if it fails for good, stop the run (Stopped).

        A lost lease means another owner. Any other failure (the database restarting, a
        full disk) must not fail the workflow: the operation is tried again for a while
        (_persist), and if it still fails the run stops, its lease lapses, and the
        instance is run again later.
        """
        try:
            return await operation()
        except _RUN_OVER:
            pass
        except Exception as exc:
            try:
                return await self._persist(operation, exc)
            except _RUN_OVER:
                pass
            except Exception:
                log.exception("store failure in the run of instance %r; it will be run again", self.claim.id)
        self.stop()
        raise Stopped

    async def _persist(self, operation: Callable[[], Awaitable[T]], failure: Exception) -> T:
        """Try a store operation that failed with `failure` again, pausing longer each time,
        for up to STORE_RETRY_SECONDS; then raise its last failure. A step whose result is
        in hand is then recorded once the database answers again, not run again after the
        lease lapses. Every write of a run is fenced by its lease, so one retried after
        another worker took the instance over is refused, not applied; a retried write
        records the same rows again (the step key and seq are the write's)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + STORE_RETRY_SECONDS
        pause = 0.05
        while not self.stopped and loop.time() + pause < give_up:
            log.warning(
                "store failure in the run of instance %r (%s: %s); trying again in %g s",
                self.claim.id, type(failure).__name__, failure, pause,
            )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            try:
                return await operation()
            except _RUN_OVER:
                raise
            except Exception as exc:
                failure = exc
        raise failure

    def stop(self) -> None:
        """The lease is gone: abandon the run without recording anything more."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()

    def hold(self, pause: bool) -> None:
        """A pause was asked (or withdrawn) in this process: steps not started yet wait for it."""
        self.pause_requested = pause
        if pause:
            self._maybe_suspend()  # every branch already waits: the run stops now

    def poke(self) -> None:
        """An event arrived for this instance: wake the branches waiting for one."""
        for block in self.blocked.values():
            if block.wait_type is not None and not block.wakeup.done():
                block.wakeup.set_result(None)

    # -- blocking and suspension ------------------------------------------------------------

    async def _block(
        self,
        key: StepKey,
        wake_at: float | None,
        write: StepWrite | None,
        wait_type: str | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        """Wait until `wake_at` (or a poke); cancelled if the run suspends first."""
        block = _Block(wake_at, write, wait_type, recorded)
        self.blocked[key] = block
        self._look_delay = _LOOK_AGAIN_FIRST
        self._maybe_suspend()
        timer = None
        if wake_at is not None:
            # A recorded wait held in-process: the timer's callback reads the lease first. (Not
            # kept in a local: it holds the block, which holds this task; the frame, on a
            # cancellation's traceback that the task keeps, would make a reference cycle.)
            timer = _Alarm(wake_at, functools.partial(self._read_lease_then_wake if recorded else _wake_block, block))
        try:
            await block.wakeup  # woken (a timer, a poke), or cancelled: the run suspends
        finally:
            if timer is not None:
                timer.cancel()
            self.blocked.pop(key, None)
            _read_outcome(block.wakeup)
            lease_read = block.lease_read
            del block
        if recorded and wake_at is not None and not lease_read:  # (woken otherwise: an event, a failed read)
            await self._still_leased()
        self._maybe_suspend()  # the other branches may wait long: suspend if this one ends here

    def _read_lease_then_wake(self, block: _Block) -> None:
        """The timer of a recorded wait held in-process fired: read the lease (_still_leased)
        from the timer's callback, and wake the branch with the answer (once, not once for
        the timer and again for the read)."""

        def answer(status: Status | None, error: BaseException | None) -> None:
            if error is None:
                block.lease_read = True
                if status is None:
                    self.stop()  # (the branch is cancelled with the run)
                    return
                if status == "waitingForPause":
                    self.pause_requested = True
            _wake(block.wakeup)

        self.lease_reads.ask(self.claim.pk, self.claim.token, answer)

    async def _still_leased(self) -> None:
        """Read the lease before a step starts: stop if it is gone, pause if asked. Called
        when the run may have missed a change made elsewhere: after a recorded wait held
        in-process to its end (see HOLD_WAIT; the instance showed `running` meanwhile,
        though it only waited, so a pause, terminate, restart or delete from another process
        may have come without this worker hearing of it), and once the lease's renewals
        are overdue (lease_doubtful_at)."""
        status = await self._guard(lambda: self.lease_reads.status(self.claim.pk, self.claim.token))
        if status == "waitingForPause":
            self.pause_requested = True

    def _maybe_suspend(self, turn: int = 0) -> None:
        """Suspend once every task of the run waits and no step runs, after letting the loop
        settle; not while a recorded wait, resumed early, ends within HOLD_WAIT.

        Suspending cancels the run's tasks: `run()` unwinds as any cancelled coroutine does
        (an exception raised into the waits would be a value to `gather(...,
        return_exceptions=True)`, and the code after it would run on)."""
        if self.suspend_blocks is not None or self.stopped or not self.blocked:
            return
        if self._task is None or self._task.done():
            return  # run() has ended: the run ends as it did
        if self.inflight:
            self._record_waits_soon()  # a step runs on: the waits go to the store without the suspension
            return  # (looked at again when it ends)
        if any(block.wakeup.done() for block in self.blocked.values()):
            return  # a branch was poked awake
        soon = clock.now() + HOLD_WAIT
        if any(b.recorded and b.wake_at is not None and b.wake_at <= soon for b in self.blocked.values()):
            return  # that branch wakes in-process, and this is looked at again then
        if not self._all_waiting():
            self._record_waits_soon()  # likewise
            self._look_again_later()
            return
        if turn < _SETTLE_TURNS:
            asyncio.get_running_loop().call_soon(self._maybe_suspend, turn + 1)
            return
        self.suspend_blocks = list(self.blocked.values())
        for task in (self._task, *self._branches):
            if task is not None and not task.done():
                task.cancel()

    def _record_waits_soon(self) -> None:
        """Record the waits begun (a sleep, a wait for an event, a wait before a retry) that the
        run cannot record by suspending, because other tasks of it go on: so that a crash or
        a restart meanwhile resumes them as begun (a sleep's end, a step's attempts), not anew."""
        queued = False
        for block in self.blocked.values():
            if block.write is not None and not block.recorded and not block.queued:
                block.queued = queued = True
                self.pending.append(block.write)
        if queued:
            self._record_soon()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self.inflight += 1
        try:
            yield
        finally:
            self._idle()

    def _idle(self) -> None:
        """A step stopped running (the end of `_busy`): suspend if it was the last and the rest wait."""
        self.inflight -= 1
        if not self.inflight and self.blocked:
            self._look_delay = _LOOK_AGAIN_FIRST
            self._maybe_suspend()

    # -- steps ------------------------------------------------------------------------------

    def _next_key(self, kind: StepKind, name: object) -> StepKey:
        if not isinstance(name, str) or not name or not serialization.is_storable(name):
            raise InvalidInputError(
                f"invalid step name {name!r}: expected a non-empty string of Unicode text "
                "(no NUL characters or lone surrogates)"
            )
        if len(name) > self.limits.max_step_name:
            raise LimitExceededError(
                f"step name {name[:40]!r}... is {len(name)} characters; limit is "
                f"{self.limits.max_step_name} (max_step_name)",
                limit=self.limits.max_step_name,
                value=len(name),
                limit_name="max_step_name",
            )
        branch = self._branch()
        n = branch.calls[(kind, name)] = branch.calls.get((kind, name), 0) + 1
        where = f"{branch.by_first_call if self.first_call_paths else branch.path}#{n}"
        record = self.calls.get((kind, name, where)) if self.calls else None
        if self.legacy:  # (every call counts, as it did when those steps were recorded)
            nth = self.called[(kind, name)] = self.called.get((kind, name), 0) + 1
            if record is None:
                record = self.legacy.get((kind, name, nth))
        if record is not None:
            return record.key
        # The lowest number not recorded: after a crash, steps that were not recorded yet
        # (concurrent ones of one name) get the numbers they had, if called in the same order.
        count = self.next_count.get((kind, name), 1)
        recorded = self.recorded_counts.get((kind, name))
        if recorded:
            while count in recorded:
                count += 1
        self.next_count[(kind, name)] = count + 1
        key = StepKey(kind, name, count)
        self.branches[key] = where
        return key

    def _branch(self) -> _Branch:
        """The branch calling a step now; a task of the run calling its first step becomes one."""
        branch = _branch.get()
        if branch is None or branch.owner is not self.identity:
            return self.root  # (not called from the run's tasks)
        task = asyncio.current_task()
        if branch.task is task:
            return branch
        branch = branch.child(task)
        _branch.set(branch)
        return branch

    def _count_new_step(self) -> None:
        self.step_total += 1
        if self.step_total > self.limits.max_steps:
            raise LimitExceededError(
                f"instance {self.claim.id!r} reached {self.step_total} steps; limit is "
                f"{self.limits.max_steps} (max_steps)",
                limit=self.limits.max_steps,
                value=self.step_total,
                limit_name="max_steps",
            )

    def do(self, name: object, fn: Callable[..., Any], config: StepConfig) -> Coroutine[Any, Any, Any]:
        if not callable(fn):
            raise InvalidInputError(f"invalid step function {fn!r}: expected a callable")
        return self._do(self._next_key("do", name), fn, config)

    async def _do(self, key: StepKey, fn: Callable[..., Any], config: StepConfig) -> Any:
        self._track_branch()
        record = self.records.get(key)
        if record is not None and record.status == "complete":
            return serialization.loads(record.result_json)
        if record is not None and record.status == "failed":
            raise StepFailed(key.name, record.error_type or "Error", record.error_message or "")
        if record is None:
            self._count_new_step()
        attempt = record.attempts if record is not None else 0
        started_at = record.started_at if record is not None else clock.now()
        if record is not None and record.due_at is not None and record.due_at > clock.now():
            await self._block(key, record.due_at, None, recorded=True)  # a retry wait, already recorded
        logged: list[Attempt] = []
        while True:
            if clock.now() >= self.lease_doubtful_at:
                await self._still_leased()
            if self.pause_requested:
                await self._block(key, None, None)
            attempt += 1
            self.inflight += 1  # (the body of _busy, inline: this is the hot path)
            origin = _origin.set(None)  # the tasks a step's body creates are not the run's branches
            try:
                began = clock.now()
                error: BaseException | None = None
                final = False
                try:
                    value = await attempts.run(fn, key, attempt, config, self.executor)
                except Exception as exc:
                    error = exc
                    final = isinstance(exc, NonRetryableError) or attempt > config.retries.limit
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # the run is cancelled (stopped, shut down): no outcome of the step
                    # The body's own, not a cancellation of the run (a library's, leaked): it failed.
                    error, final = exc, attempt > config.retries.limit
                else:
                    try:
                        text, value = serialization.encode_result(
                            value, self.limits.max_value_bytes, what=f"result of step {key.name!r}"
                        )
                    except (TypeError, LimitExceededError) as exc:
                        error, final = exc, True
                ended = clock.now()
                if error is None:
                    # A first attempt that succeeds (most steps) needs no attempt log: the
                    # step's own times are that attempt's (store.base.attempt_log).
                    if attempt > 1:
                        logged.append(Attempt(attempt, began, ended, "ok"))
                    done = StepWrite(
                        key, "complete", started_at, text, attempts=attempt, ended_at=ended, new_attempts=logged
                    )
                    await self._commit([done])
                    return value
                error_type, message = _error_of(error)
                outcome: Outcome = "timeout" if isinstance(error, StepTimeoutError) else "error"
                logged.append(Attempt(attempt, began, ended, outcome, error_type, message))
                if final:
                    await self._commit(
                        [
                            StepWrite(
                                key, "failed", started_at, None, error_type, message, attempt, None, ended, logged
                            )
                        ]
                    )
                    raise StepFailed(key.name, error_type, message) from error
            finally:
                # The failure's traceback holds this frame: not kept in it, it makes no cycle.
                error = None
                _origin.reset(origin)
                self._idle()
            due = ended + config.retries.wait_before_retry(attempt)
            if due > clock.now():
                write = StepWrite(key, "waiting", started_at, None, error_type, message, attempt, due, None, logged)
                await self._block(key, due, write)

    def sleep(self, name: object, seconds: float | None, *, until: float | None) -> Coroutine[Any, Any, None]:
        return self._sleep(self._next_key("sleep", name), seconds, until)

    async def _sleep(self, key: StepKey, seconds: float | None, until: float | None) -> None:
        self._track_branch()
        record = self.records.get(key)
        if record is not None and record.status == "complete":
            return
        recorded = record is not None and record.due_at is not None
        if record is not None and record.due_at is not None:
            started_at, due = record.started_at, record.due_at
        else:
            if self.pause_requested:
                await self._block(key, None, None)
            started_at = clock.now()
            due = until if until is not None else started_at + (seconds or 0.0)
        if due > clock.now():
            await self._block(key, due, StepWrite(key, "waiting", started_at, due_at=due), recorded=recorded)
        self.pending.append(StepWrite(key, "complete", started_at, due_at=due, ended_at=clock.now()))
        self._record_soon()

    def wait_for_event(self, name: object, type_: str, timeout: float) -> Coroutine[Any, Any, Event]:
        return self._wait_for_event(self._next_key("wait_for_event", name), type_, timeout)

    async def _wait_for_event(self, key: StepKey, type_: str, timeout: float) -> Event:
        self._track_branch()
        record = self.records.get(key)
        if record is not None and record.status == "complete" and record.result_json is not None:
            return _event_from_result(record.result_json)
        if record is not None and record.status == "failed":
            raise WaitTimeout(key.name, record.error_type or "stepstone.WaitTimeout", record.error_message or "")
        if record is None:
            self._count_new_step()
            if self.pause_requested:
                await self._block(key, None, None)
        started_at = record.started_at if record is not None else clock.now()
        due = record.due_at if record is not None and record.due_at is not None else started_at + timeout
        lock = self._event_locks.setdefault(type_, asyncio.Lock())
        while True:
            # Two waits for one type in this run must not take the same event: one at a time.
            with self._busy():
                async with lock:
                    event = await self._take_event(key, type_, started_at, due)
            if event is not None:
                return event
            write = StepWrite(key, "waiting", started_at, due_at=due)
            await self._block(key, due, write, wait_type=type_, recorded=record is not None)

    async def _take_event(self, key: StepKey, type_: str, started_at: float, due: float) -> Event | None:
        """Take the first kept event of `type_` for this wait; WaitTimeout once overdue.

        The event taken is recorded as a completed sleep is (_record_soon). Should the run
        end before (a crash), the event is still the first of its type kept for the
        instance, and the wait takes it again."""
        await self._recorded()
        if any(write.consume_event is not None for write in self.pending):
            await self._commit([])  # an event taken but not yet recorded would be found again
        await self._all_takes_recorded()  # (one under way in another branch's commit, likewise)
        event = await self._guard(lambda: self.store.next_event(self.claim.pk, type_))
        now = clock.now()
        # An event sent after the wait's deadline is not for it, though no worker was there
        # to time the wait out then (the instance paused, the workers down): the wait times
        # out as it would have on time, and the event stays kept for a later wait. Judged
        # by the event's time alone, so that a replay decides as the run before it did.
        if event is not None and event.sent_at <= due:
            result = _event_result(event.type, event.payload_json, event.sent_at)
            taken = StepWrite(key, "complete", started_at, result, due_at=due, ended_at=now, consume_event=event.seq)
            self.pending.append(taken)
            self._record_soon()
            return Event(event.type, serialization.loads(event.payload_json), to_datetime(event.sent_at))
        if now < due:
            return None
        timed_out = WaitTimeout(key.name, message=f"no {type_!r} event arrived for step {key.name!r}")
        failed = StepWrite(
            key, "failed", started_at, None, timed_out.error_type, timed_out.message, due_at=due, ended_at=now
        )
        await self._commit([failed])
        raise timed_out

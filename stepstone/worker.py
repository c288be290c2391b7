"""The worker: claims runnable instances, runs them, keeps their leases alive.

A worker sleeps until the earliest moment something becomes runnable (the next
timer, the next expiring lease), or until it is woken: by this process (an instance
created, an event sent, a run suspended) or by another (the store's notifications,
else a slow safety-net poll). It never polls the database in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from stepstone import clock, retention
from stepstone.replay import HOLD_WAIT, LeaseReads, Run
from stepstone.retention import Retention
from stepstone.serialization import Limits
from stepstone.store.base import FIRST_TOKEN, Claim, InstanceRecord, Lease, Status, Store
from stepstone.workflow import Workflow

log = logging.getLogger("stepstone.worker")

CLAIM_RETRY = 5.0
"""Seconds before a claim that failed (the database unreachable) is tried again."""
SEEN_EVERY = 60.0
"""Seconds between two records of an idle worker's liveness (one with leases, at each heartbeat)."""
LAPSED = 1.0
"""Seconds past a lease's term at which it has surely lapsed (a renewal sent just before the
run ended may have landed after)."""
CLAIM_AHEAD = HOLD_WAIT / 2
"""Seconds: a worker claims instances whose timers are due within this, so that their
runs are replayed and waiting in-process when the timers fire."""


def host_identity() -> str:
    """Names this machine (and pid namespace), so a worker can tell its neighbours' pids apart."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as boot:
        parts.append(boot.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Active:
    claim: Claim
    lease_until: float
    """The term of the lease as this worker last set it (at the claim, at each renewal)."""
    task: asyncio.Task[None] | None = None
    run: Run | None = None


class Worker:
    """Runs the instances of `workflows` found in `store`, up to `concurrency` at a time."""

    def __init__(
        self,
        store: Store,
        workflows: dict[str, type[Workflow]],
        *,
        concurrency: int,
        lease_seconds: float,
        limits: Limits,
        executor: Executor,
        on_end: Callable[[int, Status | None, str | None, str | None], None],
        on_start: Callable[[int], None],
        retention: Retention | None = None,
        prune_every: float = 60.0,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self._lease_reads = LeaseReads(store)
        self.limits = limits
        self.executor = executor
        self.on_end = on_end
        """Called with (pk, status, output JSON, error JSON) whenever a run here ends: the
        status its end recorded (None if it recorded none: stopped, failed)."""
        self.on_start = on_start
        """Called with the pk of each instance whose run starts here."""
        self.retention = retention
        self.prune_every = prune_every
        self.host = host_identity()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active: dict[int, _Active] = {}
        self._woken = False
        self._wakeup: asyncio.Future[None] | None = None
        self._look_at = 0.0
        """When the sleeping claim loop looks next (moved earlier by `expect`)."""
        self._expected: list[float] = []
        """Timers of instances this worker released since its last claim began."""
        self._lapsing: list[float] = []
        """When leases of this worker's runs that ended without a word lapse (_after_run)."""
        self._full = False
        """The last look found the worker full: a slot that frees may take queued work."""
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reserved = 0
        """Slots promised to instances being created by this process (lease_new, then adopt)."""
        self._unreserved = asyncio.Event()
        self._unreserved.set()

    async def start(self) -> None:
        await self.store.worker_seen(self.id, self.host, os.getpid(), clock.now())
        await self._reap_dead_neighbours()
        await self.store.subscribe_wakeups(self.wake)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="stepstone-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="stepstone-heartbeat"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; hand running instances back so another worker can take them at once."""
        self._stopping = True
        self.wake()
        if self._tasks:
            claim_loop, heartbeat = self._tasks
            heartbeat.cancel()
            # The claim loop ends at its next turn; cancelling it mid-claim could strand a claim.
            await asyncio.wait([claim_loop], timeout=grace)
            claim_loop.cancel()
        # Instances being created under a lease of ours start here first, then stop like the rest.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unreserved.wait(), grace)
        runs = [a.task for a in self.active.values() if a.task is not None]
        for task in runs:
            task.cancel()  # each run hands its instance back as it ends
        if self._tasks or runs:
            _, pending = await asyncio.wait([*self._tasks, *runs], timeout=grace)
            if pending:
                log.warning("%d worker tasks did not stop within %s s", len(pending), grace)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.store.forget_worker(self.id)

    def wake(self) -> None:
        """Something may have become runnable: look now."""
        self._woken = True
        self._interrupt_sleep()

    def _interrupt_sleep(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def expect(self, at: float) -> None:
        """An instance released by this worker falls due at `at`: look then (no claim now)."""
        self._expected.append(at)
        self._look_by(at - CLAIM_AHEAD)

    def _look_by(self, at: float) -> None:
        """Look for work at `at` at the latest."""
        if at < self._look_at:
            self._look_at = at
            self._interrupt_sleep()  # to sleep again until the new `_look_at`

    async def _sleep_until_next_look(self) -> None:
        """Sleep until `_look_at`, or until woken; `expect` may move `_look_at` earlier meanwhile.

        Plain futures: no timeout races with cancel.
        """
        loop = asyncio.get_running_loop()
        while not self._woken and not self._stopping:
            delay = self._look_at - clock.now()
            if delay <= 0:
                return
            self._wakeup = loop.create_future()
            await asyncio.wait([self._wakeup], timeout=clock.first_leg(delay))

    def lease_new(self, workflow: str, count: int) -> Lease | None:
        """Free slots for up to `count` new instances of `workflow` that this process creates.

        They are created already leased to this worker and run here at once (`adopt`):
        no claim, no wakeup. None when no slot is free (they are then created queued).
        """
        if self._stopping or not self._tasks or workflow not in self.workflows:
            return None
        taken = min(count, self.concurrency - len(self.active) - self._reserved)
        if taken <= 0:
            return None
        self._reserved += taken
        self._unreserved.clear()
        return Lease(self.id, clock.now() + self.lease_seconds, taken)

    def adopt(self, lease: Lease, created: Sequence[InstanceRecord]) -> None:
        """Run the instances created under `lease` (`created` is empty if the create failed)."""
        self._reserved -= lease.limit
        if self._reserved == 0:
            self._unreserved.set()
        if not self._tasks:  # stopped meanwhile: their leases lapse and another worker takes them
            return
        for record in created:
            if record.status == "running":
                claim = Claim(record.pk, record.workflow, record.id, record.params_json, record.created_at, FIRST_TOKEN,
                              resumed=False)  # fmt: skip
                self._start(claim, lease.until)

    def poke(self, pk: int) -> None:
        """An event was sent to instance `pk`: if it runs here, its waits look at once."""
        active = self.active.get(pk)
        if active is not None and active.run is not None:
            active.run.poke()
        self.wake()

    def hold(self, pk: int, pause: bool) -> None:
        """A pause of instance `pk` was asked (or, `pause` False, withdrawn): if it runs
        here, it stops before its next step without waiting to hear it from the store."""
        active = self.active.get(pk)
        if active is not None and active.run is not None:
            active.run.hold(pause)

    def revoke(self, pk: int) -> None:
        """Instance `pk` was terminated, restarted or deleted: abandon its run here."""
        active = self.active.get(pk)
        if active is not None and active.run is not None:
            active.run.stop()

    # -- loops ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        names = sorted(self.workflows)
        while not self._stopping:
            woken, self._woken = self._woken, False
            free = self.concurrency - len(self.active) - self._reserved
            self._full = free <= 0
            next_at: float | None = None
            horizon = 0.0
            failed = False
            if free > 0:
                # The claim sees the timers released before it began (and reports the next one).
                self._expected.clear()
                now = clock.now()
                horizon = now + CLAIM_AHEAD  # timers due by then are taken now, to fire on time
                # A lease of this worker's lapsed: the store's look for work would not see it.
                lapsed = any(at <= now for at in self._lapsing)
                try:
                    next_at = await self._claim(names, free, now, horizon, woken or lapsed)
                except Exception:
                    log.exception("claiming instances failed; retrying in %s s", CLAIM_RETRY)
                    failed = True
            poll = self.store.wakeup_poll
            self._look_at = clock.now() + (min(CLAIM_RETRY, poll) if failed else poll)
            if next_at is not None:
                # A timer is taken CLAIM_AHEAD early. What was due by the horizon and not taken
                # is another worker's lease (or this worker is full): look again when it is due.
                self._look_at = min(self._look_at, next_at if next_at <= horizon else next_at - CLAIM_AHEAD)
            if not self._full and self._expected:  # released while the claim ran: not seen by it
                self._look_at = min(self._look_at, min(self._expected) - CLAIM_AHEAD)
            if self._lapsing:
                if free > 0 and not failed:  # a claim ran: it took the leases lapsed before it began
                    self._lapsing = [at for at in self._lapsing if at > now]
                if self._lapsing:
                    self._look_at = min(self._look_at, min(self._lapsing))
            await self._sleep_until_next_look()

    async def _claim(self, names: list[str], free: int, now: float, horizon: float, woken: bool) -> float | None:
        """Claim up to `free` runnable instances (timers due by `horizon` included) and start
        their runs; when the next timer not taken falls due. (A helper, so that the claims,
        their histories included, are not kept referenced while the loop sleeps.)"""
        batch = await self.store.claim(
            self.id, names, free, now, now + self.lease_seconds, due_by=horizon, expect_work=woken
        )
        for claim in batch.claims:
            self._start(claim, now + self.lease_seconds)
        self._full = len(batch.claims) >= free
        return batch.next_wake_at

    async def _heartbeat_loop(self) -> None:
        interval = min(self.lease_seconds / 3, self.prune_every)
        last_prune = 0.0
        last_seen = clock.now()  # (start() recorded it)
        while not self._stopping:
            try:
                if self.retention is not None and clock.now() - last_prune >= self.prune_every:
                    last_prune = clock.now()
                    await retention.prune(self.store, sorted(self.workflows), self.retention)
            except Exception:
                log.exception("pruning finished instances failed; retrying in %s s", self.prune_every)
            await asyncio.sleep(interval)
            try:
                tokens = {pk: a.claim.token for pk, a in self.active.items()}
                now = clock.now()
                if tokens:
                    lost = await self.store.renew_leases(self.id, tokens, now + self.lease_seconds)
                    for pk in lost:
                        active = self.active.get(pk)
                        if active is None or active.run is None or active.run.ending:
                            continue  # ended meanwhile: it gave its lease up
                        if active.claim.token != tokens[pk]:
                            continue  # claimed again by this worker meanwhile: the lease lost was the old one
                        log.warning("lost the lease of instance %r; abandoning its run", active.claim.id)
                        self.revoke(pk)
                    for pk, token in tokens.items():
                        active = self.active.get(pk)
                        if pk not in lost and active is not None and active.claim.token == token:
                            self._renewed(active, now + self.lease_seconds)
                if tokens or now - last_seen >= SEEN_EVERY:
                    await self.store.worker_seen(self.id, self.host, os.getpid(), now)
                    last_seen = now
                await self._reap_dead_neighbours()
            except Exception:
                log.exception("heartbeat failed; retrying in %s s", interval)

    async def _reap_dead_neighbours(self) -> None:
        """Free at once the leases of dead worker processes on this machine."""
        dead = [
            worker_id
            for worker_id, pid in await self.store.workers_on_host(self.host)
            if worker_id != self.id and not _pid_alive(pid)
        ]
        if dead and await self.store.expire_workers(dead, clock.now()):
            self.wake()

    # -- runs -------------------------------------------------------------------------------

    def _renewed(self, active: _Active, until: float) -> None:
        """The lease of `active` now runs until `until`; its run reads the lease before a
        step once a third of a term has passed without a renewal after that (the heartbeat
        renews every third of a term at the latest: the process was stopped, or its loop
        blocked, and another worker may have taken the instance over meanwhile)."""
        active.lease_until = until
        if active.run is not None:
            active.run.lease_doubtful_at = until - self.lease_seconds / 3

    def _start(self, claim: Claim, lease_until: float) -> None:
        previous = self.active.get(claim.pk)
        if previous is not None and previous.run is not None:  # our own lease expired; we took it again
            previous.run.stop()
        active = _Active(claim, lease_until)
        active.task = asyncio.create_task(self._run(claim, active), name=f"stepstone-run-{claim.id}")
        self.active[claim.pk] = active
        self.on_start(claim.pk)

    async def _run(self, claim: Claim, active: _Active) -> None:
        ended: Status | None = None
        try:
            if claim.steps is not None:
                history = list(claim.steps)
            else:
                history = await self.store.load_steps(claim.pk) if claim.resumed else []
            workflow_class = self.workflows[claim.workflow]
            active.run = Run(
                self.store, claim, workflow_class, history,
                limits=self.limits, executor=self.executor, lease_reads=self._lease_reads,
            )  # fmt: skip
            self._renewed(active, active.lease_until)
            ended = await active.run.execute()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run of instance %r of %r failed; it will be retried", claim.id, claim.workflow)
        finally:
            if self.active.get(claim.pk) is active:
                del self.active[claim.pk]
            self._after_run(ended, active.run)
            run = active.run
            if run is None:
                self.on_end(claim.pk, None, None, None)
            else:
                self.on_end(claim.pk, ended, run.output_json, run.error_json)

    def _after_run(self, ended: Status | None, run: Run | None) -> None:
        """A run ended `ended` and freed its slot: look for work only if there may be some
        (queued work waiting for a slot; its instance handed back, lost, or failed)."""
        timer = run.wake_at if ended == "waiting" and run is not None else None
        if timer is not None:
            self.expect(timer)  # when its instance falls due; nothing else became runnable
        elif ended is None and not self._stopping:
            # It recorded no end (the store failing, the run's own failure; or its lease lost):
            # its instance may still be leased to this worker, no longer renewed. A claim sees
            # others' leases only: look when this one has lapsed, to run it again.
            at = clock.now() + self.lease_seconds + LAPSED
            self._lapsing.append(at)
            self._look_by(at)
        settled = timer is not None or ended in ("complete", "errored", "terminated", "paused")
        if self._full or not settled:
            self.wake()

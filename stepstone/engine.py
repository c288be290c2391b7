"""`Engine`: opens the store, migrates it, serves workflows with an in-process worker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from stepstone import clock
from stepstone import store as stores
from stepstone.errors import InvalidInputError, InvalidStateError, StepstoneError, WorkflowNotFoundError
from stepstone.instances import InstanceStatus, WorkflowHandle, status_of
from stepstone.retention import Retention
from stepstone.serialization import Limits
from stepstone.store.base import InstanceRecord, Lease, Status, Store
from stepstone.threads import DaemonThreadPool
from stepstone.worker import Worker
from stepstone.workflow import Workflow, check_class, name_of

DEFAULT_URL = "sqlite:///stepstone.db"


def resolve_url(url: str | None) -> str:
    """The given URL, else $STEPSTONE_DATABASE_URL, else stepstone.db in the working directory."""
    if url is None:
        url = os.environ.get("STEPSTONE_DATABASE_URL") or DEFAULT_URL
    if not isinstance(url, str):
        raise InvalidInputError(f"invalid database URL {url!r}: expected a string")
    return url


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the caller runs on `loop` (a coroutine or callback of it)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Engine:
    """The entry point: `async with Engine(url, workflows=[...]) as engine: ...`.

    `worker=False` gives a client that only creates and manages instances, while
    separate `stepstone worker` processes run them. `concurrency`: instances this
    worker runs at once (waiting ones take no slot). `lease_seconds`: how long a silent worker keeps its instances
    before others take them over. `retention`: how long finished instances are kept.
    SQLite takes `synchronous="NORMAL"` (faster; a power loss may lose the last
    commits); PostgreSQL takes `schema=` (default "stepstone").
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        workflows: Iterable[type[Workflow]] = (),
        worker: bool = True,
        concurrency: int = 256,
        limits: Limits | None = None,
        lease_seconds: float = 30.0,
        retention: Retention | None = None,
        **store_options: Any,
    ) -> None:
        self.url = resolve_url(url)
        self.workflows: dict[str, type[Workflow]] = {}
        for cls in workflows:
            cls = check_class(cls)
            if cls.name in self.workflows and self.workflows[cls.name] is not cls:
                raise InvalidInputError(f"two workflows are named {cls.name!r}")
            self.workflows[cls.name] = cls
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"invalid concurrency {concurrency!r}: expected an integer >= 1")
        if not isinstance(lease_seconds, int | float) or lease_seconds <= 0:
            raise InvalidInputError(f"invalid lease_seconds {lease_seconds!r}: expected a positive number")
        if retention is not None and not isinstance(retention, Retention):
            raise InvalidInputError(f"invalid retention {retention!r}: expected stepstone.Retention")
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidInputError(f"invalid limits {limits!r}: expected stepstone.Limits")
        self.run_worker = worker
        self.concurrency = concurrency
        self.limits = limits or Limits()
        self.lease_seconds = float(lease_seconds)
        self.retention = retention
        if store_options:
            stores.check_options(self.url, store_options)
        self._store_options = store_options
        self._store: Store | None = None
        self._worker: Worker | None = None
        self._executor: DaemonThreadPool | None = None
        self._known: set[str] = set()
        """Names recorded in the store as last read (at start, then at each unknown name)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._run_watchers: dict[int, list[asyncio.Future[InstanceStatus | None]]] = {}

    def use_url(self, url: str) -> None:
        """Use the store at `url` instead of the one given (before `start`; the CLI's --db).
        Options given for another kind of store (SQLite's `synchronous`, PostgreSQL's
        `schema`...) configured the store replaced, and are dropped."""
        if self._store is not None:
            raise InvalidStateError("the engine has started: its store can no longer change")
        self.url = resolve_url(url)
        self._store_options = stores.options_for(self.url, self._store_options)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open (and migrate) the store, record the workflows served, start the worker."""
        if self._store is not None:
            raise StepstoneError("the engine is already started")
        store = stores.from_url(self.url, **self._store_options)
        await store.open()
        self._store = store
        self._loop = asyncio.get_running_loop()
        try:
            if self.workflows:
                await store.register_workflows(sorted(self.workflows), clock.now())
            self._known = set(await store.workflow_names())
            self._changed = asyncio.Event()
            if self.run_worker and self.workflows:
                self._executor = DaemonThreadPool(max_workers=max(32, self.concurrency))
                self._worker = Worker(
                    store,
                    self.workflows,
                    concurrency=self.concurrency,
                    lease_seconds=self.lease_seconds,
                    limits=self.limits,
                    executor=self._executor,
                    on_start=self._run_started,
                    on_end=self._run_ended,
                    retention=self.retention,
                )
                await self._worker.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the worker (handing running instances back) and close the store."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        store, self._store = self._store, None
        self._loop = None
        if store is not None:
            await store.close()

    async def serve_forever(self) -> None:
        """Run until cancelled (what `stepstone worker` does)."""
        if self._store is None:
            await self.start()
        await asyncio.Event().wait()

    # -- workflows --------------------------------------------------------------------------

    def workflow(self, workflow: str | type[Workflow]) -> WorkflowHandle:
        """A handle on a workflow, by name or class; WorkflowNotFoundError if unknown.

        Known are the workflows this engine serves and those any Engine has recorded in the
        store. A name not known when this engine last looked makes it look again (once
        started): another process may have recorded it since.
        """
        name = name_of(workflow)
        if not self._knows(name) and self._store is not None:
            self._known = self._recorded_workflows()
        return self._handle(name)

    async def find_workflow(self, workflow: str | type[Workflow]) -> WorkflowHandle:
        """As `workflow()`, but reading the store for a name not known yet without blocking
        the event loop (for servers)."""
        name = name_of(workflow)
        if not self._knows(name) and self._store is not None:
            self._known = set(await self._store.workflow_names())
        return self._handle(name)

    def _knows(self, name: str) -> bool:
        return name in self.workflows or name in self._known

    def _handle(self, name: str) -> WorkflowHandle:
        if not self._knows(name):
            known = sorted(set(self.workflows) | self._known)
            raise WorkflowNotFoundError(
                f"unknown workflow {name!r}; known workflows: {', '.join(known) if known else 'none'}"
            )
        return WorkflowHandle(self, name)

    def _recorded_workflows(self) -> set[str]:
        """The names recorded in the store now, read without `await` (`workflow()` is not async).

        From another thread (BlockingClient's callers, a sync step function), the engine's
        own store reads them on its event loop. On that loop itself, which this call holds,
        the store's connections cannot answer: a store opened for the purpose reads them on
        a thread of its own, the caller waiting for it (a few milliseconds, for unknown
        names only).
        """
        loop = self._loop
        if loop is not None and loop.is_running() and not _running_on(loop):
            return set(asyncio.run_coroutine_threadsafe(self.store.workflow_names(), loop).result())

        async def read() -> list[str]:
            store = stores.from_url(self.url, **self._store_options)
            await store.open()
            try:
                return await store.workflow_names()
            finally:
                await store.close()

        with ThreadPoolExecutor(1, thread_name_prefix="stepstone-workflow-names") as thread:
            return set(thread.submit(asyncio.run, read()).result())

    # -- for handles and the worker ---------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise StepstoneError("the engine is not started: use `async with engine:` or `await engine.start()`")
        return self._store

    def wake(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    def lease_new(self, workflow: str, count: int) -> Lease | None:
        """A lease for new instances this process creates, if its worker has free slots."""
        return None if self._worker is None else self._worker.lease_new(workflow, count)

    def adopt(self, lease: Lease | None, created: Sequence[InstanceRecord]) -> None:
        """Hand the instances created under `lease` to the worker, which runs them now."""
        if lease is not None and self._worker is not None:
            self._worker.adopt(lease, created)

    def runs_here(self, pk: int) -> bool:
        """Whether this process's worker is running instance `pk` now (its end will be signalled)."""
        return self._worker is not None and pk in self._worker.active

    def poke(self, pk: int) -> None:
        if self._worker is not None:
            self._worker.poke(pk)

    def hold(self, pk: int, pause: bool) -> None:
        if self._worker is not None:
            self._worker.hold(pk, pause)

    def revoke(self, pk: int) -> None:
        if self._worker is not None:
            self._worker.revoke(pk)
            self._worker.wake()

    def changes(self) -> asyncio.Event:
        """An event set at the next change this process makes to any instance's end state."""
        return self._changed

    def watch_run(self, pk: int) -> asyncio.Future[InstanceStatus | None] | None:
        """A future set when a run of instance `pk` in this process starts or ends: to the
        final status if the run ended the instance (complete, errored), else to None (a run
        started; or it suspended, was stopped, failed). None without a worker. Drop it with
        `unwatch_run`."""
        if self._worker is None:
            return None
        future: asyncio.Future[InstanceStatus | None] = asyncio.get_running_loop().create_future()
        self._run_watchers.setdefault(pk, []).append(future)
        return future

    def unwatch_run(self, pk: int, future: asyncio.Future[InstanceStatus | None]) -> None:
        watchers = self._run_watchers.get(pk)
        if watchers is not None and future in watchers:
            watchers.remove(future)
            if not watchers:
                del self._run_watchers[pk]

    def _tell_watchers(self, pk: int, final: InstanceStatus | None) -> None:
        for future in self._run_watchers.pop(pk, ()):
            if not future.done():
                future.set_result(final)

    def _run_started(self, pk: int) -> None:
        self._tell_watchers(pk, None)

    def _run_ended(self, pk: int, status: Status | None, output_json: str | None, error_json: str | None) -> None:
        if pk in self._run_watchers:
            final = None
            if status in ("complete", "errored"):
                final = status_of(status, output_json, error_json)
            self._tell_watchers(pk, final)
        self._notify_change()

    def _notify_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

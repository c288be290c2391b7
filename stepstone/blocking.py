"""`BlockingClient`: the instance operations without `await`, for scripts and sync web apps.

It runs a client `Engine` (no worker) on an event loop in a background thread and
waits for each call, so a Flask or Django view can create and steer instances that
`stepstone worker` processes run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from stepstone.engine import Engine
from stepstone.instances import Instance, InstanceDetail, InstanceStatus, WorkflowHandle
from stepstone.serialization import JSON
from stepstone.workflow import Workflow

T = TypeVar("T")


class BlockingClient:
    """`with BlockingClient(url) as client: client.workflow("w").create(params=...)`."""

    def __init__(self, url: str | None = None, **engine_options: Any) -> None:
        self._engine = Engine(url, worker=False, **engine_options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stepstone-client", daemon=True)
        self._thread.start()
        try:
            self._call(self._engine.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the store and stop the background loop."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._engine.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def workflow(self, workflow: str | type[Workflow]) -> BlockingWorkflow:
        """A handle on a workflow, by name or class; WorkflowNotFoundError if unknown."""
        return BlockingWorkflow(self, self._engine.workflow(workflow))


class BlockingWorkflow:
    """`WorkflowHandle` without `await`."""

    def __init__(self, client: BlockingClient, handle: WorkflowHandle) -> None:
        self._client = client
        self._handle = handle
        self.name = handle.name

    def create(self, id: str | None = None, params: JSON = None) -> BlockingInstance:
        return self._wrap(self._client._call(self._handle.create(id=id, params=params)))

    def create_batch(self, items: Iterable[Mapping[str, Any]]) -> list[BlockingInstance]:
        return [self._wrap(inst) for inst in self._client._call(self._handle.create_batch(items))]

    def get(self, id: str) -> BlockingInstance:
        return self._wrap(self._client._call(self._handle.get(id)))

    def list(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> BlockingInstanceList:
        page = self._client._call(self._handle.list(status=status, limit=limit, cursor=cursor))
        return BlockingInstanceList((self._wrap(inst) for inst in page), page.next_cursor)

    def _wrap(self, inst: Instance) -> BlockingInstance:
        return BlockingInstance(self._client, inst)


class BlockingInstanceList(list["BlockingInstance"]):
    """A page of instances, newest first, with `next_cursor` (None on the last page)."""

    def __init__(self, items: Iterable[BlockingInstance], next_cursor: str | None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor


class BlockingInstance:
    """`Instance` without `await`."""

    def __init__(self, client: BlockingClient, inst: Instance) -> None:
        self._client = client
        self._inst = inst
        self.id = inst.id
        self.workflow = inst.workflow

    def __repr__(self) -> str:
        return f"<BlockingInstance {self.workflow}/{self.id}>"

    def status(self) -> InstanceStatus:
        return self._client._call(self._inst.status())

    def describe(self) -> InstanceDetail:
        return self._client._call(self._inst.describe())

    def send_event(self, type: str, payload: JSON = None) -> None:
        self._client._call(self._inst.send_event(type, payload))

    def pause(self) -> None:
        self._client._call(self._inst.pause())

    def resume(self) -> None:
        self._client._call(self._inst.resume())

    def terminate(self) -> None:
        self._client._call(self._inst.terminate())

    def restart(self, from_step: str | None = None, count: int = 1, type: str = "do") -> None:
        self._client._call(self._inst.restart(from_step=from_step, count=count, type=type))

    def delete(self) -> None:
        self._client._call(self._inst.delete())

    def wait(self, timeout: float | None = None) -> InstanceStatus:
        return self._client._call(self._inst.wait(timeout=timeout))

"""Live changes as Server-Sent Events, found by polling the store.

The engine has no change feed yet, so a stream reads cheap things at a short interval
and sends what differs: one instance's `updated` time and status (every write a run
makes moves `updated`), a workflow's counts by status and the marks of its newest
instances, or every workflow's counts (the dashboard's overview). In a process that
also runs a worker (`stepstone dev`) the engine's own change signal wakes a stream early.
A stream ends when the client goes away (a listener on the ASGI channel cancels it at
once) or when the server stops.

Each message is `event: <kind>` and one line of JSON `data:`; a comment line
(`: keep-alive`) goes out when nothing changed for a while, so proxies keep the
connection open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from stepstone import clock
from stepstone.durations import to_datetime
from stepstone.engine import Engine
from stepstone.errors import InstanceNotFoundError
from stepstone.http.responses import logger, to_json
from stepstone.instances import detail_of, workflow_rows
from stepstone.store.base import STATUSES, InstanceRecord, Status

KEEP_ALIVE_SECONDS = 15.0


def message(event: str, data: object) -> bytes:
    """One SSE message. JSON text holds no raw newline, so one `data:` line is enough."""
    return f"event: {event}\ndata: {to_json(data)}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    """A streaming response that stops as soon as the client disconnects.

    Starlette's own only notices a gone client at its next write under ASGI 2.4;
    a quiet stream would then poll the store for nobody until its next keep-alive.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, listening):
                task.cancel()
            ended = await asyncio.gather(streaming, listening, return_exceptions=True)
        # A write to a client that is gone raises OSError: that is just the end of the stream.
        if isinstance(ended[0], Exception) and not isinstance(ended[0], OSError):
            logger.error("a live stream failed", exc_info=ended[0])


BUSY_SHARE = 0.1
"""Most of a stream's time spent polling: after a poll that took t, it rests at least 9 t."""


class Pacer:
    """Sleeps between polls: until the interval passes, the engine reports a change, or the server stops.

    A poll that took long (counting a workflow of millions of instances, say) makes the
    next rest longer, so one open dashboard never keeps the store busy.
    """

    def __init__(self, engine: Engine, interval: float, stopping: asyncio.Event) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = stopping
        self._quiet_since = asyncio.get_running_loop().time()
        self._poll_started = self._quiet_since

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sent(self) -> None:
        self._quiet_since = asyncio.get_running_loop().time()

    def keep_alive_due(self) -> bool:
        due = asyncio.get_running_loop().time() - self._quiet_since >= KEEP_ALIVE_SECONDS
        if due:
            self.sent()
        return due

    async def pause(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        rest = (now - self._poll_started) * (1 - BUSY_SHARE) / BUSY_SHARE
        try:
            if rest > 0.001:  # the rest a slow poll earned: only the server stopping cuts it short
                await self._wait([self._stopping.wait()], rest)
            remaining = now + self._interval - loop.time()
            if remaining > 0 and not self.stopping:
                await self._wait([self._stopping.wait(), self._engine.changes().wait()], remaining)
        finally:
            self._poll_started = loop.time()

    @staticmethod
    async def _wait(awaitables: list[Coroutine[Any, Any, Any]], timeout: float) -> None:
        waits = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


def _mark(record: InstanceRecord) -> tuple[datetime, str]:
    return to_datetime(record.updated_at), record.status


async def instance_changes(engine: Engine, pacer: Pacer, workflow: str, instance_id: str) -> AsyncIterator[bytes]:
    """`instance` (the whole instance, steps included) now and at every change; `deleted` then the end."""
    last: tuple[datetime, str] | None = None
    while not pacer.stopping:
        try:
            record = await engine.store.get_instance(workflow, instance_id)
            if _mark(record) != last:
                detail = detail_of(record, await engine.store.history(record.pk))
                last = detail.updated, detail.status
                pacer.sent()
                yield message("instance", detail.as_dict())
        except InstanceNotFoundError:
            yield message("deleted", {"id": instance_id, "workflow": workflow})
            return
        if pacer.keep_alive_due():
            yield b": keep-alive\n\n"
        await pacer.pause()


async def overview_changes(engine: Engine, pacer: Pacer) -> AsyncIterator[bytes]:
    """`workflows` (every workflow with its counts by status) now and whenever any of it changes."""
    last: list[dict[str, object]] | None = None
    while not pacer.stopping:
        rows = await workflow_rows(engine)
        if rows != last:
            last = rows
            pacer.sent()
            yield message("workflows", rows)
        if pacer.keep_alive_due():
            yield b": keep-alive\n\n"
        await pacer.pause()


async def workflow_changes(engine: Engine, pacer: Pacer, workflow: str, window: int) -> AsyncIterator[bytes]:
    """`counts` now and when they change; `instance` (no steps) for each of the newest `window`
    instances now and at each of its changes, oldest first."""
    last_counts: dict[Status, int] | None = None
    last_marks: dict[str, tuple[datetime, str]] = {}
    while not pacer.stopping:
        found = await engine.store.status_counts(workflow, now=clock.now())
        counts = {status: found.get(status, 0) for status in STATUSES}
        if counts != last_counts:
            last_counts = counts
            pacer.sent()
            yield message("counts", {"workflow": workflow, "counts": counts})
        records = await engine.store.list_instances(workflow, status=None, limit=window, before_pk=None)
        marks: dict[str, tuple[datetime, str]] = {}
        for record in reversed(records):
            marks[record.id] = _mark(record)
            if last_marks.get(record.id) == marks[record.id]:
                continue
            detail = detail_of(record)
            marks[record.id] = detail.updated, detail.status
            pacer.sent()
            yield message("instance", detail.as_dict(steps=False))
        last_marks = marks
        if pacer.keep_alive_due():
            yield b": keep-alive\n\n"
        await pacer.pause()

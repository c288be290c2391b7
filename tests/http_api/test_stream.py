"""Live changes as Server-Sent Events: what a stream sends, and that it ends when its client leaves.

httpx's ASGI transport reads a whole response before returning it, so these tests drive
the app as a server would: one ASGI call, a `send` that collects what the app writes,
and a `receive` that reports the client's disconnection when the test says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from stepstone import Engine
from stepstone.http import create_app
from stepstone.http.app import stop_streams
from stepstone.http.stream import Pacer

from .app import Greeter
from .support import DEADLINE


class Stream:
    """One streaming request to an ASGI app, read as SSE messages."""

    def __init__(self, app: Starlette, path: str) -> None:
        self._sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._buffer = ""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8787"), (b"accept", b"text/event-stream")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8787),
        }
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not hasattr(self, "_asked"):
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        await self._sent.put(dict(message))

    def disconnect(self) -> None:
        self._gone.set()

    async def next(self) -> tuple[str, Any]:
        """The next message: (event, parsed data); ("end", None) once the response is complete."""
        async with asyncio.timeout(DEADLINE):
            while "\n\n" not in self._buffer:
                message = await self._sent.get()
                if message["type"] == "http.response.start":
                    self.status = message["status"]
                    self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
                    continue
                self._buffer += message.get("body", b"").decode()
                if not message.get("more_body", False) and "\n\n" not in self._buffer:
                    return "end", None
            block, self._buffer = self._buffer.split("\n\n", 1)
        if block.startswith(":"):  # a keep-alive comment
            return await self.next()
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        return fields["event"], json.loads(fields["data"])

    async def next_matching(self, event: str, **expected: Any) -> Any:
        while True:
            kind, data = await self.next()
            assert kind != "end", f"the stream ended before an {event} with {expected}"
            if kind == event and all(data.get(k) == v for k, v in expected.items()):
                return data


@asynccontextmanager
async def streaming(app: Starlette, path: str) -> AsyncIterator[Stream]:
    stream = Stream(app, path)
    try:
        yield stream
    finally:
        stream.disconnect()
        await asyncio.wait_for(stream.task, DEADLINE)


async def test_an_instance_stream_sends_the_instance_then_each_change(engine: Engine) -> None:
    app = create_app(engine, poll_interval=0.02)
    handle = engine.workflow("greeter")
    inst = await handle.create(id="s1", params={"who": "ana"})
    async with streaming(app, "/workflows/greeter/instances/s1/stream") as stream:
        first = await stream.next_matching("instance")
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert first["id"] == "s1" and first["status"] == "queued" and first["steps"] == []
        await inst.pause()
        assert (await stream.next_matching("instance"))["status"] == "paused"
        await inst.terminate()
        assert (await stream.next_matching("instance"))["status"] == "terminated"
        await inst.delete()
        assert await stream.next() == ("deleted", {"id": "s1", "workflow": "greeter"})
        assert await stream.next() == ("end", None)


async def test_an_instance_stream_shows_steps_as_they_are_recorded(store_url: str) -> None:
    async with Engine(store_url, workflows=[Greeter]) as engine:
        app = create_app(engine, poll_interval=0.02)
        await engine.workflow("greeter").create(id="s2", params={"who": "bo"})
        async with streaming(app, "/workflows/greeter/instances/s2/stream") as stream:
            waiting = await stream.next_matching("instance", status="waiting")
            assert [step["name"] for step in waiting["steps"]] == ["greet", "reply"]


async def test_closing_the_client_ends_the_stream_at_once(engine: Engine) -> None:
    # A long interval: the stream is asleep between polls when its client goes.
    app = create_app(engine, poll_interval=60)
    await engine.workflow("greeter").create(id="s3")
    stream = Stream(app, "/workflows/greeter/instances/s3/stream")
    await stream.next_matching("instance")
    stream.disconnect()
    await asyncio.wait_for(stream.task, 2)


async def test_stopping_the_server_ends_every_stream(engine: Engine) -> None:
    app = create_app(engine, poll_interval=60)
    await engine.workflow("greeter").create(id="s4")
    streams = [Stream(app, "/workflows/greeter/instances/s4/stream"), Stream(app, "/workflows/greeter/stream")]
    for stream in streams:
        await stream.next()
    stop_streams(app)
    for stream in streams:
        await asyncio.wait_for(stream.task, 2)
        while (await stream.next())[0] != "end":
            pass


async def test_a_workflow_stream_sends_counts_and_changed_instances(engine: Engine) -> None:
    app = create_app(engine, poll_interval=0.02)
    handle = engine.workflow("greeter")
    await handle.create(id="w1")
    async with streaming(app, "/workflows/greeter/stream") as stream:
        counts = await stream.next_matching("counts")
        assert counts["workflow"] == "greeter" and counts["counts"]["queued"] == 1
        assert (await stream.next_matching("instance"))["id"] == "w1"
        await handle.create(id="w2")
        assert (await stream.next_matching("counts"))["counts"]["queued"] == 2
        created = await stream.next_matching("instance")
        assert created["id"] == "w2" and "steps" not in created
        await (await handle.get("w1")).pause()
        assert (await stream.next_matching("instance", id="w1"))["status"] == "paused"


async def test_a_stream_of_an_unknown_instance_is_a_json_404(engine: Engine) -> None:
    app = create_app(engine)
    stream = Stream(app, "/workflows/greeter/instances/nope/stream")
    await asyncio.wait_for(stream.task, DEADLINE)
    messages = []
    while not stream._sent.empty():
        messages.append(stream._sent.get_nowait())
    assert messages[0]["status"] == 404
    assert json.loads(messages[1]["body"])["errors"][0]["code"] == "instance_not_found"


async def test_the_overview_stream_sends_every_workflow_with_its_counts_at_each_change(engine: Engine) -> None:
    app = create_app(engine, poll_interval=0.02)
    async with streaming(app, "/workflows/stream") as stream:
        first = await stream.next_matching("workflows")
        assert {row["name"] for row in first} == {"greeter", "flaky"}
        assert all(set(row["counts"].values()) == {0} for row in first)
        inst = await engine.workflow("greeter").create(id="o1")
        rows = {row["name"]: row["counts"] for row in await stream.next_matching("workflows")}
        assert rows["greeter"]["queued"] == 1 and rows["flaky"]["queued"] == 0
        await inst.pause()
        rows = {row["name"]: row["counts"] for row in await stream.next_matching("workflows")}
        assert rows["greeter"]["queued"] == 0 and rows["greeter"]["paused"] == 1


async def test_a_slow_poll_earns_a_longer_rest_that_only_stopping_cuts_short(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    pacer = Pacer(engine, 0.01, stopping)
    await pacer.pause()
    await asyncio.sleep(0.05)  # a poll that took 50 ms
    started = loop.time()
    await pacer.pause()
    assert loop.time() - started >= 0.4  # nine times the poll: polls take a tenth of the time at most
    await asyncio.sleep(0.2)
    loop.call_later(0.05, stopping.set)
    started = loop.time()
    await pacer.pause()
    assert loop.time() - started < 1

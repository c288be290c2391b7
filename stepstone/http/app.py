"""`create_app`: the ASGI application of the HTTP API, for an Engine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from stepstone.engine import Engine
from stepstone.errors import StepstoneError
from stepstone.http import auth, dashboard
from stepstone.http.responses import ApiError, failure
from stepstone.http.routes import ROUTES, Api

_MARGIN = 64 * 1024
"""Room in a body for JSON around (and whitespace inside) a value of the largest size."""
_MIN_BODY_CAP = 16 * 1024 * 1024


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    max_batch: int = 100,
    poll_interval: float = 0.5,
) -> Starlette:
    """The HTTP API for `engine`'s store (see routes.py for the endpoints), and the dashboard at `/`.

    `token`: the bearer token every request must carry; None takes $STEPSTONE_API_TOKEN
    (no token when that is unset too). `max_body_bytes`: largest request body read
    (default: the larger of 16 MiB and twice the engine's `max_value_bytes`). Values
    inside are still checked against the engine's Limits. `poll_interval`: seconds
    between a live stream's reads of the store.

    The engine must be started while the app serves; the app's lifespan starts (and
    then closes) it if the server runs lifespan events and nobody started it before.
    """
    if max_body_bytes is None:
        max_body_bytes = max(_MIN_BODY_CAP, 2 * engine.limits.max_value_bytes + _MARGIN)
    api = Api(engine, max_body_bytes=max_body_bytes, max_batch=max_batch, poll_interval=poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started_here = False
        try:
            engine.store  # noqa: B018 -- raises if the engine is not started
        except StepstoneError:
            await engine.start()
            started_here = True
        try:
            with _streams_end_on_signals(api):
                yield
        finally:
            api.stopping.set()
            if started_here:
                await engine.close()

    app = Starlette(
        routes=[*ROUTES, *dashboard.ROUTES],
        middleware=[
            Middleware(
                auth.BearerAuth,
                token=token if token is not None else auth.token_from_env(),
                public=dashboard.is_public,
            )
        ],
        exception_handlers={HTTPException: _routing_error},
        lifespan=lifespan,
    )
    app.state.api = api
    return app


@contextlib.contextmanager
def _streams_end_on_signals(api: Api) -> Iterator[None]:
    """While the app serves, SIGINT and SIGTERM first end the live streams, then do what
    they did before (a server's handler, such as uvicorn's).

    A server stopping waits for its open connections to close before it ends the app's
    lifespan ("Waiting for connections to close"), and a stream stays open as long as its
    client does: an open dashboard would hold the server up. Only in the main thread (the
    only one that gets signals), and only over a handler written in Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    chained: dict[signal.Signals, tuple[Any, Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(sig)
        if not callable(before):
            continue  # (the default action, ignored, or set outside Python: left alone)

        def ending(signum: int, frame: FrameType | None, before: Any = before) -> None:
            loop.call_soon_threadsafe(api.stopping.set)
            before(signum, frame)

        signal.signal(sig, ending)
        chained[sig] = (ending, before)
    try:
        yield
    finally:
        for sig, (handler, before) in chained.items():
            if signal.getsignal(sig) is handler:  # (not replaced since: put back what was there)
                signal.signal(sig, before)


def stop_streams(app: Starlette) -> None:
    """End every live stream now (a server stopping need not wait for its clients to leave)."""
    api: Api = app.state.api
    api.stopping.set()


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such path) and 405 (no such method), in our envelope."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_input")
    return failure(ApiError(code, f"{exc.detail}: {request.method} {request.url.path}"), headers=exc.headers)

"""Serve the HTTP API with uvicorn, for `stepstone serve` and `stepstone dev`.

The engine (with its worker, for `dev`) and the server live in one event loop. On
SIGINT or SIGTERM: live streams end, the server stops taking connections and lets
running requests finish (5 s at most), then the engine hands its running instances
back and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from stepstone.engine import Engine
from stepstone.errors import InvalidInputError, StepstoneError
from stepstone.http import auth
from stepstone.http.app import create_app, stop_streams
from stepstone.store import shown_url

GRACE_SECONDS = 5
"""How long a stopping server lets running requests finish."""


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: `run` owns SIGINT and SIGTERM.

    uvicorn's own handlers raise the signal again once it has stopped, which would end
    the process before the engine hands its instances back.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_exposure(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token: the API would be open to the network."""
    if token is None and not auth.is_loopback(host):
        raise InvalidInputError(
            f"refusing to listen on {host} without an API token: set ${auth.TOKEN_VARIABLE} "
            "(clients then send Authorization: Bearer <token>), or listen on 127.0.0.1"
        )


def run(engine: Engine, *, host: str = "127.0.0.1", port: int = 8787, token: str | None = None) -> None:
    """Serve the API for `engine` (and run its worker if `engine.run_worker`) until SIGINT or SIGTERM.

    `token` None takes $STEPSTONE_API_TOKEN. Raises InvalidInputError for a
    non-loopback `host` without a token or a bad port, StepstoneError if the address
    cannot be listened on.
    """
    token = token if token is not None else auth.token_from_env()
    check_exposure(host, token)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidInputError(f"invalid port {port!r}: expected an integer from 0 to 65535 (0: any free port)")
    sock = _bind(host, port)
    try:
        asyncio.run(_serve(engine, sock, token))
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a taken port is one clear error (uvicorn would exit the process)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise StepstoneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(engine: Engine, sock: socket.socket, token: str | None) -> None:
    app = create_app(engine, token=token)
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", timeout_graceful_shutdown=GRACE_SECONDS, server_header=False
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with engine:
            serving = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started:
                _announce(engine, sock, token)
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                print("stepstone stopping: closing connections, handing running instances back", file=sys.stderr)
            stop_streams(app)
            server.should_exit = True
            await serving
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _announce(engine: Engine, sock: socket.socket, token: str | None) -> None:
    parts = [f"stepstone API and dashboard ready: {_address(sock)}/", f"store {shown_url(engine.url)}"]
    if engine.run_worker and engine.workflows:
        parts.append(f"worker for {', '.join(sorted(engine.workflows))}")
    parts.append("API token required" if token is not None else "no API token (loopback only)")
    print("; ".join(parts), file=sys.stderr, flush=True)

"""Access control: one API token, sent as `Authorization: Bearer <token>`.

With $STEPSTONE_API_TOKEN set, every API request needs it (401 otherwise); the comparison
takes constant time, and no message or log line ever holds a token. Without one the
API is open, so `stepstone serve` only listens on a loopback address then.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from stepstone.http.responses import ApiError, failure

TOKEN_VARIABLE = "STEPSTONE_API_TOKEN"


def token_from_env() -> str | None:
    """$STEPSTONE_API_TOKEN, or None when it is unset or empty."""
    return os.environ.get(TOKEN_VARIABLE) or None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); anything else may be reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _presented(scope: Scope) -> bytes | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip()
            return None
    return None


def _app_path(scope: Scope) -> str:
    """The request's path within this app (without the prefix it is mounted at, if any)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class BearerAuth:
    """ASGI middleware: answer 401 unless the request carries the token.

    `public(path)` names the paths that need none (the dashboard's page and files, which
    hold no data: the page itself sends the token with each API call).
    """

    def __init__(self, app: ASGIApp, token: str | None, public: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is not None and scope["type"] == "http" and not self.public(_app_path(scope)):
            presented = _presented(scope)
            if presented is None or not hmac.compare_digest(presented, self.token):
                reason = "missing" if presented is None else "wrong"
                error = ApiError("unauthorized", f"{reason} API token: send the header Authorization: Bearer <token>")
                response = failure(error, headers={"WWW-Authenticate": 'Bearer realm="stepstone"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

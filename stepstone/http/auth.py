"""Access control: one API token, sent as `Authorization: Bearer <token>`.

With $STEPSTONE_API_TOKEN set, every API request needs it (401 otherwise); the comparison
takes constant time, and no message or log line ever holds a token. Without one the
API is open to this machine only: `stepstone serve` then listens on a loopback address,
and requests are refused (403) that a web page elsewhere could make a browser send:
- one from another site (`Sec-Fetch-Site` cross-site or same-site, or an `Origin` other
  than the host asked): a page can post a form or a "simple" fetch to localhost without
  asking (cross-site request forgery);
- one that names a host other than a loopback one (`Host`): a page whose own name was
  made to resolve to 127.0.0.1 (DNS rebinding) reads and writes as if same-origin.
Clients other than browsers (curl, httpx, the CLI) send neither header but `Host`.
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


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == wanted:
            return value
    return None


def _presented(scope: Scope) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.partition(b" ")
    return credentials.strip() if scheme.lower() == b"bearer" else None


def _hostname(authority: str) -> str:
    """The host of `host[:port]` (an IPv6 address in brackets kept whole)."""
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def _not_from_here(scope: Scope) -> str | None:
    """Why a request without a token is refused (see the module's doc), or None."""
    host = (_header(scope, b"host") or b"").decode("latin-1").strip()
    if host and not is_loopback(_hostname(host)):
        return f"this server answers without a token only for a loopback host, not {host!r}; set {TOKEN_VARIABLE}"
    site = (_header(scope, b"sec-fetch-site") or b"").decode("latin-1").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"a request from another site ({site}) is refused without a token; set {TOKEN_VARIABLE}"
    origin = _header(scope, b"origin")
    if origin is not None:
        authority = origin.decode("latin-1").strip().partition("://")[2]
        if authority != host:
            return f"a request from another origin is refused without a token; set {TOKEN_VARIABLE}"
    return None


def _app_path(scope: Scope) -> str:
    """The request's path within this app (without the prefix it is mounted at, if any)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class BearerAuth:
    """ASGI middleware: answer 401 unless the request carries the token; without a token,
    answer 403 to what a browser may have been made to send (see the module's doc).

    `public(path)` names the paths that need no token (the dashboard's page and files,
    which hold no data: the page itself sends the token with each API call).
    """

    def __init__(self, app: ASGIApp, token: str | None, public: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.token
        if scope["type"] == "http" and token is None:
            refused = _not_from_here(scope)
            if refused is not None:
                await failure(ApiError("forbidden", refused))(scope, receive, send)
                return
        elif scope["type"] == "http" and token is not None and not self.public(_app_path(scope)):
            presented = _presented(scope)
            if presented is None or not hmac.compare_digest(presented, token):
                reason = "missing" if presented is None else "wrong"
                error = ApiError("unauthorized", f"{reason} API token: send the header Authorization: Bearer <token>")
                response = failure(error, headers={"WWW-Authenticate": 'Bearer realm="stepstone"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

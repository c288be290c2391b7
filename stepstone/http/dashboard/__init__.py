"""The dashboard: a browser page over the HTTP API, served from files shipped in this package.

`/` is the page and `/dashboard/<file>` its scripts, styles and icon: hand-written ES
modules and CSS, no build step and nothing fetched from elsewhere, so it works offline.
The files hold no data, so they are served without the API token; the page sends the
token with each API call it makes. A strict Content-Security-Policy lets the page load
only these files and talk only to this server.

    file          concept
    index.html    the one page (a hash router swaps its main view)
    app.js        start-up, the router, the token form
    api.js        API calls with the token, and live streams read from fetch()
    format.js     dates, relative times, durations, status badges, folded JSON
    overview.js   every workflow with counts and recent activity
    instances.js  one workflow's instances: filter, search, pages, trigger
    instance.js   one instance: params, output or error, timeline, actions
    style.css     the look, for a laptop and a phone
"""

from __future__ import annotations

import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepstone.http.responses import ApiError, failure

PREFIX = "/dashboard/"
"""Where the page's files are served; no API path starts with it."""

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FILE_NAME = re.compile(r"^[a-z][a-z0-9-]*\.(js|css|svg)$")
"""Names a request may ask for: no slash, no dot-dot, only the kinds shipped."""

_HEADERS = {
    # The page loads only its own files and talks only to this server; nothing may frame it.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each load, so a stepstone upgrade is picked up without a stale cache.
    "Cache-Control": "no-cache",
}


def is_public(path: str) -> bool:
    """True for the page and its files: they carry no data, so they need no token."""
    return path == "/" or path.startswith(PREFIX)


def _file(name: str) -> Response:
    suffix = name[name.rindex(".") :]
    data = resources.files(__name__).joinpath(name).read_bytes()
    return Response(data, media_type=_MEDIA_TYPES[suffix], headers=_HEADERS)


async def index(request: Request) -> Response:
    """The dashboard's one HTML page."""
    return _file("index.html")


async def asset(request: Request) -> Response:
    """A script, style sheet or icon of the page; 404 for anything else."""
    name = request.path_params["name"]
    if not _FILE_NAME.match(name) or not resources.files(__name__).joinpath(name).is_file():
        return failure(ApiError("not_found", f"no such dashboard file: {request.url.path}"))
    return _file(name)


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route(PREFIX + "{name}", asset, methods=["GET"]),
]
"""The dashboard's routes, served beside the API's (they are not part of its OpenAPI document)."""

"""Reading what a request sends: a JSON body under a size cap, and checked query parameters.

Everything wrong here is the client's doing: it raises ApiError("invalid_input") (400),
or ApiError("limit_exceeded") (413) for a body over the cap. Values the engine checks
itself (ids, params, statuses) are left to it, so each rule lives in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from stepstone.http.responses import ApiError

_MISSING = object()


async def read_json(request: Request, max_bytes: int, *, empty: Any = _MISSING) -> Any:
    """The request body parsed as JSON (whatever its Content-Type); `empty` stands for an empty body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        if empty is _MISSING:
            raise ApiError("invalid_input", "the request body is empty; expected JSON")
        return empty
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError("invalid_input", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError("invalid_input", f"the request body is not JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # a number Python will not read (over 4,300 digits)
        raise ApiError("invalid_input", f"the request body holds a value too large to read: {exc}") from None
    except RecursionError:
        raise ApiError("invalid_input", "the request body is nested too deeply to read") from None


def _too_large(size: int, max_bytes: int) -> ApiError:
    return ApiError(
        "limit_exceeded", f"the request body is {size} bytes or more; this server takes at most {max_bytes}"
    )


def json_object(value: Any, *, what: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """`value` if it is a JSON object whose keys are all `allowed` (a typo is an error, not ignored)."""
    if not isinstance(value, dict):
        raise ApiError("invalid_input", f"invalid {what}: expected a JSON object, got {type_name(value)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ApiError("invalid_input", f"invalid {what}: unknown field {unknown[0]!r}; expected {', '.join(allowed)}")
    return value


def type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    # (ASCII digits only: str.isdigit takes '²' too, which int() refuses; and few enough for int())
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or not low <= int(text) <= high:
        raise ApiError("invalid_input", f"invalid {name} {text!r}: expected an integer from {low} to {high}")
    return int(text)


def query_time(request: Request, name: str) -> datetime | None:
    """An ISO 8601 time from the query; without an offset it is UTC (as Cloudflare's)."""
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            "invalid_input", f"invalid {name} {text!r}: expected an ISO 8601 time, e.g. 2025-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment

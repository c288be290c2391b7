"""The JSON envelope every endpoint answers with, and how errors become stable codes.

Success and failure share one shape, after Cloudflare's API:

    {"success": true,  "result": ..., "errors": [], "messages": []}
    {"success": false, "result": null, "errors": [{"code": "instance_not_found", "message": "..."}],
     "messages": []}

Listing endpoints add `"result_info": {"count": ..., "per_page": ..., "cursor": ...}`.
Cloudflare's error codes are numbers; ours are strings that name the problem, and
they are stable: clients may branch on them (`ERRORS` lists each with its status).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.responses import Response

from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    WorkflowNotFoundError,
)

logger = logging.getLogger("stepstone.http")

ERRORS: dict[str, int] = {
    "invalid_input": 400,  # malformed JSON, an unknown field, a bad id, status, cursor, date or step
    "unauthorized": 401,  # $STEPSTONE_API_TOKEN is set and the request lacks `Authorization: Bearer <it>`
    "forbidden": 403,  # no token is set, and the request comes from another site or names a host not loopback
    "not_found": 404,  # no such endpoint
    "workflow_not_found": 404,
    "instance_not_found": 404,
    "method_not_allowed": 405,
    "instance_exists": 409,  # that id exists in that workflow (a batch then creates nothing)
    "invalid_state": 409,  # the operation does not apply to the instance's current status
    "limit_exceeded": 413,  # a value over the engine's Limits; a body or batch over the API's caps
    "internal_error": 500,  # anything else; the details go to the server's log, never to the client
}


class ApiError(Exception):
    """An error answered as JSON: `code` is one of `ERRORS`, which gives the HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        if code not in ERRORS:
            raise ValueError(f"unknown API error code {code!r}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return ERRORS[self.code]


# Most specific first: LimitExceededError is an InvalidInputError.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (LimitExceededError, "limit_exceeded"),
    (InvalidInputError, "invalid_input"),
    (WorkflowNotFoundError, "workflow_not_found"),
    (InstanceNotFoundError, "instance_not_found"),
    (InstanceExistsError, "instance_exists"),
    (InvalidStateError, "invalid_state"),
)


def api_error(exc: Exception) -> ApiError:
    """The ApiError a failure is answered with; an unexpected one is logged, its details kept from the client."""
    if isinstance(exc, ApiError):
        return exc
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return ApiError(code, str(exc))
    logger.error("unexpected error answering a request", exc_info=exc)
    return ApiError("internal_error", "internal error; the server's log has the details")


def _encode_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(value: Any) -> str:
    """JSON text of a result; datetimes become ISO 8601 (UTC, with offset)."""
    return json.dumps(value, default=_encode_default, ensure_ascii=False, separators=(",", ":"))


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return to_json(content).encode()


def ok(result: Any, *, status: int = 200, result_info: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": True, "result": result, "errors": [], "messages": []}
    if result_info is not None:
        body["result_info"] = result_info
    return JSONResponse(body, status_code=status)


def failure(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {
        "success": False,
        "result": None,
        "errors": [{"code": error.code, "message": error.message}],
        "messages": [],
    }
    return JSONResponse(body, status_code=error.status, headers=headers)

"""Reading the API's envelope, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

DEADLINE = 20.0


def result(response: httpx.Response, status: int = 200) -> Any:
    """The `result` of a successful answer, after checking its status and envelope."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == [], body
    return body["result"]


def error_code(response: httpx.Response, status: int) -> str:
    """The error code of a failed answer, after checking its status and envelope (and that no traceback leaked)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in response.text
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == [], body
    [error] = body["errors"]
    assert set(error) == {"code", "message"} and error["message"], error
    code: str = error["code"]
    return code


async def wait_for_status(client: httpx.AsyncClient, path: str, status: str) -> dict[str, Any]:
    """GET `path` until the instance has `status` (or the deadline passes); the instance."""
    deadline = time.monotonic() + DEADLINE
    while True:
        instance: dict[str, Any] = result(await client.get(path))
        if instance["status"] == status:
            return instance
        assert time.monotonic() < deadline, f"{path} is {instance['status']}, not {status}: {instance}"
        await asyncio.sleep(0.02)

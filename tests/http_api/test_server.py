"""`stepstone serve` and `stepstone dev` as real processes, listening on a free port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import DEADLINE

APP = str(Path(__file__).with_name("app.py"))
ROOT = Path(__file__).parents[2]
STEPSTONE = [sys.executable, "-m", "stepstone"]
TOKEN = "e2e-token-4f9a"
INSTANCES = "/workflows/greeter/instances"


def environment(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STEPSTONE_API_TOKEN"}
    if token is not None:
        env["STEPSTONE_API_TOKEN"] = token
    return env


@contextmanager
def running(*args: str, token: str | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `stepstone ARGS --port 0`; yield the process and the base URL from its ready line."""
    process = subprocess.Popen(
        [*STEPSTONE, *args, "--port", "0"], stderr=subprocess.PIPE, text=True, env=environment(token)
    )
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        assert "ready" in line, line + process.stderr.read()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match is not None, line
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM the server; it must exit 0 promptly. What it wrote to stderr after its ready line."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    assert process.stderr is not None
    return process.stderr.read()


def poll_status(client: httpx.Client, path: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        instance: dict[str, Any] = client.get(path).json()["result"]
        if instance["status"] == status:
            return instance
        assert time.monotonic() < deadline, instance
        time.sleep(0.05)


def test_serve_answers_over_http_with_a_token_and_stops_on_sigterm_with_a_stream_open(store_url: str) -> None:
    with running("serve", APP, "--db", store_url, token=TOKEN) as (process, url):
        assert error_free(httpx.get(f"{url}/workflows"), 401)
        assert error_free(httpx.get(f"{url}/workflows", headers={"Authorization": "Bearer nope"}), 401)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=DEADLINE) as client:
            assert "/workflows" in client.get("/openapi.json").json()["paths"]
            created = client.post(INSTANCES, json={"instance_id": "e2e-1", "params": {"who": "ana"}})
            assert created.status_code == 201, created.text
            assert client.get(f"{INSTANCES}/e2e-1").json()["result"]["status"] == "queued"  # serve runs no worker
            with client.stream("GET", f"{INSTANCES}/e2e-1/stream") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.iter_lines()
                assert next(lines) == "event: instance"
                assert '"id":"e2e-1"' in next(lines)
                # The stream stays open: stopping must not wait for its client.
                started = time.monotonic()
                after = stop(process)
                assert time.monotonic() - started < 4
    assert "stopping" in after and "Traceback" not in after
    assert TOKEN not in after


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_app_in_uvicorn_of_ones_own_stops_on_a_signal_with_a_stream_open(store_url: str, sig: int) -> None:
    # uvicorn waits for open connections to close before it ends the app's lifespan: the
    # app's streams must end on the signal itself, or an open dashboard holds the server up.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "tests.http_api.embedded:api", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env={**environment(None), "STEPSTONE_DATABASE_URL": store_url},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        while "Uvicorn running" not in (line := process.stderr.readline()):
            assert line, process.stderr.read()
        with httpx.stream("GET", f"http://127.0.0.1:{port}/workflows/stream", timeout=DEADLINE) as stream:
            lines = stream.iter_lines()
            assert (next(lines), next(lines)[:6]) == ("event: workflows", "data: ")  # (the response is under way)
            started = time.monotonic()
            process.send_signal(sig)
            process.wait(timeout=DEADLINE)
            assert time.monotonic() - started < 4
        assert "Application shutdown complete" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def error_free(response: httpx.Response, status: int) -> bool:
    return response.status_code == status and "Traceback" not in response.text


def test_dev_runs_a_worker_beside_the_api(store_url: str) -> None:
    with running("dev", APP, "--db", store_url) as (process, url), httpx.Client(base_url=url) as client:
        created = client.post(INSTANCES, json={"instance_id": "d1", "params": {"who": "bo"}})
        assert created.status_code == 201, created.text
        poll_status(client, f"{INSTANCES}/d1", "waiting")
        assert client.post(f"{INSTANCES}/d1/events/reply", json="hi").status_code == 200
        done = poll_status(client, f"{INSTANCES}/d1", "complete")
        assert done["output"] == {"greeting": "hello bo", "reply": "hi"}
        stop(process)


def test_serve_refuses_a_non_loopback_host_without_a_token(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/never.db"
    refused = subprocess.run(
        [*STEPSTONE, "serve", APP, "--db", db, "--host", "0.0.0.0"], capture_output=True, text=True,
        env=environment(None), timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused
    assert refused.stderr.startswith("error: refusing to listen on 0.0.0.0 without an API token")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert not (tmp_path / "never.db").exists()


def test_a_taken_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        failed = subprocess.run(
            [*STEPSTONE, "serve", APP, "--db", f"sqlite:///{tmp_path}/x.db", "--port", port],
            capture_output=True, text=True, env=environment(None), timeout=60,
        )  # fmt: skip
    assert failed.returncode == 1, failed
    assert failed.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert failed.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_help_shows_the_serving_options(command: str) -> None:
    helped = subprocess.run([*STEPSTONE, command, "--help"], capture_output=True, text=True, timeout=60)
    assert "--host" in helped.stdout and "--port" in helped.stdout and "--db" in helped.stdout


def test_import_stepstone_and_the_other_commands_load_no_web_framework() -> None:
    code = (
        "import sys, stepstone, stepstone.cli, stepstone.cli.instances; "
        "loaded = {m.split('.')[0] for m in sys.modules} & {'starlette', 'uvicorn', 'httpx'}; "
        "assert not loaded, loaded"
    )
    checked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr

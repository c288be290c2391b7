"""What the dashboard tests stand on: a real `stepstone` process serving a database, the
database read and written through an Engine, and a Chromium to look with.

Engine calls run on a thread of their own (`on_store`), since Playwright's sync API
keeps an event loop on the test's thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Page

from stepstone import Engine, Workflow

from . import app

APP = str(Path(__file__).with_name("app.py"))
STEPSTONE = [sys.executable, "-m", "stepstone"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DEADLINE = 20.0
SCREENSHOTS = "STEPSTONE_SCREENSHOTS"
"""A folder: the tests then save their screenshots there (`STEPSTONE_SCREENSHOTS=docs`)."""

T = TypeVar("T")


# -- the browser ------------------------------------------------------------------------------


_install_problem: list[str] = []
"""Why installing chromium failed, once it was tried."""


def install_chromium() -> None:
    """Install Debian's chromium with apt when it is missing (once; a failure is kept for `chromium`).

    Called while the tests are collected, so a slow download does not count against a
    test's timeout.
    """
    if not os.path.exists(CHROMIUM) and not _install_problem:
        problem = _apt_install("chromium")
        if problem is not None:
            _install_problem.append(problem)


def chromium() -> str:
    """The browser's path; without it the test fails under CI=true, and is skipped elsewhere."""
    install_chromium()
    if not os.path.exists(CHROMIUM):
        message = f"the dashboard tests need {CHROMIUM} and it could not be installed: {_install_problem[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CHROMIUM


def _apt_install(package: str) -> str | None:
    """Install a Debian package (apt-get update first if a plain install fails); None, or what went wrong."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing needs root (run `apt-get install -y chromium` once)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    problem = ""
    for commands in ([install], [["apt-get", "update", "-q"], install]):
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                lines = (done.stdout + done.stderr).strip().splitlines()
                problem = f"`{' '.join(command)}` failed: {lines[-1] if lines else 'no output'}"
                break
        else:
            if os.path.exists(CHROMIUM):
                return None
            problem = f"`{' '.join(install)}` succeeded, yet there is no {CHROMIUM}"
    return problem


def screenshot(page: Page, name: str) -> None:
    """Save the page as `dashboard-<name>.png` in $STEPSTONE_SCREENSHOTS, when that is set."""
    folder = os.environ.get(SCREENSHOTS)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)


# -- the database -----------------------------------------------------------------------------


def on_store(url: str, action: Callable[[Engine], Awaitable[T]], *, workflows: list[type[Workflow]] | None = None) -> T:
    """Run `action(engine)` on a client Engine of `url` (a worker too, when `workflows` are given)."""

    async def main() -> T:
        chosen = workflows if workflows is not None else app.ALL
        async with Engine(url, workflows=chosen, worker=workflows is not None) as engine:
            return await action(engine)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def status_of(engine: Engine, workflow: str, instance_id: str) -> str:
    return (await (await engine.workflow(workflow).get(instance_id)).status()).status


async def wait_for_status(engine: Engine, workflow: str, instance_id: str, status: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while (now := await status_of(engine, workflow, instance_id)) != status:
        assert time.monotonic() < deadline, f"{workflow}/{instance_id} is {now}, not {status}"
        await asyncio.sleep(0.05)


# -- processes --------------------------------------------------------------------------------


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@contextmanager
def stepstone(
    command: str, url: str, log: Path, *, token: str | None = None, only: str | None = None,
    lease: float | None = None, port: int = 0,
) -> Iterator[Process]:  # fmt: skip
    """Run `stepstone COMMAND app.py --db URL` until the block ends, once it says it is ready.

    `only`: the workflows it runs (comma-separated); `lease`: its lease in seconds;
    `port`: where `serve` or `dev` listens (0: any free port).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("STEPSTONE_API_TOKEN", "STEPSTONE_TEST_WORKFLOWS")}
    if token is not None:
        env["STEPSTONE_API_TOKEN"] = token
    if only is not None:
        env["STEPSTONE_TEST_WORKFLOWS"] = only
    if lease is not None:
        env["STEPSTONE_TEST_LEASE"] = str(lease)
    args = [*STEPSTONE, command, APP, "--db", url]
    if command in ("serve", "dev"):
        args += ["--port", str(port)]
    with log.open("wb") as sink:
        popen = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env)
    process = Process(popen, log)
    try:
        deadline = time.monotonic() + DEADLINE
        while "ready" not in process.text():
            assert popen.poll() is None, f"stepstone {command} exited: {process.text()}"
            assert time.monotonic() < deadline, f"stepstone {command} is not ready: {process.text()}"
            time.sleep(0.05)
        yield process
    finally:
        process.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def address(process: Process) -> str:
    """The base URL a serving process announced."""
    match = re.search(r"(http://127\.0\.0\.1:\d+)", process.text())
    assert match is not None, process.text()
    return match.group(1)

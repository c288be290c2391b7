"""Fixtures of the dashboard tests: one Chromium for the session, a fresh page per test,
and a served database holding instances in every status.

The states, by workflow:
    greeter   g-waiting, g-live (waiting for a `reply`), g-paused, g-complete, g-terminated
    flaky     f-errored, f-markup (errored, an HTML-looking message), f-retrying (waiting to retry)
    checkout  c-approval (three attempts at a charge, a sleep, now waiting for an event), c-done
    many      m-1 (complete, 205 steps)
    slow      s-running, s-pausing (waitingForPause), run by the serving `stepstone dev`
    stalled   k-unknown (its worker was killed), k-queued (nobody runs `stalled`)
    listed    p-00 to p-29: p-00 to p-04 paused, the others queued (nobody runs `listed`)
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from stepstone import Engine
from stepstone.instances import StepDetail

from . import app
from .site import (
    CHROMIUM_ARGS,
    DEADLINE,
    address,
    chromium,
    install_chromium,
    on_store,
    status_of,
    stepstone,
    wait_for_status,
)

expect.set_options(timeout=10_000)

MARKUP = '<img src=x onerror="document.body.dataset.owned=1"><b>bold</b>'


@dataclass(frozen=True)
class Site:
    url: str
    """The dashboard's address."""
    db: str
    """The store's URL, for checking what the page did."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Install chromium before the tests run when any of this package's tests will."""
    here = Path(__file__).parent
    if any(here in item.path.parents for item in items):
        install_chromium()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Chromium, for this package's tests only: Playwright's sync API holds an event loop on the
    test thread while it runs, which async tests elsewhere could not share."""
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own storage) at a laptop's size.

    It fails the test on an uncaught script error or an error on the console (a blocked
    resource, say), but for the failed requests the tests cause on purpose (a 401, a 404).
    """
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-GB", timezone_id="Europe/Paris")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.extend(_console_error(message)))
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()
    assert not errors, errors


def _console_error(message: ConsoleMessage) -> list[str]:
    if message.type != "error" or message.text.startswith("Failed to load resource"):
        return []
    return [message.text]


async def _build(engine: Engine) -> None:
    greeter, flaky, checkout = (engine.workflow(name) for name in ("greeter", "flaky", "checkout"))
    for name in ("g-waiting", "g-live", "g-paused", "g-complete", "g-terminated"):
        await greeter.create(id=name, params={"who": name})
    await flaky.create(id="f-errored")
    await flaky.create(id="f-markup", params={"message": MARKUP, "html": MARKUP})
    await flaky.create(id="f-retrying", params={"delay": "1 hour"})
    order = {"sku": "tea-earl-grey", "qty": 2, "email": "ana@example.com"}
    await checkout.create(id="c-done", params=order)
    await checkout.create(id="c-approval", params=order)
    await engine.workflow("many").create(id="m-1")
    for name in ("g-waiting", "g-live", "g-paused", "g-complete", "g-terminated"):
        await wait_for_status(engine, "greeter", name, "waiting")
    await (await greeter.get("g-complete")).send_event("reply", {"text": "hi!"})
    await (await greeter.get("g-paused")).pause()
    await (await greeter.get("g-terminated")).terminate()
    await (await checkout.get("c-done")).send_event("approval", {"by": "ana"})
    await (await checkout.get("c-approval")).send_event("nothing", None)  # not the awaited type
    for workflow, name, status in [
        ("greeter", "g-complete", "complete"),
        ("flaky", "f-errored", "errored"),
        ("flaky", "f-markup", "errored"),
        ("checkout", "c-done", "complete"),
        ("many", "m-1", "complete"),
    ]:
        await wait_for_status(engine, workflow, name, status)
    await _wait_for_steps(engine, "flaky", "f-retrying", lambda steps: steps[-1].attempts != [])
    await _wait_for_steps(engine, "checkout", "c-approval", lambda steps: steps[-1].name == "manager approval")


async def _build_listed(engine: Engine) -> None:
    listed = engine.workflow("listed")
    await listed.create_batch([{"id": f"p-{n:02}"} for n in range(30)])
    for n in range(5):
        await (await listed.get(f"p-{n:02}")).pause()


async def _wait_for_steps(
    engine: Engine, workflow: str, instance_id: str, done: Callable[[list[StepDetail]], bool]
) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        steps = (await (await engine.workflow(workflow).get(instance_id)).describe()).steps
        if steps and done(steps):
            return
        assert time.monotonic() < deadline, steps
        await asyncio.sleep(0.05)


async def _create(engine: Engine, workflow: str, *ids: str) -> None:
    for instance_id in ids:
        await engine.workflow(workflow).create(id=instance_id)


@pytest.fixture(scope="package")
def states(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`stepstone dev` (running only `slow`) on a SQLite database with instances in every status."""
    folder = tmp_path_factory.mktemp("dashboard")
    db = f"sqlite:///{folder}/states.db"
    on_store(db, _build, workflows=[app.Greeter, app.Flaky, app.Checkout, app.Many])
    on_store(db, _build_listed)
    with stepstone("worker", db, folder / "stalled.log", only="stalled", lease=1) as worker:
        on_store(db, lambda engine: _create(engine, "stalled", "k-unknown"))
        on_store(db, lambda engine: wait_for_status(engine, "stalled", "k-unknown", "running"))
        worker.stop(signal.SIGKILL)
    on_store(db, lambda engine: _create(engine, "stalled", "k-queued"))
    with stepstone("dev", db, folder / "dev.log", only="slow") as server:
        on_store(db, _start_and_pause_slow)
        on_store(db, lambda engine: wait_for_status(engine, "stalled", "k-unknown", "unknown"))
        yield Site(address(server), db)


async def _start_and_pause_slow(engine: Engine) -> None:
    await _create(engine, "slow", "s-running", "s-pausing")
    for name in ("s-running", "s-pausing"):
        await wait_for_status(engine, "slow", name, "running")
    await (await engine.workflow("slow").get("s-pausing")).pause()
    assert await status_of(engine, "slow", "s-pausing") == "waitingForPause"

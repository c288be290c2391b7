"""The page's live streams outlast the server (when it stops, the page says so and reconnects once it is
back), and a hidden tab holds no stream."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from stepstone import Engine

from .conftest import Site
from .site import address, free_port, on_store, stepstone


async def _create(engine: Engine) -> None:
    await engine.workflow("greeter").create(id="r-1", params={"who": "ana"})


async def _pause(engine: Engine) -> None:
    await (await engine.workflow("greeter").get("r-1")).pause()


def test_the_page_reconnects_after_the_server_restarts_and_shows_what_changed(page: Page, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/live.db"
    on_store(db, _create)
    port = free_port()
    live = page.locator("#live")
    badge = page.locator(".status-slot .badge")
    with stepstone("serve", db, tmp_path / "first.log", port=port) as server:
        page.goto(f"{address(server)}/#/workflows/greeter/instances/r-1")
        expect(badge).to_have_text("queued")
        expect(live).to_have_text("live")
    expect(live).to_have_text("reconnecting…")
    on_store(db, _pause)
    with stepstone("serve", db, tmp_path / "second.log", port=port):
        expect(badge).to_have_text("paused", timeout=20_000)
        expect(live).to_have_text("live")


def set_hidden(page: Page, hidden: bool) -> None:
    """Play the browser hiding or showing the tab."""
    page.evaluate(
        "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }",
        hidden,
    )


def test_a_hidden_tab_lets_go_of_its_stream_and_catches_up_when_shown(page: Page, states: Site) -> None:
    on_store(states.db, _create_h1)
    page.goto(f"{states.url}/#/workflows/stalled/instances/h-1")
    live = page.locator("#live")
    expect(live).to_have_text("live")
    set_hidden(page, True)
    expect(live).to_have_attribute("data-state", "idle")
    on_store(states.db, _pause_h1)
    set_hidden(page, False)
    expect(live).to_have_text("live")
    expect(page.locator(".status-slot .badge")).to_have_text("paused")


async def _create_h1(engine: Engine) -> None:
    await engine.workflow("stalled").create(id="h-1")


async def _pause_h1(engine: Engine) -> None:
    await (await engine.workflow("stalled").get("h-1")).pause()

"""With $STEPSTONE_API_TOKEN set: the page asks for the token, keeps it for the tab, and sends it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect

from stepstone import Engine

from .site import address, on_store, stepstone

TOKEN = "dash-token-7Qx2"


async def _one_instance(engine: Engine) -> None:
    await engine.workflow("greeter").create(id="guarded", params={"who": "ana"})


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    """`stepstone serve` with a token, on a database with one instance; its URL."""
    db = f"sqlite:///{tmp_path}/guarded.db"
    on_store(db, _one_instance)
    with stepstone("serve", db, tmp_path / "serve.log", token=TOKEN) as server:
        yield address(server)


def test_the_page_asks_for_the_token_refuses_a_wrong_one_and_sends_the_right_one(page: Page, guarded: str) -> None:
    sent: list[str | None] = []

    def record(request: Request) -> None:
        if "/workflows" in request.url:
            sent.append(request.headers.get("authorization"))

    page.on("request", record)
    page.goto(guarded)
    dialog = page.get_by_role("dialog", name="API token")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("missing API token")
    dialog.get_by_label("STEPSTONE_API_TOKEN").fill("wrong")
    dialog.get_by_role("button", name="Use token").click()
    expect(dialog).to_contain_text("The server refused that token.")
    dialog.get_by_label("STEPSTONE_API_TOKEN").fill(TOKEN)
    dialog.get_by_role("button", name="Use token").click()
    expect(dialog).to_be_hidden()
    expect(page.locator('section.card[data-workflow="greeter"] .chip[data-status="queued"] .count')).to_have_text("1")
    page.locator('a:has-text("guarded")').click()
    expect(page.locator(".status-slot .badge")).to_have_text("queued")
    assert sent[0] is None and f"Bearer {TOKEN}" in sent and "Bearer wrong" in sent
    page.reload()  # kept for the tab: no question this time
    expect(page.locator('[data-section="params"]')).to_contain_text('"who": "ana"')
    expect(dialog).to_be_hidden()


def test_a_token_in_the_url_fragment_is_taken_and_dropped_from_the_address(page: Page, guarded: str) -> None:
    page.goto(f"{guarded}/#token={TOKEN}&/workflows/greeter")
    expect(page.locator("table.instances tbody tr").first).to_have_attribute("data-id", "guarded")
    expect(page).to_have_url(re.compile(r"/#/workflows/greeter$"))
    page.get_by_role("button", name="Forget token").click()
    expect(page.get_by_role("dialog", name="API token")).to_be_visible()

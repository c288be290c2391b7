"""The dashboard on PostgreSQL: the same pages and actions over the other store."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from stepstone import Engine

from . import app
from .site import address, on_store, status_of, stepstone, wait_for_status


async def _waiting_greeter(engine: Engine) -> None:
    await engine.workflow("greeter").create(id="pg-1", params={"who": "pg"})
    await wait_for_status(engine, "greeter", "pg-1", "waiting")


def test_on_postgres_the_page_shows_an_instance_and_pauses_it(page: Page, pg_url: str, tmp_path: Path) -> None:
    on_store(pg_url, _waiting_greeter, workflows=[app.Greeter])
    with stepstone("serve", pg_url, tmp_path / "serve.log") as server:
        page.goto(address(server))
        card = page.locator('section.card[data-workflow="greeter"]')
        expect(card.locator('.chip[data-status="waiting"] .count')).to_have_text("1")
        card.get_by_role("link", name="pg-1").click()
        expect(page.locator('.step[data-step="greet"] .step-status')).to_have_text("complete")
        expect(page.locator('.step[data-step="reply"] .step-status')).to_have_text("waiting")
        page.get_by_role("button", name="Pause").click()
        expect(page.get_by_role("status")).to_contain_text("Paused pg-1: it is now paused.")
        assert on_store(pg_url, lambda engine: status_of(engine, "greeter", "pg-1")) == "paused"

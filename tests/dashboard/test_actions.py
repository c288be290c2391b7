"""Steering from the page: each action, events, triggering, clear messages for bad input, live updates."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from stepstone import Engine
from stepstone.serialization import JSON

from . import app
from .conftest import Site
from .site import on_store, status_of, wait_for_status


def db_status(site: Site, workflow: str, instance_id: str) -> str:
    return on_store(site.db, lambda engine: status_of(engine, workflow, instance_id))


async def _create(engine: Engine, workflow: str, instance_id: str, params: JSON = None) -> None:
    await engine.workflow(workflow).create(id=instance_id, params=params)


def test_pause_resume_terminate_and_restart_confirm_what_they_did(page: Page, states: Site) -> None:
    on_store(states.db, lambda engine: _create(engine, "stalled", "act-1"))
    page.goto(f"{states.url}/#/workflows/stalled/instances/act-1")
    badge = page.locator(".status-slot .badge")
    expect(badge).to_have_text("queued")
    steps = [("Pause", "paused"), ("Resume", "queued"), ("Terminate", "terminated"), ("Restart", "queued")]
    for button, status in steps:
        page.get_by_role("button", name=button, exact=True).click()
        expect(page.get_by_role("status")).to_have_text(re.compile(rf"act-1: it is now {status}\."))
        expect(badge).to_have_text(status)
        assert db_status(states, "stalled", "act-1") == status
    page.get_by_role("button", name="Terminate").click()
    expect(badge).to_have_text("terminated")
    expect(page.get_by_role("button", name="Pause")).to_be_disabled()
    expect(page.get_by_role("button", name="Resume")).to_be_disabled()
    expect(page.get_by_role("button", name="Terminate")).to_be_disabled()
    expect(page.get_by_role("button", name="Restart")).to_be_enabled()


def test_restarting_from_a_step_keeps_what_was_recorded_before_it(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/checkout/instances/c-done")
    expect(page.locator(".timeline > li")).to_have_count(5)
    page.locator('.step[data-step="manager approval"]').get_by_role("button", name="Restart from here").click()
    confirmed = 'Restarted c-done from step "manager approval": it is now queued.'
    expect(page.get_by_role("status")).to_contain_text(confirmed)
    expect(page.locator(".timeline > li")).to_have_count(3)  # live: the history from that step on is gone

    async def steps(engine: Engine) -> list[str]:
        return [step.name for step in (await (await engine.workflow("checkout").get("c-done")).describe()).steps]

    assert on_store(states.db, steps) == ["reserve stock", "charge card", "cooling-off"]
    assert db_status(states, "checkout", "c-done") == "queued"


def test_a_running_instance_paused_from_the_page_waits_for_its_step(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/slow/instances/s-running")
    expect(page.locator(".status-slot .badge")).to_have_text("running")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"it is now waitingForPause\."))
    assert db_status(states, "slow", "s-running") == "waitingForPause"
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".status-slot .badge")).to_have_text("running")
    assert db_status(states, "slow", "s-running") == "running"


def send_event(page: Page, event_type: str, payload: str) -> None:
    page.get_by_text("Send an event").click()
    page.get_by_label("Event type").fill(event_type)
    page.get_by_label("Payload").fill(payload)
    page.get_by_role("button", name="Send event").click()


def test_an_event_sent_from_the_page_is_shown_live_as_a_worker_takes_it(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/greeter/instances/g-live")
    expect(page.locator('.step[data-step="reply"] .step-status')).to_have_text("waiting")
    page.evaluate("window.notReloaded = true")
    send_event(page, "reply", '{"text": "hello",}')
    expect(page.get_by_role("alert")).to_contain_text("The payload is not valid JSON")
    page.get_by_label("Payload").fill('{"text": "hello"}')
    page.get_by_role("button", name="Send event").click()
    expect(page.get_by_role("status")).to_contain_text('Sent event "reply" to g-live.')
    expect(page.locator(".status-slot .badge")).to_have_text("waiting")  # nobody runs greeter yet

    async def run_it(engine: Engine) -> JSON:
        await wait_for_status(engine, "greeter", "g-live", "complete")
        return (await (await engine.workflow("greeter").get("g-live")).status()).output

    output = on_store(states.db, run_it, workflows=[app.Greeter])
    assert output == {"greeting": "hello g-live", "reply": {"text": "hello"}}
    expect(page.locator(".status-slot .badge")).to_have_text("complete")
    expect(page.locator('.step[data-step="reply"] .step-status')).to_have_text("complete")
    expect(page.locator('[data-section="output"]')).to_contain_text('"text": "hello"')
    expect(page.get_by_role("button", name="Pause")).to_be_disabled()
    assert page.evaluate("window.notReloaded") is True


def test_an_event_to_a_complete_instance_shows_why_it_is_refused(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/greeter/instances/g-complete")
    expect(page.locator(".status-slot .badge")).to_have_text("complete")
    send_event(page, "reply", "null")
    expect(page.get_by_role("alert")).to_have_text(
        re.compile(r"Could not send the event: cannot send an event to instance 'g-complete': it is complete")
    )


def test_triggering_an_instance_checks_its_json_and_confirms_with_a_link(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/stalled")
    expect(page.locator("table.instances tbody tr").first).to_be_visible()
    page.get_by_text("Trigger an instance").click()
    page.get_by_label("Instance id (optional)").fill("t-1")
    page.get_by_label("Params").fill("{who: 1}")
    page.get_by_role("button", name="Trigger").click()
    expect(page.get_by_role("alert")).to_contain_text("The params are not valid JSON")
    page.get_by_label("Params").fill('{"who": "tess"}')
    page.get_by_role("button", name="Trigger").click()
    expect(page.get_by_role("status")).to_contain_text("Created instance t-1 of stalled (queued).")
    expect(page.locator("table.instances tbody tr").first).to_have_attribute("data-id", "t-1")

    async def params(engine: Engine) -> JSON:
        return (await (await engine.workflow("stalled").get("t-1")).describe()).params

    assert on_store(states.db, params) == {"who": "tess"}
    page.get_by_label("Instance id (optional)").fill("t-1")
    page.get_by_role("button", name="Trigger").click()
    expect(page.get_by_role("alert")).to_contain_text("'t-1'")
    expect(page.get_by_role("alert")).to_contain_text("exists")
    page.get_by_label("Instance id (optional)").fill("bad id!")
    page.get_by_role("button", name="Trigger").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid instance id")
    page.get_by_label("Instance id (optional)").fill("")
    page.get_by_role("button", name="Trigger").click()  # an id is generated
    expect(page.get_by_role("status")).to_contain_text("Created instance ")
    page.get_by_role("link", name="Open it").click()
    expect(page.locator('[data-section="params"]')).to_contain_text('"who": "tess"')
    expect(page.locator("h1")).to_have_text(re.compile(r"^[0-9a-f-]{36}$"))


def test_the_lists_and_counts_update_live_when_instances_change_elsewhere(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/flaky")
    rows = page.locator("table.instances tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator('.filters .chip[data-status="errored"] .count')).to_have_text("2")
    expect(page.locator('.filters .chip[data-status="queued"]')).to_have_count(0)
    on_store(states.db, lambda engine: _create(engine, "flaky", "live-1", {"delay": "1 hour"}))
    expect(rows.first).to_have_attribute("data-id", "live-1")
    expect(page.locator('.filters .chip[data-status="queued"] .count')).to_have_text("1")

    async def pause(engine: Engine) -> None:
        await (await engine.workflow("flaky").get("live-1")).pause()

    on_store(states.db, pause)
    expect(rows.first.locator(".badge")).to_have_text("paused")
    page.get_by_role("link", name="Workflows").click()
    card = page.locator('section.card[data-workflow="flaky"]')
    expect(card.locator('.chip[data-status="paused"] .count')).to_have_text("1")
    on_store(states.db, lambda engine: _create(engine, "flaky", "live-2", {"delay": "1 hour"}))
    expect(card.locator('.chip[data-status="queued"] .count')).to_have_text("1")
    expect(card.locator(".recent li").first).to_contain_text("live-2")

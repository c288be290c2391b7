"""Looking around: the overview, a workflow's instances, an instance's timeline, on a laptop and a phone."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Browser, Page, expect

from stepstone import Engine

from . import app
from .conftest import MARKUP, Site
from .site import on_store, screenshot

STATUSES = ["queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown"]


async def _counts(engine: Engine) -> dict[str, dict[str, int]]:
    now = time.time()
    return {name: await engine.store.status_counts(name, now=now) for name in await engine.store.workflow_names()}


def test_the_overview_shows_each_workflow_with_counts_by_status_and_recent_activity(page: Page, states: Site) -> None:
    page.goto(states.url)
    expected = on_store(states.db, _counts)
    assert set(expected) == {"greeter", "flaky", "checkout", "many", "slow", "stalled", "listed"}
    for workflow, counts in expected.items():
        card = page.locator(f'section.card[data-workflow="{workflow}"]')
        for status in STATUSES:
            chip = card.locator(f'.chip[data-status="{status}"] .count')
            if counts.get(status, 0):
                expect(chip).to_have_text(str(counts[status]))
            else:
                expect(chip).to_have_count(0)
    # Every status is shown somewhere, `unknown` (a running instance whose lease lapsed) included.
    every = page.locator(".cards .chip").evaluate_all("chips => chips.map(c => c.dataset.status)")
    assert set(every) == set(STATUSES)
    stalled = page.locator('section.card[data-workflow="stalled"] .recent')
    expect(stalled.locator('li:has-text("k-unknown") .badge')).to_have_text("unknown")
    recent = page.locator('section.card[data-workflow="slow"] .recent li')
    expect(recent).to_have_count(2)
    expect(recent.first).to_contain_text("s-pausing")
    expect(recent.first.locator("time")).to_have_text(re.compile(r"just now|\d+ (s|min) ago"))
    screenshot(page, "overview")


def test_the_instances_table_filters_by_status_and_pages_with_the_cursor(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/listed")
    rows = page.locator("table.instances tbody tr")
    expect(rows).to_have_count(25)
    expect(rows.first).to_have_attribute("data-id", "p-29")  # newest first
    expect(rows.first.locator("td").nth(2)).to_have_text(re.compile(r"just now|\d+ (s|min) ago"))
    expect(page.locator('.filters .chip[data-status="queued"] .count')).to_have_text("25")
    expect(page.locator('.filters .chip[data-status="paused"] .count')).to_have_text("5")
    expect(page.locator('.filters .chip[data-status="all"] .count')).to_have_text("30")
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(5)
    expect(rows.last).to_have_attribute("data-id", "p-00")
    expect(rows.last.locator(".badge")).to_have_text("paused")
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    expect(rows.first).to_have_attribute("data-id", "p-29")
    page.locator('.filters .chip[data-status="paused"]').click()
    expect(page).to_have_url(re.compile(r"#/workflows/listed\?status=paused$"))
    expect(page.locator('.filters .chip[aria-current="page"]')).to_have_attribute("data-status", "paused")
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-id", "p-04")
    expect(page.locator(".filters .chip")).to_have_count(3)  # all, and the statuses present
    page.goto(f"{states.url}/#/workflows/listed?status=errored")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_text("No errored instances.")
    expect(page.locator('.filters .chip[data-status="errored"] .count')).to_have_text("0")
    page.goto(f"{states.url}/#/workflows/slow?status=waitingForPause")
    expect(rows.first.locator(".badge")).to_have_text("waitingForPause")


def test_searching_an_id_opens_the_instance_or_says_there_is_none(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/flaky")
    search = page.get_by_role("searchbox", name="Find by instance id")
    search.fill("no-such-id")
    search.press("Enter")
    expect(page.get_by_role("alert")).to_have_text(re.compile('No instance "no-such-id" in flaky'))
    search.fill("f-errored")
    page.get_by_role("button", name="Open").click()
    expect(page).to_have_url(re.compile(r"#/workflows/flaky/instances/f-errored$"))
    expect(page.locator("h1")).to_have_text("f-errored")


def test_an_unknown_instance_or_workflow_is_said_so(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/flaky/instances/nope")
    expect(page.get_by_role("alert")).to_have_text("no instance 'nope' in workflow 'flaky'")
    expect(page.get_by_role("link", name="Back to flaky")).to_be_visible()
    page.goto(f"{states.url}/#/workflows/nowhere")
    expect(page.get_by_role("alert")).to_contain_text("unknown workflow 'nowhere'")
    page.goto(f"{states.url}/#/no/such/page")
    expect(page.locator("main h1")).to_have_text("Not found")


def test_the_timeline_shows_every_attempt_sleeps_waits_and_results_on_demand(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/checkout/instances/c-approval")
    expect(page.locator(".status-slot .badge")).to_have_text("waiting")
    expect(page.locator('[data-section="params"]')).to_contain_text('"sku": "tea-earl-grey"')
    steps = page.locator(".timeline > li")
    expect(steps).to_have_count(4)
    charge = page.locator('.step[data-step="charge card"]')
    attempts = charge.locator(".attempts tbody tr")
    expect(attempts).to_have_count(3)
    expect(attempts.nth(0)).to_contain_text("ConnectionError: card gateway timed out")
    expect(attempts.nth(0).locator(".outcome")).to_have_text("error")
    expect(attempts.nth(2).locator(".outcome")).to_have_text("ok")
    expect(charge.locator(".step-status")).to_have_text("complete")
    expect(page.locator('.step[data-step="cooling-off"]')).to_contain_text("Slept until")
    wait = page.locator('.step[data-step="manager approval"]')
    expect(wait.locator(".step-status")).to_have_text("waiting")
    expect(wait).to_contain_text("times out at")
    expect(wait.locator("p time.rel")).to_have_text("in 3 days")
    charge.get_by_role("button", name="Show result").click()
    result = charge.locator(".result .json")
    expect(result).to_contain_text('"charge": "ch_3Pq81"')
    expect(result.get_by_role("button", name=re.compile(r"more characters"))).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_be_enabled()
    expect(page.get_by_role("button", name="Resume")).to_be_disabled()
    screenshot(page, "instance")
    result.get_by_role("button", name=re.compile(r"more characters")).click()
    expect(result).to_contain_text(app.NOTE)


def test_an_errored_instance_shows_its_error_and_a_retrying_one_its_next_attempt(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/flaky/instances/f-errored")
    expect(page.locator('[data-section="error"]')).to_contain_text("ValueError: no luck")
    expect(page.locator('[data-section="error"]')).to_contain_text("in step try")
    expect(page.locator('.step[data-step="try"] .attempts tbody tr')).to_have_count(2)
    expect(page.locator('.step[data-step="try"] .step-status')).to_have_text("failed")
    page.goto(f"{states.url}/#/workflows/flaky/instances/f-retrying")
    step = page.locator('.step[data-step="try"]')
    expect(step.locator(".step-status")).to_have_text("waiting")
    expect(step.locator(".retry")).to_contain_text("Attempt 2 at")
    expect(step.locator(".retry time.rel")).to_have_text(re.compile(r"^in (5\d min|1 h)$"))


def test_a_long_history_shows_its_latest_steps_until_asked_for_all(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/many/instances/m-1")
    steps = page.locator(".timeline > li.step")
    expect(steps).to_have_count(200)
    expect(steps.first).to_have_attribute("data-step", "item 5")
    page.get_by_role("button", name="Show the 5 earlier steps").click()
    expect(steps).to_have_count(205)
    expect(steps.first).to_have_attribute("data-step", "item 0")


def test_user_data_is_shown_as_text_never_as_markup(page: Page, states: Site) -> None:
    page.goto(f"{states.url}/#/workflows/flaky/instances/f-markup")
    expect(page.locator('[data-section="error"]')).to_contain_text(f"ValueError: {MARKUP}")
    expect(page.locator('[data-section="params"]')).to_contain_text("<b>bold</b>")
    assert page.locator("main img, main b").count() == 0
    assert page.evaluate("document.body.dataset.owned") is None


def test_on_a_phone_the_pages_fit_the_screen(browser: Browser, states: Site) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        for path in ("/", "/#/workflows/checkout", "/#/workflows/checkout/instances/c-approval"):
            page.goto(states.url + path)
            expect(page.locator("main h1")).to_be_visible()
            expect(page.locator("main .badge").first).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    finally:
        context.close()

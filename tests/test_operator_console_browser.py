"""The operator console in a real browser: Debian's chromium driven by Playwright (never its
own browser download), against a seeded gateway. Skipped where no chromium is installed."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.console_site import (
    ALICE,
    BOB,
    CHROMIUM_ARGS,
    Site,
    console_site,
    find_chromium,
    seed,
)
from tests.helpers import bot_env, eventually, run_bot

CHROMIUM = find_chromium()
HAS_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
pytestmark = [
    pytest.mark.serial,  # a browser process per test, and deadlines a busy machine can miss
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
    pytest.mark.skipif(not HAS_PLAYWRIGHT, reason="no playwright (pip install -e '.[dev]')"),
]

if CHROMIUM is not None and HAS_PLAYWRIGHT:
    from playwright.async_api import Browser, Page, async_playwright, expect


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, headless, started from its installed binary."""
    async with async_playwright() as pw:
        found = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield found
        await found.close()


@pytest.fixture
async def site(redis_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    """A seeded gateway with its console on a local port."""
    async with console_site(redis_url, tmp_path) as running:
        await seed(running)
        yield running


async def signed_in(browser: Browser, site: Site) -> Page:
    page = await browser.new_page()
    await page.goto(site.sign_in)
    return page


async def test_the_sign_in_url_opens_the_overview_with_models_and_breakers(
    browser: Browser, site: Site
) -> None:
    """The sign-in URL lands on / (no token left in the address bar), which lists the
    chain's models with their breaker states and the running process."""
    page = await signed_in(browser, site)
    assert page.url == f"{site.base}/"
    models = page.locator("#models tbody tr")
    await expect(models).to_have_count(2)
    await expect(models.nth(0)).to_contain_text("local/local-model")
    await expect(models.nth(0).locator(".pill")).to_have_text("closed")
    await expect(models.nth(1)).to_contain_text("backup/backup-model")
    await expect(models.nth(1).locator(".pill")).to_have_text("open")
    await expect(page.locator("#processes")).to_contain_text("all")
    cookies = await page.context.cookies()
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]


async def test_two_senders_show_as_two_conversations_with_masked_ids(
    browser: Browser, site: Site
) -> None:
    """Each sender's conversation is a row, its phone number masked as the logs mask it."""
    page = await signed_in(browser, site)
    await page.goto(f"{site.base}/conversations")
    rows = page.locator("a.conv")
    await expect(rows).to_have_text(["whatsapp:+1555•••6543", "whatsapp:+1555•••4567"])
    assert "+15551234567" not in await page.content()


async def test_usage_shows_the_same_total_as_bot_usage_json_and_a_chart(
    browser: Browser, site: Site
) -> None:
    """/usage's token total and cost equal the sums of `bot usage --by model --json`, and
    the page has its SVG chart."""
    env = bot_env(site.config.parent, REDIS_URL=site.redis_url, BOT_CONFIG=str(site.config))
    result = await run_bot("usage", "--by", "model", "--json", env=env, cwd=site.config.parent)
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    tokens = sum(r["tokens_in"] + r["tokens_out"] for r in rows)
    cost = sum(r["cost"] for r in rows)
    assert tokens > 0
    page = await signed_in(browser, site)
    await page.goto(f"{site.base}/usage")
    await expect(page.locator("#total-tokens")).to_have_text(f"{tokens:,}")
    await expect(page.locator("#total-cost")).to_have_text(f"${cost:.4f}")
    await expect(page.locator("svg.chart")).to_be_visible()


async def test_changing_the_default_on_models_changes_what_model_reports(
    browser: Browser, site: Site
) -> None:
    """Choosing another default on /models and pressing the button changes what `/model`
    answers, with the `model_changed` audit event of `/model default`."""
    page = await signed_in(browser, site)
    await page.goto(f"{site.base}/models")
    await page.select_option("#model", "backup/backup-model")
    await page.click("#set-default")
    await expect(page.locator("#default")).to_have_text("backup/backup-model")
    await expect(page.locator(".note")).to_contain_text("now backup/backup-model")
    before = len(site.sent.sent)
    await site.say(BOB, "/model")  # the gateway's running worker answers it
    await eventually(lambda: len(site.sent.sent) > before, within=20)
    assert "Now: backup/backup-model (from the global default" in site.sent.sent[-1].text
    [event] = site.events("model_changed")
    assert (event["by"], event["scope"], event["after"]) == (
        "console",
        "default",
        "backup/backup-model",
    )


async def test_a_dead_letter_retried_from_the_page_is_answered(
    browser: Browser, site: Site
) -> None:
    """Retry on /dead-letters puts the turn back and the running worker answers it."""
    page = await signed_in(browser, site)
    await page.goto(f"{site.base}/dead-letters")
    before = len(site.sent.sent)
    await page.click("button.retry")
    await expect(page.locator(".note")).to_contain_text("Retrying")
    await expect(page.locator("#letters")).to_contain_text("No dead letters")
    await eventually(lambda: len(site.sent.sent) > before, within=20)
    answered = site.sent.sent[-1]
    assert answered.conversation == ALICE
    assert answered.text == "Hello from the local model"


async def test_logs_show_a_new_message_received_without_a_reload(
    browser: Browser, site: Site
) -> None:
    """/logs, left open, shows a message that arrives after it loaded within a few seconds,
    the sender masked."""
    page = await signed_in(browser, site)
    await page.goto(f"{site.base}/logs?event=message_received")
    await expect(page.locator("#live")).to_have_class(re.compile("good"))
    rows = page.locator("#events tbody tr")
    before = await rows.count()
    await site.say(BOB, "a new message")
    await expect(rows).to_have_count(before + 1, timeout=5000)
    await expect(rows.last).to_contain_text("message_received")
    await expect(rows.last).to_contain_text("whatsapp:+1555•••6543")

"""The operator console's reminders in process: each conversation's pending ones on its page
(in the zone they were set in, text only where configured) and the overview's totals."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.reminders import Rule
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import run_turn
from tests.test_operator_console import (
    ALICE,
    BOB,
    PROVIDER_KEY,
    SECRETS,
    Console,
    console,
    conversation_pages,
    message,
    model,
)

__all__ = ["model"]  # the fixture, used by name

DUE = datetime(2099, 3, 1, 17, 0, tzinfo=UTC)  # 18:00 in Berlin, 12:00 in New York


async def set_reminders(c: Console) -> None:
    """Alice: one at 18:00 Berlin time and a daily one at 09:00 New York time; Bob: none."""
    store = c.app.reminders
    assert store is not None
    await run_turn(c.app, message(ALICE, "hi"))
    await run_turn(c.app, message(BOB, "hi"))
    common = {"channel": "whatsapp", "conversation": ALICE, "sender": ALICE}
    await store.add(**common, text="call mom secretly", due=DUE, zone="Europe/Berlin")
    await store.add(
        **common,
        text="water the plants",
        due=DUE + timedelta(days=1),
        zone="America/New_York",
        rule=Rule(hour=9, minute=0),
    )


async def page_of(c: Console, conversation: str) -> str:
    """The HTML of the conversation's page (found by its masked id on the list)."""
    for page in await conversation_pages(c):
        html = await (await c.http.get(page)).text()
        if conversation[-4:] in html:
            return html
    raise AssertionError(f"no page for {conversation}")


def reminder_rows(html: str) -> list[str]:
    table = html.split('id="reminders"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr><td>(.*?)</tr>", table, flags=re.S)


async def test_a_conversation_page_lists_its_pending_reminders_in_their_zone_text_hidden(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Alice's page shows her two reminders soonest first, in the zones they were set in, the
    daily one's rule, their length but not their text; nothing secret or unmasked."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await set_reminders(c)
        await c.sign_in()
        html = await page_of(c, ALICE)
        rows = reminder_rows(html)
        assert len(rows) == 2
        assert "2099-03-01 18:00 CET" in rows[0]
        assert "Europe/Berlin" in rows[0]
        assert "once" in rows[0]
        assert "17 characters (hidden)" in rows[0]
        assert "2099-03-02 12:00 EST" in rows[1]
        assert "every day at 09:00" in rows[1]
        assert "call mom" not in html
        assert "water the plants" not in html
        for secret in (*SECRETS.values(), PROVIDER_KEY, "+15551234567"):
            assert secret not in html
        assert "No reminder pending" in await page_of(c, BOB)


async def test_reminder_text_is_shown_when_the_config_logs_it(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """With `logging.includeContent` the page shows each pending reminder's text."""
    async with console(redis_url, tmp_path, model.base_url, include_content=True) as c:
        await set_reminders(c)
        await c.sign_in()
        html = await page_of(c, ALICE)
        assert "call mom secretly" in html
        assert "water the plants" in html


async def test_the_overview_counts_pending_reminders_and_shows_the_next_due(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """The overview shows how many reminders are pending in all and when the soonest is due;
    a cancelled one no longer counts."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await c.sign_in()
        html = await (await c.http.get("/")).text()
        assert 'id="reminders-pending">0<' in html
        assert "next due: none" in html
        await set_reminders(c)
        html = await (await c.http.get("/")).text()
        assert 'id="reminders-pending">2<' in html
        assert "next due: 2099-03-01 17:00:00 UTC" in html
        store = c.app.reminders
        assert store is not None
        first = (await store.pending(ALICE))[0]
        assert await store.cancel(ALICE, first.id)
        html = await (await c.http.get("/")).text()
        assert 'id="reminders-pending">1<' in html
        assert "next due: 2099-03-02 17:00:00 UTC" in html

"""Telegram drafts end to end: a private chat sees the reply as it is written (sendMessageDraft)
and then gets it once (sendMessage); groups, `streaming: "off"`, a 429 and a server without the
method fall back to typing, and the reply is never held up or sent twice."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.telegram_draft import draft_id
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import (
    FakeTelegram,
    TgReply,
    group_text_update,
    private_text_update,
    too_many_requests,
)
from tests.helpers import (
    TELEGRAM_SECRET,
    Gateway,
    eventually,
    gateway_config_text,
    telegram_gateway,
)

UPDATE_IDS = itertools.count(1000)
ANSWER = " ".join(f"word{n} &" if n % 7 == 0 else f"word{n} <b>" for n in range(24)) + " done."
SLOW = 0.04  # seconds between streamed events: the answer takes about 2 s


@pytest.fixture
async def gateway(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[Gateway]:  # fmt: skip
    async with telegram_gateway(telegram, model, redis_url, tmp_path, events.log) as gw:
        yield gw


async def post(gw: Gateway, update: dict[str, Any]) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    response = await gw.http.post("/webhooks/telegram", json=update, headers=headers)
    assert response.status == 200


def dm(chat_id: int, text: str = "hi") -> dict[str, Any]:
    return private_text_update(
        chat_id=chat_id, user_id=chat_id, text=text, update_id=next(UPDATE_IDS)
    )


def check_drafts_preview_the_reply(telegram: FakeTelegram, chat_id: int) -> list[str]:
    """The chat's drafts: one non-zero draft_id, each a prefix of the one reply's visible
    text, never two closer than 250 ms, all before the reply. Their visible texts."""
    [sent] = [s for s in telegram.sent if s["chat_id"] == chat_id]
    drafts = [d for d in telegram.drafts if d["chat_id"] == chat_id]
    assert drafts
    assert len({d["draft_id"] for d in drafts}) == 1
    assert drafts[0]["draft_id"] != 0
    assert all(sent["visible"].startswith(d["visible"]) for d in drafts)
    times = [call.at for call in telegram.calls_to("sendMessageDraft")]
    assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(times))
    assert all(d["at"] < sent["at"] for d in drafts)
    return [d["visible"] for d in drafts]


async def test_a_private_chat_sees_the_reply_as_it_is_written_then_once(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """A reasoning model streaming slowly: first "Thinking…" (an empty draft), then drafts
    of the final text as it grows (HTML Telegram accepts, never the reasoning), at most one
    per 500 ms, then one sendMessage with the whole reply."""
    model.script(Reply(text=ANSWER, reasoning="SECRET-REASONING " * 2, token_delay=SLOW))
    update = dm(42)
    await post(gateway, update)
    await eventually(lambda: len(telegram.sent) == 1)
    shown = check_drafts_preview_the_reply(telegram, 42)
    assert shown[0] == ""  # "Thinking…" while the model reasons
    assert len([text for text in shown if text]) >= 2  # the text grew in front of the person
    assert not any("SECRET" in d["text"] for d in telegram.drafts)
    assert telegram.drafts[0]["draft_id"] == draft_id("telegram:42", str(update["update_id"]))
    assert telegram.sent[0]["visible"] == ANSWER


async def test_a_draft_in_flight_lands_before_the_reply(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """A draft the Bot API answers slowly while the model finishes: the reply waits for it,
    so no draft lands after the reply (the person would see a stale preview)."""
    telegram.script("sendMessageDraft", TgReply(delay=0.5))
    # Streamed over ~0.3 s: the first draft goes out, and is still in flight, before the end.
    model.script(Reply(text="a short answer", reasoning=None, token_delay=0.1))
    await post(gateway, dm(43))
    await eventually(lambda: len(telegram.sent) == 1)
    check_drafts_preview_the_reply(telegram, 43)


async def test_groups_get_typing_and_one_message_and_no_drafts(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """A group message for the bot: typing, one sendMessage, no sendMessageDraft."""
    model.script(Reply(text=ANSWER, token_delay=SLOW / 4))
    update = group_text_update(text="hi", mention_bot=telegram.username, update_id=next(UPDATE_IDS))
    await post(gateway, update)
    await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.calls_to("sendMessageDraft") == []
    assert telegram.actions
    assert telegram.actions[0]["action"] == "typing"


async def test_streaming_off_shows_typing_only(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """`streaming: "off"`: a private chat gets typing and the one message, no drafts."""
    model.script(Reply(text=ANSWER, token_delay=SLOW / 4))
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel='streaming: "off"'
    ) as gw:
        await post(gw, dm(44))
        await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.calls_to("sendMessageDraft") == []
    assert [a["chat_id"] for a in telegram.actions][:1] == [44]


async def test_a_429_pauses_drafts_and_the_reply_still_arrives_once(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """A draft answered 429 (retry_after 1): no draft for a second, then drafts again; the
    reply goes out once, and is not held for the pause."""
    telegram.script("sendMessageDraft", too_many_requests(retry_after=1))
    model.script(Reply(text=ANSWER, reasoning=None, token_delay=SLOW))
    await post(gateway, dm(45))
    await eventually(lambda: len(telegram.sent) == 1)
    check_drafts_preview_the_reply(telegram, 45)
    refused, *later = [call.at for call in telegram.calls_to("sendMessageDraft")]
    assert later
    assert later[0] - refused >= 1.0
    [paused] = events.events("draft_paused")
    assert paused["ms"] == 1000


async def test_a_long_429_never_delays_the_reply(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """A draft answered 429 with retry_after 30: no more drafts in that turn, and the reply
    still goes out as soon as the model is done."""
    telegram.script("sendMessageDraft", too_many_requests(retry_after=30))
    model.script(Reply(text=ANSWER, reasoning=None, token_delay=SLOW / 4))
    await post(gateway, dm(46))
    await eventually(lambda: len(telegram.sent) == 1, within=10)
    assert len(telegram.calls_to("sendMessageDraft")) == 1
    assert telegram.drafts == []


async def test_a_server_without_drafts_gets_one_failed_try_per_process(
    model: FakeOpenAI, redis_url: str, tmp_path: Path, events: CapturedEvents
) -> None:
    """A Bot API server before 9.5 (404 for sendMessageDraft), three chats at once and one
    more later: one draft tried in all, every chat sees typing and gets its reply."""
    model.default = Reply(text=ANSWER, reasoning=None, token_delay=SLOW / 4)
    async with (
        FakeTelegram(drafts=False) as old,
        telegram_gateway(old, model, redis_url, tmp_path, events.log) as gw,
    ):
        await asyncio.gather(*(post(gw, dm(chat)) for chat in (51, 52, 53)))
        await eventually(lambda: len(old.sent) == 3)
        await post(gw, dm(54))
        await eventually(lambda: len(old.sent) == 4)
    assert len(old.calls_to("sendMessageDraft")) == 1
    assert {a["chat_id"] for a in old.actions} == {51, 52, 53, 54}
    assert len(events.events("drafts_unsupported")) == 1


async def test_a_mid_stream_failover_shows_the_fallbacks_text_alone(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """The primary goes silent after some words: the draft drops them ("Thinking…" or the
    fallback's words replace them in the same draft), and the one reply is the fallback's."""
    dead = "DEAD model words " * 10
    model.script(Reply(text=dead, reasoning=None, stall_after=12, token_delay=SLOW))
    async with FakeOpenAI(models=["backup-model"]) as backup:
        backup.default = Reply(text="from backup, " * 5, reasoning=None, token_delay=SLOW)
        text = gateway_config_text(
            model.base_url, backup.base_url, provider_timeout=1, fallback_api="openai-responses"
        )
        async with telegram_gateway(
            telegram, model, redis_url, tmp_path, events.log, config_text=text
        ) as gw:
            await post(gw, dm(47))
            await eventually(lambda: len(telegram.sent) == 1)
    [sent] = telegram.sent
    assert sent["visible"] == ("from backup, " * 5).strip()
    shown = [d["visible"] for d in telegram.drafts]
    dead_until = max(n for n, text in enumerate(shown) if "DEAD" in text)  # they were shown
    after = shown[dead_until + 1 :]
    assert after  # and then replaced, in the same draft
    assert all(sent["visible"].startswith(text) for text in after)
    assert len({d["draft_id"] for d in telegram.drafts}) == 1
    assert all(d["at"] < sent["at"] for d in telegram.drafts)


async def test_a_reply_longer_than_one_message_previews_the_part_being_written(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """textChunkLimit 80 and a 240-character answer: each draft shows the message being
    written (within the limit, the start of one of the messages sent), and the reply goes
    out as its messages, once."""
    paragraphs = [f"Paragraph {n}: " + "some words here " * 4 for n in range(4)]
    answer = "\n\n".join(paragraphs)
    model.script(Reply(text=answer, reasoning=None, token_delay=SLOW / 2))
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel="textChunkLimit: 80"
    ) as gw:
        await post(gw, dm(48))
        await eventually(
            lambda: " ".join(s["visible"] for s in telegram.sent).count("Paragraph") == 4
        )
    sent = [s["visible"] for s in telegram.sent]
    assert len(sent) >= 3
    drafts = [d["visible"] for d in telegram.drafts if d["visible"]]
    assert all(len(d) <= 80 for d in drafts)
    assert all(any(message.startswith(d) for message in sent) for d in drafts)
    assert any(not sent[0].startswith(d) for d in drafts)  # a later message was previewed too

"""Telegram end to end: webhooks with a secret, long polling, chunks, typing, group gating."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.cli.telegram import publish_command_menu
from bot.config import TelegramConfig
from bot.messages import OutboundMessage
from bot.settings import Settings
from channels.telegram import TelegramChannel
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import (
    FakeTelegram,
    TgReply,
    group_text_update,
    private_text_update,
    too_many_requests,
)
from tests.helpers import TELEGRAM_SECRET, Gateway, eventually, run_bot, telegram_gateway

SECRET = TELEGRAM_SECRET
UPDATE_IDS = itertools.count(1)


def dm(**fields: Any) -> dict[str, Any]:
    """A private-chat update as a webhook delivers it (with an update_id)."""
    return private_text_update(**{"update_id": next(UPDATE_IDS), **fields})


def group(**fields: Any) -> dict[str, Any]:
    """A group update as a webhook delivers it (with an update_id)."""
    return group_text_update(**{"update_id": next(UPDATE_IDS), **fields})


HOOK = "/webhooks/telegram"


@pytest.fixture
async def gateway(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> AsyncIterator[Gateway]:  # fmt: skip
    async with telegram_gateway(telegram, model, redis_url, tmp_path, events.log) as gw:
        yield gw


async def post(gw: Gateway, update: dict[str, Any], secret: str | None = SECRET) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    response = await gw.http.post(HOOK, json=update, headers=headers)
    return response.status


async def test_update_with_the_right_secret_gets_one_reply(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """The right secret: 200, then one sendMessage to the chat with only the final text."""
    model.script(Reply(text="Hello Ada.", reasoning="PRIVATE-THOUGHTS"))
    assert await post(gateway, dm(chat_id=42, text="hi")) == 200
    await eventually(lambda: len(telegram.sent) == 1)
    await asyncio.sleep(0.2)
    [sent] = telegram.sent
    assert (sent["chat_id"], sent["text"]) == (42, "Hello Ada.")
    assert len(telegram.sent) == 1
    assert all("PRIVATE-THOUGHTS" not in json.dumps(c.params) for c in telegram.calls)


@pytest.mark.parametrize("secret", ["wrong-secret", None], ids=["wrong", "missing"])
async def test_wrong_or_missing_secret_gets_401_and_nothing_happens(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI,
    redis_client: aioredis.Redis, secret: str | None,
) -> None:  # fmt: skip
    """A wrong or missing secret token: 401, nothing stored, no model call, nothing sent."""
    assert await post(gateway, dm(), secret=secret) == 401
    await asyncio.sleep(0.2)
    assert await redis_client.keys("conv:*") == []
    assert model.requests == []
    assert telegram.sent == []


async def test_duplicate_update_id_gets_one_reply(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """Telegram redelivering an update (same update_id) is answered once."""
    update = dm(text="once")
    for _ in range(3):
        assert await post(gateway, update) == 200
    await eventually(lambda: len(telegram.sent) == 1)
    await asyncio.sleep(0.3)
    assert len(telegram.sent) == 1
    assert len(model.requests_to("/responses")) == 1


async def test_long_reply_is_sent_in_ordered_chunks(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """A 10,000-character reply goes out as ordered messages within the 4000 limit."""
    text = "\n\n".join(f"Part {n}. " + "lorem ipsum " * 80 for n in range(11))
    assert len(text) > 10_000
    model.script(Reply(text=text))
    await post(gateway, dm(text="long please"))
    await eventually(lambda: sum(len(s["text"]) for s in telegram.sent) >= 9_900, within=30)
    chunks = [s["text"] for s in telegram.sent]
    assert len(chunks) >= 3
    assert all(len(c) <= 4000 for c in chunks)
    assert " ".join(chunks).split() == text.split()


async def test_rate_limit_is_honoured_then_the_reply_goes_out(
    gateway: Gateway, telegram: FakeTelegram, events: CapturedEvents
) -> None:
    """A 429 with retry_after is waited out and the message is then sent."""
    telegram.script("sendMessage", too_many_requests(retry_after=1))
    await post(gateway, dm(text="hi"))
    await eventually(lambda: len(telegram.sent) == 1)
    [retry] = events.events("send_retry")
    assert retry["ms"] == 1000
    assert len(telegram.calls_to("sendMessage")) == 2


async def test_typing_is_shown_while_the_turn_runs(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """sendChatAction typing goes to the chat as soon as the turn starts."""
    model.script(Reply(text="done", delay=0.5))
    await post(gateway, dm(chat_id=77, text="think hard"))
    await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.actions[0]["chat_id"] == 77
    assert telegram.actions[0]["action"] == "typing"


async def test_updates_we_do_not_handle_get_200_and_are_ignored(
    gateway: Gateway, redis_client: aioredis.Redis
) -> None:
    """A callback query or a sticker is acknowledged and dropped; bad JSON gets 400."""
    assert await post(gateway, {"update_id": 5, "callback_query": {"id": "1"}}) == 200
    sticker = dm()
    del sticker["message"]["text"]
    assert await post(gateway, sticker) == 200
    assert await redis_client.keys("conv:*") == []
    response = await gateway.http.post(
        HOOK, data=b"{not json", headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert response.status == 400


async def test_groups_answer_only_mentions_and_replies(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """In a group, only messages that mention the bot or reply to it reach a model (a reply
    with the answer it replies to)."""
    chat = -100555
    assert await post(gateway, group(chat_id=chat, text="chatting among us")) == 200
    await post(gateway, group(chat_id=chat, text="what time is it?",
                                          mention_bot=telegram.username))  # fmt: skip
    await eventually(lambda: len(telegram.sent) == 1)
    await post(gateway, group(chat_id=chat, text="and now?", reply_to_bot=True))
    await eventually(lambda: len(telegram.sent) == 2)
    prompts = [r.turn_texts[-1] for r in model.requests_to("/responses") if r.json]
    replied = "[reply to your earlier message: «An earlier answer.»]\nand now?"
    assert prompts == ["what time is it?", replied]
    assert {s["chat_id"] for s in telegram.sent} == {chat}


async def test_require_mention_false_answers_every_group_message(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """With requireMention: false every group message is answered, one conversation per group."""
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel="requireMention: false"
    ) as gw:
        await post(gw, group(chat_id=-100777, user_id=1, text="first"))
        await eventually(lambda: len(telegram.sent) == 1)
        await post(gw, group(chat_id=-100777, user_id=2, text="second"))
        await eventually(lambda: len(telegram.sent) == 2)
        history = [t.text for t in await gw.app.memory.load("telegram:-100777")]
    assert history[0] == "first"
    assert history[2] == "second"


async def test_polling_works_without_a_webhook_and_the_offset_survives_a_restart(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """Polling mode: the webhook is deleted, updates are answered, and after a restart the
    next update is answered without repeating the first."""
    telegram.webhook = {"url": "https://old.example.com/hook"}
    telegram.push_update(private_text_update(chat_id=9, text="first", update_id=100))
    channel = 'mode: "polling"'
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel=channel, poller=True
    ) as gw:
        await eventually(lambda: len(telegram.sent) == 1)
        assert telegram.webhook is None
        assert (await gw.http.post(HOOK, json={})).status == 404  # no webhook route in polling
    assert await redis_client.get("poller:{telegram}:offset") == "101"
    telegram.push_update(private_text_update(chat_id=9, text="second", update_id=101))
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel=channel, poller=True
    ):
        await eventually(lambda: len(telegram.sent) == 2)
    contents = [r.turn_texts[-1] for r in model.requests_to("/responses") if r.json]
    assert contents == ["first", "second"]
    assert next(c.params.get("offset") for c in telegram.calls_to("getUpdates")) is None


async def test_two_pollers_never_poll_at_once(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """Two processes in polling mode: one holds the lease, so Telegram never sees a conflict."""
    channel = 'mode: "polling"'
    async with (
        telegram_gateway(
            telegram, model, redis_url, tmp_path, events.log, channel=channel, poller=True
        ),
        telegram_gateway(
            telegram, model, redis_url, tmp_path, events.log, channel=channel, poller=True
        ),
    ):
        telegram.push_update(private_text_update(text="one"))
        await eventually(lambda: len(telegram.sent) == 1)
        await asyncio.sleep(0.5)
    assert len(events.events("poller_started")) == 1
    assert not events.events("poll_failed")


def cli_env(telegram: FakeTelegram, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BOT_DATA_DIR": str(tmp_path / "var"),
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        **extra,
    }


async def test_cli_sets_shows_and_deletes_the_webhook(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    """`bot telegram set-webhook|info|delete-webhook` drive the Bot API with the secret;
    set-webhook publishes the command menu (setMyCommands) as well."""
    env = cli_env(
        telegram, tmp_path, BOT_PUBLIC_URL="https://bot.example.com", TELEGRAM_WEBHOOK_SECRET=SECRET
    )
    result = await run_bot("telegram", "set-webhook", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert telegram.webhook is not None
    assert telegram.webhook["url"] == "https://bot.example.com/webhooks/telegram"
    assert [m["scope"] for m in telegram.menus] == [{"type": "default"}]  # the command menu too
    assert telegram.webhook["secret_token"] == SECRET
    info = await run_bot("telegram", "info", env=env, cwd=tmp_path)
    assert info.code == 0
    out = info.out
    assert f"@{telegram.username}" in out
    assert "https://bot.example.com/webhooks/telegram" in out
    assert SECRET not in out
    assert (await run_bot("telegram", "delete-webhook", env=env, cwd=tmp_path)).code == 0
    assert telegram.webhook is None


async def test_webhook_mode_refuses_to_start_without_a_secret(
    telegram: FakeTelegram, tmp_path: Path, redis_url: str
) -> None:
    """`bot serve` with a bot token but no TELEGRAM_WEBHOOK_SECRET exits 2 and says why."""
    env = cli_env(telegram, tmp_path, REDIS_URL=redis_url, BOT_PORT="0")
    result = await run_bot("serve", env=env, cwd=tmp_path)
    assert result.code == 2
    assert "TELEGRAM_WEBHOOK_SECRET" in result.out


async def test_commands_addressed_to_the_bot_work(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """`/whoami@botname` is a command in Telegram too, answered without a model."""
    await post(gateway, dm(chat_id=5, user_id=5, text=f"/whoami@{telegram.username}"))
    await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == "You are telegram:5 (user), time zone UTC."
    assert model.requests == []


def _message_body(
    update_id: int,
    *,
    text: bytes = b'"hi"',
    chat: bytes = b'{"id": 5, "type": "private"}',
    sender: bytes = b'{"id": 5, "first_name": "Ada"}',
) -> bytes:
    """An Update's JSON bytes written by hand, so that they can hold what json.dumps refuses."""
    return (
        b'{"update_id": %d, "message": {"message_id": 1, "date": 1700000000, "chat": %s, '
        b'"from": %s, "text": %s}}' % (update_id, chat, sender, text)
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"update_id": 900, "message": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        _message_body(901, text=b'"hi \\ud800"'),
        _message_body(902, text=b'"hi \xed\xa0\x80"'),
        _message_body(903, chat=b"[5]"),
        _message_body(904, sender=b'"Ada"'),
        _message_body(905, chat=b'{"id": "5}x", "type": "private"}'),
    ],
    ids=["nested-5000-deep", "escaped-lone-surrogate", "utf8-encoded-surrogate",
         "chat-not-an-object", "from-not-an-object", "chat-id-not-an-integer"],
)  # fmt: skip
async def test_updates_that_cannot_be_parsed_get_400_and_store_nothing(
    gateway: Gateway, redis_client: aioredis.Redis, model: FakeOpenAI, events: CapturedEvents,
    body: bytes,
) -> None:  # fmt: skip
    """Deep nesting, text that is no valid Unicode, and chat or sender ids of the wrong shape
    get 400 (not 500), and nothing is stored or sent to a model."""
    response = await gateway.http.post(
        HOOK, data=body, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET,
                                  "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status == 400
    assert await redis_client.keys("conv:*") == []
    assert model.requests == []
    [rejected] = events.events("message_rejected")
    assert rejected["status"] == 400


async def test_a_malformed_polled_update_is_skipped_and_the_next_answered(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """In polling mode an update whose sender is not an object is logged and skipped; the one
    after it is answered and the poller keeps running."""
    bad = private_text_update(chat_id=9, text="bad", update_id=300)
    bad["message"]["from"] = "Ada"
    telegram.push_update(bad)
    telegram.push_update(private_text_update(chat_id=9, text="good", update_id=301))
    channel = 'mode: "polling"'
    async with telegram_gateway(
        telegram, model, redis_url, tmp_path, events.log, channel=channel, poller=True
    ):
        await eventually(lambda: len(telegram.sent) == 1)
        assert await redis_client.get("poller:{telegram}:offset") == "302"
    contents = [r.turn_texts[-1] for r in model.requests_to("/responses") if r.json]
    assert contents == ["good"]
    [rejected] = events.events("message_rejected")
    assert "from.id" in rejected["error"]
    assert not events.events("poll_failed")


async def test_the_pacing_map_stays_bounded_and_still_paces(
    telegram: FakeTelegram, events: CapturedEvents
) -> None:
    """Replies to 300 chats leave only the chats inside the pacing window in memory, and a
    second reply to a chat inside it still waits out the rest of its second."""
    now = [1000.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    settings = Settings(_env_file=None, telegram_bot_token=telegram.token,  # type: ignore[call-arg]
                        telegram_api_base_url=telegram.base_url)  # fmt: skip
    async with aiohttp.ClientSession() as http:
        channel = TelegramChannel(
            settings=settings, config=TelegramConfig(), http=http, log=events.log,
            pace_seconds=1.0, sleep=sleep, clock=lambda: now[0],
        )  # fmt: skip
        for chat in range(300):
            await channel.send(OutboundMessage(channel="telegram", conversation=f"telegram:{chat}",
                                               text="hi"))  # fmt: skip
            now[0] += 0.1
        assert len(channel.pacer) <= 11  # the chats of the last second, 0.1 s apart
        assert waits == []
        await channel.send(OutboundMessage(channel="telegram", conversation="telegram:299",
                                           text="again"))  # fmt: skip
    assert waits == [pytest.approx(0.9)]
    assert len(telegram.sent) == 301


async def test_the_command_menu_is_published_per_scope(
    gateway: Gateway, telegram: FakeTelegram
) -> None:
    """At start, setMyCommands lists everyone's commands in the default scope and, in each
    `telegram:<id>` admin's chat, the admin-only ones too (from the commands' own table)."""
    assert gateway.app.telegram is not None
    log = CapturedEvents().log
    await publish_command_menu(gateway.app.telegram, ["telegram:42", "whatsapp:+15550001"], log)
    default, admin = telegram.menus
    assert default["scope"] == {"type": "default"}
    assert admin["scope"] == {"type": "chat", "chat_id": 42}
    everyone = {c["command"] for c in default["commands"]}
    admins = {c["command"] for c in admin["commands"]}
    assert "help" in everyone
    assert "approve" in admins - everyone
    assert everyone < admins


async def test_a_markdown_reply_reaches_telegram_as_html_it_accepts(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """A Markdown answer is sent with parse_mode HTML, accepted by a Bot API that refuses bad
    markup, and shows without Markdown signs; memory keeps the Markdown."""
    answer = "## Status\n**Status:** ok & <fine>\n\n- `a<b`\n\n```py\nx = 1\n```"
    model.script(Reply(text=answer))
    await post(gateway, dm(chat_id=42, text="status?"))
    await eventually(lambda: len(telegram.sent) == 1)
    [sent] = telegram.sent
    assert sent["parse_mode"] == "HTML"
    assert "<b>Status:</b> ok &amp; &lt;fine&gt;" in sent["text"]
    assert sent["visible"] == "Status\n\nStatus: ok & <fine>\n\n• a<b\n\nx = 1"
    stored = [await _dump(redis_client, key) for key in await redis_client.keys("conv:*")]
    assert any(json.dumps("**Status:** ok & <fine>")[1:-1] in value for value in stored)


async def _dump(redis_client: aioredis.Redis, key: str) -> str:
    """Every value under `key`, whatever its type, as one text (to look for text in memory)."""
    kind = await redis_client.type(key)
    if kind == "string":
        return str(await redis_client.get(key))
    if kind == "list":
        return "".join(await redis_client.lrange(key, 0, -1))
    if kind == "hash":
        return "".join(k + v for k, v in (await redis_client.hgetall(key)).items())
    if kind == "zset":
        return "".join(await redis_client.zrange(key, 0, -1))
    return ""


async def test_html_the_api_cannot_parse_is_sent_again_once_as_plain_text(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """A 400 "can't parse entities": the chunk goes once more as its visible text, without
    parse_mode, and `format_fallback` is logged."""
    refused = 'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 0'
    telegram.script("sendMessage", TgReply(status=400, description=refused))
    model.script(Reply(text="**Done** & dusted"))
    await post(gateway, dm(chat_id=7, text="go"))
    await eventually(lambda: len(telegram.sent) == 1)
    await eventually(lambda: len(events.events("format_fallback")) == 1)
    tries = telegram.calls_to("sendMessage")
    assert [c.params.get("parse_mode") for c in tries] == ["HTML", None]
    assert tries[0].params["text"] == "<b>Done</b> &amp; dusted"
    assert telegram.sent[0]["text"] == "Done & dusted"
    await eventually(lambda: len(events.events("reply_sent")) == 1)  # the reply is done
    assert len(telegram.calls_to("sendMessage")) == 2

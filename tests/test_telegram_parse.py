"""What people really send on Telegram reaches the model as short bracketed text: locations,
venues, contacts, stickers, polls, dice, forwards and replies, through the webhook, the worker
and the agent to the fake model; what nothing can read gets a one-line reply."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.agent import TEXT_ONLY
from bot.config import TelegramConfig
from bot.media import UNSUPPORTED
from bot.messages import InboundMessage
from bot.settings import Settings
from channels.base import RawRequest
from channels.telegram import TelegramChannel
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram, group_text_update, private_text_update
from tests.helpers import Gateway, eventually, running_gateway

SECRET = "tg-parse-secret"
MESSAGES = json.loads((Path(__file__).parent / "data" / "telegram" / "messages.json").read_text())
UPDATE_IDS = itertools.count(1)
BOT = {"id": 123456, "username": "switchboard_test_bot"}


def update_with(kind: str, **extra: Any) -> dict[str, Any]:
    """A private-chat update whose message holds MESSAGES[kind] instead of text."""
    update = private_text_update(update_id=next(UPDATE_IDS))
    del update["message"]["text"]
    update["message"].update(copy.deepcopy(MESSAGES[kind]), **extra)
    return update


@pytest.fixture
async def gateway(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path, events: CapturedEvents,
) -> AsyncIterator[Gateway]:  # fmt: skip
    async with running_gateway(
        model_url=model.base_url, redis_url=redis_url, data_dir=tmp_path, log=events.log,
        channels='telegram: { dmPolicy: "open" }', bot_public_url="https://bot.example.com",
        telegram_bot_token=telegram.token, telegram_webhook_secret=SECRET,
        telegram_api_base_url=telegram.base_url,
    ) as gw:  # fmt: skip
        yield gw


async def post(gw: Gateway, update: dict[str, Any]) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    response = await gw.http.post("/webhooks/telegram", json=update, headers=headers)
    assert response.status == 200


CASES = {
    "location": "[location: 52.52001, 13.40495]",
    "live_location": "[live location: 48.85884, 2.29435]",
    "venue": "[venue: Big Ben, London SW1A 0AA (51.50073, -0.12463)]",
    "contact": "[contact: Grace Hopper, +15557654321]",
    "animated_sticker": "[sticker 😀]",
    "video_sticker": "[sticker 🎉]",
    "poll": "[poll: Where shall we eat? (Pizza / Sushi)]",
    "dice": "[dice 🎲 4]",
    "forward_user": "[forwarded from Bob Marley]\nSee you at 8",
    "forward_hidden_user": "[forwarded from Carol]\nSecret plans",
    "forward_chat": "[forwarded from Dana in Team Chat]\nMeeting moved",
    "forward_channel": "[forwarded from the channel Daily News]\nBig news today",
    "reply_quote": "[reply to Ada: «Tuesday at 10»]\nIs that right?",
    "reply_to_photo": "[reply to Ada: «The red one»]\nWhich one is this?",
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_kind_reaches_the_model_as_readable_text(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI, kind: str
) -> None:
    """Each kind of message is answered, and the model's user turn is its bracketed text
    (never JSON, never an id), which memory keeps for the next turn."""
    await post(gateway, update_with(kind))
    await eventually(lambda: len(telegram.sent) == 1)
    [seen] = model.requests_to("/responses")
    assert seen.json is not None
    assert seen.turn_texts[-1] == CASES[kind]
    for leaked in ("{", "file_id", "555000111", "-100", "777000111", "4ac518cd"):
        assert leaked not in seen.prompt
    await post(gateway, private_text_update(text="and?", update_id=next(UPDATE_IDS)))
    await eventually(lambda: len(telegram.sent) == 2)
    assert CASES[kind] in model.requests_to("/responses")[1].prompt


@pytest.mark.parametrize(
    ("kind", "reply"), [("video_with_caption", UNSUPPORTED), ("story", TEXT_ONLY)]
)
async def test_what_nothing_can_read_gets_a_one_line_reply(
    gateway: Gateway, telegram: FakeTelegram, model: FakeOpenAI, kind: str, reply: str
) -> None:
    """A video (caption or not) is refused before any download, a story gets "describe it in
    words": one line each, no model call, nothing dropped."""
    await post(gateway, update_with(kind))
    await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == reply
    assert telegram.calls_to("getFile") == []
    assert model.requests == []


def channel(events: CapturedEvents) -> TelegramChannel:
    settings = Settings(_env_file=None, telegram_bot_token="1:tok", telegram_webhook_secret=SECRET)  # type: ignore[call-arg]
    config = TelegramConfig(dm_policy="open")
    tg = TelegramChannel(settings=settings, config=config, http=None, log=events.log)  # type: ignore[arg-type]
    tg.me = dict(BOT)
    return tg


def parse(tg: TelegramChannel, update: dict[str, Any]) -> list[InboundMessage]:
    body = json.dumps(update).encode()
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    url = "https://bot.example.com/webhooks/telegram"
    return tg.parse(RawRequest(url=url, headers=headers, body=body))


def test_a_reply_to_the_bot_is_marked_and_a_long_quote_is_cut(events: CapturedEvents) -> None:
    """A reply to one of the bot's messages is marked as such (to_bot, no author) with its
    text cut to 300 characters; the message's own id is its ref for later replies."""
    tg = channel(events)
    update = private_text_update(text="why?", update_id=1, message_id=31)
    bot = {"id": BOT["id"], "is_bot": True, "first_name": "Switchboard"}
    update["message"]["reply_to_message"] = {
        "message_id": 30, "from": bot, "chat": update["message"]["chat"], "date": 1717000000,
        "text": "word " * 200,
    }  # fmt: skip
    [message] = parse(tg, update)
    assert message.reply is not None
    assert (message.reply.ref, message.reply.to_bot, message.reply.author) == ("30", True, "")
    assert len(message.reply.quote) == 300
    assert message.reply.quote.endswith("…")
    assert message.ref == "31"
    assert InboundMessage.from_dict(json.loads(json.dumps(message.to_dict()))) == message


def test_a_forum_topics_implicit_reply_is_no_reply(events: CapturedEvents) -> None:
    """In a forum topic every message replies to the topic's opening message: that is not a
    reply the model needs to hear about."""
    tg = channel(events)
    update = group_text_update(text="hi", mention_bot=BOT["username"], update_id=1)
    update["message"]["reply_to_message"] = {
        "message_id": 2, "from": {"id": 9, "is_bot": False, "first_name": "Eve"},
        "chat": update["message"]["chat"], "date": 1717000000,
        "forum_topic_created": {"name": "Plans", "icon_color": 7322096},
    }  # fmt: skip
    [message] = parse(tg, update)
    assert (message.text, message.reply) == ("hi", None)


def test_groups_still_need_a_mention_and_service_messages_stay_silent(
    events: CapturedEvents,
) -> None:
    """In a group a location is for the bot only when it replies to the bot; a service message
    (a new member) is no message from a person and stays unanswered."""
    tg = channel(events)
    update = group_text_update(text="x", update_id=1)
    del update["message"]["text"]
    update["message"].update(copy.deepcopy(MESSAGES["location"]))
    assert parse(tg, update) == []
    update["message"]["reply_to_message"] = {
        "message_id": 1, "from": {"id": BOT["id"], "is_bot": True, "first_name": "Switchboard"},
        "chat": update["message"]["chat"], "date": 1717000000, "text": "Where are you?",
    }  # fmt: skip
    [message] = parse(tg, update)
    assert message.text == CASES["location"]
    joined = private_text_update(update_id=2)
    del joined["message"]["text"]
    joined["message"]["new_chat_members"] = [{"id": 5, "is_bot": False, "first_name": "Fay"}]
    assert parse(tg, joined) == []

"""What people really send on WhatsApp reaches the model as short bracketed text: shared
locations, quick-reply buttons, list choices, forwards and replies to earlier messages, through
the signed webhook, the worker and the agent to the fake model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.fakes.twilio_server import FakeTwilio, new_api_key, signed_form, whatsapp_inbound
from tests.helpers import Gateway, running_gateway, twilio_settings

PUBLIC = "https://bot.example.com"
BOT_NUMBER = "whatsapp:+14155238886"
FIELDS = json.loads((Path(__file__).parent / "data" / "whatsapp" / "inbound.json").read_text())


@pytest.fixture
async def gateway(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> AsyncIterator[Gateway]:  # fmt: skip
    async with running_gateway(
        model_url=model.base_url, redis_url=redis_url, data_dir=tmp_path, log=events.log,
        channels='whatsapp: { dmPolicy: "open" }', bot_public_url=PUBLIC,
        **twilio_settings(twilio, BOT_NUMBER),
    ) as gw:  # fmt: skip
        yield gw


async def say(
    gw: Gateway, twilio: FakeTwilio, model: FakeOpenAI, fields: dict[str, str]
) -> Recorded:
    """Post a signed inbound message, wait for its answer; the model request it made."""
    before = len(twilio.messages)
    body, headers = signed_form(twilio.auth_token, f"{PUBLIC}/webhooks/whatsapp", fields)
    response = await gw.http.post("/webhooks/whatsapp", data=body, headers=headers)
    assert response.status == 200
    await asyncio.wait_for(twilio.wait_for_messages(before + 1), 20)
    return model.requests_to("/responses")[-1]


def user_turn(seen: Recorded) -> str:
    assert seen.json is not None
    content: str = seen.turn_texts[-1]
    return content


CASES = {
    "location": "[location: Alexanderplatz, Alexanderplatz 1, 10178 Berlin (52.52001, 13.40495)]",
    "pin": "[location: -33.85678, 151.21311]",
    "button": "[button: Konfirmasi]",
    "quick_reply": "[button: Yes (confirm_booking)]",
    "list": "[chose from a list: Denver (DEN)]",
    "forwarded": "[forwarded]\nLook what Bob wrote",
    "frequently_forwarded": "[forwarded]\nShare this with 10 friends",
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_kind_reaches_the_model_as_readable_text(
    gateway: Gateway, twilio: FakeTwilio, model: FakeOpenAI, kind: str
) -> None:
    """Each kind is answered and the model's user turn is its bracketed text, said once (not
    again as the Body Twilio repeats), never a payload that is JSON."""
    seen = await say(gateway, twilio, model, whatsapp_inbound() | FIELDS[kind])
    assert user_turn(seen) == CASES[kind]
    assert "verifyEmail" not in seen.prompt


async def test_a_reply_names_the_earlier_message_when_memory_has_it(
    gateway: Gateway, twilio: FakeTwilio, model: FakeOpenAI
) -> None:
    """A swipe-reply to the person's own earlier message quotes it from memory; to a message
    memory does not hold, it says only "an earlier message"; to the bot's, "your earlier
    message"."""
    first = whatsapp_inbound(body="My order number is 4411, it came broken.")
    await say(gateway, twilio, model, first)
    reply = {"OriginalRepliedMessageSid": first["MessageSid"],
             "OriginalRepliedMessageSender": first["From"]}  # fmt: skip
    seen = await say(gateway, twilio, model, whatsapp_inbound(body="Any news?") | reply)
    assert user_turn(seen) == (
        "[reply to their earlier message: «My order number is 4411, it came broken.»]\nAny news?"
    )
    unknown = reply | {"OriginalRepliedMessageSid": "SM" + "0" * 32}
    seen = await say(gateway, twilio, model, whatsapp_inbound(body="And this?") | unknown)
    assert user_turn(seen) == "[reply to an earlier message]\nAnd this?"
    to_bot = reply | {"OriginalRepliedMessageSid": "SM" + "1" * 32,
                      "OriginalRepliedMessageSender": BOT_NUMBER}  # fmt: skip
    seen = await say(gateway, twilio, model, whatsapp_inbound(body="Why?") | to_bot)
    assert user_turn(seen) == "[reply to your earlier message]\nWhy?"


def fetches(twilio: FakeTwilio) -> list[str]:
    """The paths of the single-Message reads the fake served."""
    return [r.path for r in twilio.requests if r.method == "GET" and "/Messages/" in r.path]


async def test_a_reply_to_the_bots_message_quotes_it_from_twilio(
    gateway: Gateway, twilio: FakeTwilio, model: FakeOpenAI
) -> None:
    """A swipe-reply to the bot's message quotes that message's body, read from Twilio's
    Message resource with the REST credential; a turn with no such reply reads nothing."""
    model.script(Reply(text="We open at 9.\nOn Sundays at 11."))
    await say(gateway, twilio, model, whatsapp_inbound(body="When do you open?"))
    assert fetches(twilio) == []
    [sent] = twilio.messages
    to_bot = {"OriginalRepliedMessageSid": sent.sid, "OriginalRepliedMessageSender": BOT_NUMBER}
    seen = await say(gateway, twilio, model, whatsapp_inbound(body="Why?") | to_bot)
    assert user_turn(seen) == (
        "[reply to your earlier message: «We open at 9. On Sundays at 11.»]\nWhy?"
    )
    [read] = [r for r in twilio.requests if r.path in fetches(twilio)]
    assert read.path.endswith(f"/Messages/{sent.sid}.json")
    assert read.user == twilio.account_sid


async def test_a_key_that_may_not_read_messages_still_gets_its_reply_answered(
    tmp_path: Path, redis_url: str, events: CapturedEvents, model: FakeOpenAI
) -> None:
    """A restricted API key without "Messages: read" (Twilio answers the read 403 20003):
    the reply to the bot's message is answered, saying only "your earlier message", and one
    reply_unquoted event says why."""
    key = new_api_key(list_messages=False)
    async with FakeTwilio(api_keys=(key,)) as twilio, running_gateway(
        model_url=model.base_url, redis_url=redis_url, data_dir=tmp_path, log=events.log,
        channels='whatsapp: { dmPolicy: "open" }', bot_public_url=PUBLIC,
        twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
        twilio_api_key_sid=key.sid, twilio_api_key_secret=key.secret,
        twilio_whatsapp_from=BOT_NUMBER, twilio_api_base_url=twilio.base_url,
    ) as gw:  # fmt: skip
        await say(gw, twilio, model, whatsapp_inbound(body="When do you open?"))
        [sent] = twilio.messages
        to_bot = {"OriginalRepliedMessageSid": sent.sid,
                  "OriginalRepliedMessageSender": BOT_NUMBER}  # fmt: skip
        seen = await say(gw, twilio, model, whatsapp_inbound(body="Why?") | to_bot)
        assert user_turn(seen) == "[reply to your earlier message]\nWhy?"
        assert len(twilio.messages) == 2
        [read] = [r for r in twilio.requests if r.path in fetches(twilio)]
        assert read.user == key.sid
    [unquoted] = events.events("reply_unquoted")
    assert unquoted["reason"] == "refused"
    assert "Messages: read" in unquoted["error"]


async def test_a_location_that_is_no_place_is_not_made_up(
    gateway: Gateway, twilio: FakeTwilio, model: FakeOpenAI
) -> None:
    """Coordinates that are not numbers or not on Earth give no location line: the Body alone
    reaches the model, and an empty one gets the one-line "describe it in words"."""
    bad = FIELDS["pin"] | {"Latitude": "91.5", "Body": "here"}
    assert user_turn(await say(gateway, twilio, model, whatsapp_inbound() | bad)) == "here"
    body, headers = signed_form(
        twilio.auth_token, f"{PUBLIC}/webhooks/whatsapp",
        whatsapp_inbound() | FIELDS["pin"] | {"Longitude": "east"},
    )  # fmt: skip
    await gateway.http.post("/webhooks/whatsapp", data=body, headers=headers)
    [_, answer] = await asyncio.wait_for(twilio.wait_for_messages(2), 20)
    assert answer.body == "I can only read text for now. Please describe it in words."
    assert len(model.requests_to("/responses")) == 1

"""WhatsApp through Twilio end to end: signed webhooks → Redis → worker → Twilio's Messages API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from bot.app import App
from channels.base import RawRequest
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.twilio_server import (
    FakeTwilio,
    server_error,
    signed_form,
    too_many_requests,
    whatsapp_inbound,
    whatsapp_status,
)
from tests.helpers import eventually, running_gateway

PUBLIC = "https://bot.example.com"
HOOK = f"{PUBLIC}/webhooks/whatsapp"
SENDER = "whatsapp:+14155238886"
PERSON = "whatsapp:+15551234567"


@dataclass
class WhatsAppGateway:
    app: App
    http: test_utils.TestClient[aiohttp.web.Request, aiohttp.web.Application]
    twilio: FakeTwilio
    model: FakeOpenAI
    events: CapturedEvents

    async def post(
        self, fields: dict[str, str], *, url: str = HOOK, token: str | None = None, path: str = ""
    ) -> aiohttp.ClientResponse:
        body, headers = signed_form(token or self.twilio.auth_token, url + path, fields)
        return await self.http.post("/webhooks/whatsapp" + path, data=body, headers=headers)


async def open_gateway(
    tmp_path: Path,
    redis_url: str,
    events: CapturedEvents,
    twilio: FakeTwilio,
    model: FakeOpenAI,
    *,
    channel_config: str = 'dmPolicy: "open"',
    public_url: str | None = PUBLIC,
    auth_token: str | None = "use-fake",
) -> AsyncIterator[WhatsAppGateway]:
    async with running_gateway(
        model_url=model.base_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        log=events.log,
        channels=f"whatsapp: {{ {channel_config} }}",
        bot_public_url=public_url,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token if auth_token == "use-fake" else auth_token,
        twilio_whatsapp_from=SENDER,
        twilio_api_base_url=twilio.base_url,
        twilio_messaging_base_url=twilio.base_url,
    ) as gw:
        yield WhatsAppGateway(app=gw.app, http=gw.http, twilio=twilio, model=model, events=events)


@pytest.fixture
async def gateway(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    events: CapturedEvents,
    twilio: FakeTwilio,
    model: FakeOpenAI,
) -> AsyncIterator[WhatsAppGateway]:
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model):
        yield gw


async def test_signed_message_is_acked_fast_and_answered_once(gateway: WhatsAppGateway) -> None:
    """The ack (empty TwiML) does not wait for a slow model; then one reply, final text only."""
    gateway.model.script(Reply(text="Hi Ada!", reasoning="PRIVATE-REASONING", delay=3))
    response = await gateway.post(whatsapp_inbound(body="hello"))
    assert response.status == 200
    assert response.content_type == "text/xml"
    assert (await response.text()).endswith("<Response/>")
    assert gateway.twilio.messages == []  # acked while the model is still thinking
    [sent] = await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    assert (sent.to, sent.from_, sent.body) == (PERSON, SENDER, "Hi Ada!")
    await asyncio.sleep(0.2)  # room for a wrong second message to show up
    assert len(gateway.twilio.messages) == 1
    assert all(
        "PRIVATE-REASONING" not in (r.form.get("Body") or "") for r in gateway.twilio.requests
    )


@pytest.mark.parametrize(
    ("token", "url"),
    [("wrong-token", HOOK), (None, "https://proxy.internal:8443/webhooks/whatsapp")],
    ids=["wrong-signature", "signed-for-another-url"],
)
async def test_badly_signed_webhooks_get_403_and_change_nothing(
    gateway: WhatsAppGateway, redis_client: aioredis.Redis, token: str | None, url: str
) -> None:
    """A wrong signature, or one made for another URL, gets 403: nothing stored, no model call."""
    response = await gateway.post(whatsapp_inbound(), token=token, url=url)
    assert response.status == 403
    assert await redis_client.keys("conv:*") == []
    assert gateway.model.requests == []
    [rejected] = gateway.events.events("message_rejected")
    assert rejected["status"] == 403


async def test_unsigned_webhook_gets_403(gateway: WhatsAppGateway) -> None:
    """A request with no X-Twilio-Signature at all is refused."""
    response = await gateway.http.post("/webhooks/whatsapp", data=whatsapp_inbound())
    assert response.status == 403


async def test_signature_follows_bot_public_url(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """Behind a proxy, a request signed for the proxy's URL passes if BOT_PUBLIC_URL is that URL."""
    proxy = "https://proxy.internal:8443"
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, public_url=proxy):
        response = await gw.post(whatsapp_inbound(), url=f"{proxy}/webhooks/whatsapp")
        assert response.status == 200


async def test_without_auth_token_the_route_answers_503(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """No TWILIO_AUTH_TOKEN: webhooks get 503 with the reason, and nothing is stored."""
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, auth_token=None):
        response = await gw.post(whatsapp_inbound())
        assert response.status == 503
        assert "TWILIO_AUTH_TOKEN" in (await response.json())["error"]
        assert await redis_client.keys("conv:*") == []
        assert any("TWILIO_AUTH_TOKEN" in w for w in gw.app.warnings())


async def test_verify_signature_false_accepts_unsigned_with_a_warning(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """Only an explicit verifySignature: false lets unsigned requests in, and it is warned about."""
    config = 'dmPolicy: "open", verifySignature: false'
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, channel_config=config):
        response = await gw.http.post("/webhooks/whatsapp", data=whatsapp_inbound())
        assert response.status == 200
        assert any("verifySignature is false" in w for w in gw.app.warnings())


async def test_duplicate_message_sid_gets_one_reply(gateway: WhatsAppGateway) -> None:
    """Twilio retrying the same MessageSid is acked each time and answered once."""
    fields = whatsapp_inbound(body="once please")
    for _ in range(3):
        assert (await gateway.post(fields)).status == 200
    await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    await asyncio.sleep(0.3)
    assert len(gateway.twilio.messages) == 1
    assert len(gateway.model.requests_to("/responses")) == 1


async def test_long_reply_goes_out_in_ordered_chunks(gateway: WhatsAppGateway) -> None:
    """A 5,000-character reply arrives as ordered messages of at most 1600 characters."""
    paragraphs = [f"Paragraph {n}: " + "word " * 90 for n in range(11)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 5000
    gateway.model.script(Reply(text=text))
    await gateway.post(whatsapp_inbound(body="tell me a lot"))
    await eventually(lambda: sum(len(m.body or "") for m in gateway.twilio.messages) >= 4900)
    bodies = [m.body or "" for m in gateway.twilio.messages]
    assert all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies).split() == text.split()


async def test_rate_limited_send_is_retried_after_retry_after(gateway: WhatsAppGateway) -> None:
    """A 429 from Twilio is retried after its Retry-After, and the reply then goes out."""
    gateway.twilio.script(too_many_requests(retry_after=0.2))
    await gateway.post(whatsapp_inbound())
    await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    posts = [r for r in gateway.twilio.requests if r.method == "POST"]
    assert len(posts) == 2
    [retry] = gateway.events.events("send_retry")
    assert retry["ms"] == 200


async def test_too_long_body_is_not_retried_and_is_logged_with_a_hint(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """Twilio's 21617 is a 4xx: no retry, one send_failed event naming the fix."""
    config = 'dmPolicy: "open", textChunkLimit: 3000'
    model.script(Reply(text="x " * 1200))
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, channel_config=config):
        await gw.post(whatsapp_inbound())
        await eventually(lambda: bool(events.events("send_failed")))
    [failed] = events.events("send_failed")
    assert "21617" in failed["error"]
    assert "textChunkLimit" in failed["error"]
    assert failed["retryable"] is False
    assert len([r for r in twilio.requests if r.method == "POST"]) == 1


async def test_a_picture_with_no_vision_model_gets_a_notice(gateway: WhatsAppGateway) -> None:
    """A picture when no model of the chain takes images gets one sentence, is never
    downloaded and never reaches a model."""
    media = [("https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME", "image/jpeg")]
    await gateway.post(whatsapp_inbound(body="", media=media))
    [sent] = await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    assert sent.body == "None of the models here can see pictures; please describe it in words."
    assert gateway.model.requests == []
    assert gateway.events.events("media_fetched") == []


async def test_status_callbacks_are_verified_and_failures_logged(gateway: WhatsAppGateway) -> None:
    """A signed status callback is accepted; a failed delivery is logged with its code and hint."""
    fields = whatsapp_status(sid="SM" + "1" * 32, status="failed", error_code="63016")
    response = await gateway.post(fields, path="/status")
    assert response.status == 204
    [failed] = gateway.events.events("delivery_failed")
    assert failed["code"] == 63016
    assert "24-hour" in failed["error"]
    unsigned = await gateway.http.post("/webhooks/whatsapp/status", data=fields)
    assert unsigned.status == 403


async def test_malformed_form_gets_400(
    gateway: WhatsAppGateway, redis_client: aioredis.Redis
) -> None:
    """A signed request that is not a WhatsApp message gets 400 and stores nothing."""
    response = await gateway.post({"From": "+15551234567", "Body": "sms, not whatsapp"})
    assert response.status == 400
    assert await redis_client.keys("conv:*") == []


async def test_stranger_under_pairing_gets_a_code_not_an_answer(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """Under the default dmPolicy (pairing) an unknown number gets one pairing code, no model."""
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, channel_config=""):
        await gw.post(whatsapp_inbound(body="hello?"))
        [sent] = await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        assert "approve code" in (sent.body or "")
        assert sent.to == PERSON
        assert model.requests == []


async def test_commands_over_whatsapp_are_answered_without_a_model(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """A command over a signed webhook is answered by the command handler, not by a model."""
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model):
        await gw.post(whatsapp_inbound(body="/whoami"))
        [sent] = await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        assert sent.body == f"You are {PERSON} (user), time zone UTC."
        assert model.requests == []


async def test_huge_num_media_is_capped_and_other_webhooks_are_not_stalled(
    gateway: WhatsAppGateway,
) -> None:
    """A signed webhook claiming NumMedia=100000000 is parsed in O(10) work (at most 10 media)
    and answered at once, and a webhook sent beside it is not held up."""
    media = [(f"https://api.twilio.com/media/ME{n}", "image/jpeg") for n in range(12)]
    fields = whatsapp_inbound(body="look", media=media) | {"NumMedia": "100000000"}
    body, headers = signed_form(gateway.twilio.auth_token, HOOK, fields)
    assert gateway.app.whatsapp is not None
    started = time.perf_counter()
    [message] = gateway.app.whatsapp.parse(RawRequest(url=HOOK, headers=headers, body=body))
    assert time.perf_counter() - started < 1.0  # generous: it takes about a millisecond
    assert len(message.media) == 10
    started = time.perf_counter()
    huge, normal = await asyncio.gather(
        gateway.post(fields), gateway.post(whatsapp_inbound(body="hello"))
    )
    assert (huge.status, normal.status) == (200, 200)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("bad", [b"%FF", b"\xff"], ids=["percent-encoded", "raw-byte"])
async def test_a_form_that_is_not_utf8_gets_400_and_stores_nothing(
    gateway: WhatsAppGateway, redis_client: aioredis.Redis, bad: bytes
) -> None:
    """A signed form whose Body is not UTF-8 gets 400 and stores nothing (it used to be
    stored with U+FFFD in its place, under a signature made over that)."""
    body, headers = signed_form(gateway.twilio.auth_token, HOOK, whatsapp_inbound(body="\ufffd"))
    assert b"Body=%EF%BF%BD" in body
    body = body.replace(b"Body=%EF%BF%BD", b"Body=" + bad)
    response = await gateway.http.post("/webhooks/whatsapp", data=body, headers=headers)
    assert response.status == 400
    assert await redis_client.keys("conv:*") == []
    [rejected] = gateway.events.events("message_rejected")
    assert rejected["status"] == 400


async def test_a_negative_num_media_gets_400(
    gateway: WhatsAppGateway, redis_client: aioredis.Redis
) -> None:
    """NumMedia must be a whole number: -1 gets 400 and stores nothing."""
    response = await gateway.post(whatsapp_inbound() | {"NumMedia": "-1"})
    assert response.status == 400
    assert await redis_client.keys("conv:*") == []


def before_the_reply(twilio: FakeTwilio) -> list[str]:
    """The MessageSids of the typing indicators Twilio received before it took the first reply."""
    first = twilio.messages[0].at
    return [r.form.get("messageId", "") for r in twilio.typing if r.at < first]


async def test_a_turn_shows_typing_for_the_message_before_the_reply(
    gateway: WhatsAppGateway,
) -> None:
    """The turn POSTs the typing indicator (the inbound MessageSid, channel whatsapp, the REST
    credential) before the reply goes out."""
    gateway.model.script(Reply(text="Hi!", delay=1))
    inbound = whatsapp_inbound(body="hello")
    await gateway.post(inbound)
    await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    assert before_the_reply(gateway.twilio) == [inbound["MessageSid"]]
    [typing] = gateway.twilio.typing
    assert typing.form == {"messageId": inbound["MessageSid"], "channel": "whatsapp"}
    assert typing.auth == (gateway.twilio.account_sid, gateway.twilio.auth_token)


async def test_a_long_turn_renews_the_typing_indicator(gateway: WhatsAppGateway) -> None:
    """A model that holds its answer past a renewal period gets the indicator sent again."""
    assert gateway.app.whatsapp is not None
    gateway.app.whatsapp.typing_every = 0.2  # instead of 20 s
    gateway.model.script(Reply(text="Done.", delay=1.5))
    inbound = whatsapp_inbound(body="think hard")
    await gateway.post(inbound)
    await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    shown = before_the_reply(gateway.twilio)
    assert len(shown) >= 2
    assert set(shown) == {inbound["MessageSid"]}


async def test_a_stranger_refused_by_dm_policy_gets_no_typing(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """Under pairing, a stranger's turn (a pairing code) shows no typing and no read receipt;
    a listed friend's turn afterwards does."""
    friend = "whatsapp:+15550000001"
    model.script(Reply(text="Hi friend", delay=0.5))
    config = f'dmPolicy: "pairing", allowFrom: ["{friend}"]'
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, channel_config=config):
        await gw.post(whatsapp_inbound(body="hello?"))
        await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        hello = whatsapp_inbound(from_=friend, body="hello")
        await gw.post(hello)
        sent = await asyncio.wait_for(twilio.wait_for_messages(2), 10)
        assert [m.to for m in sent] == [PERSON, friend]
        assert [r.form["messageId"] for r in twilio.typing] == [hello["MessageSid"]]


async def test_a_failing_typing_endpoint_changes_nothing_else(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """A typing endpoint that answers 500 to every try: the reply still goes out once, and the
    turn logs one warning however often the indicator was renewed."""
    twilio.refuse_typing(server_error())
    model.script(Reply(text="Still here", delay=1))
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model):
        assert gw.app.whatsapp is not None
        gw.app.whatsapp.typing_every = 0.2
        await gw.post(whatsapp_inbound(body="hello"))
        [sent] = await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        assert sent.body == "Still here"
        assert len(twilio.typing) >= 2
        await eventually(lambda: len(events.events("reply_sent")) == 1)  # the reply is done
        assert len(twilio.messages) == 1
    failed = events.events("typing_failed")
    assert [e["level"] for e in failed if e["level"] == "warning"] == ["warning"]
    assert "500" in failed[0]["error"]


async def test_typing_indicator_false_sends_none(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, model: FakeOpenAI,
) -> None:  # fmt: skip
    """`channels.whatsapp.typingIndicator: false`: the reply comes with no typing indicator."""
    model.script(Reply(text="Hi!", delay=0.5))
    config = 'dmPolicy: "open", typingIndicator: false'
    async for gw in open_gateway(tmp_path, redis_url, events, twilio, model, channel_config=config):
        await gw.post(whatsapp_inbound(body="hello"))
        await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        assert twilio.typing == []


async def test_a_markdown_reply_reaches_whatsapp_in_its_own_markers(
    gateway: WhatsAppGateway,
) -> None:
    """Markdown becomes WhatsApp's *bold*, _italic_, ~strike~, bullets and "text (url)"."""
    answer = "# Plan\n**Status:** _ok_ ~~late~~\n\n- see [docs](https://example.com)"
    gateway.model.script(Reply(text=answer))
    await gateway.post(whatsapp_inbound(body="plan?"))
    await asyncio.wait_for(gateway.twilio.wait_for_messages(1), 10)
    [message] = gateway.twilio.messages
    assert message.body == "*Plan*\n\n*Status:* _ok_ ~late~\n\n• see docs (https://example.com)"

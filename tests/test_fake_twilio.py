"""Tests for tests.fakes.twilio_server: the real twilio SDK talks to the fake as to Twilio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.whatsapp import TwilioHttpClient, last_headers
from tests.fakes.twilio_server import (
    TYPING_PATH,
    FakeTwilio,
    TwilioReply,
    outside_window,
    server_error,
    signed_form,
    too_many_requests,
    whatsapp_inbound,
    whatsapp_status,
)

USER = "whatsapp:+15551234567"
SANDBOX = "whatsapp:+14155238886"
SERVICE = "MG" + "a" * 32
WEBHOOK = "https://bot.example.com/webhooks/twilio?channel=whatsapp"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def _client(
    fake: FakeTwilio, *, token: str | None = None, account_sid: str | None = None
) -> tuple[Client, AsyncTwilioHttpClient]:
    http_client = TwilioHttpClient(timeout=5)
    client = Client(
        fake.account_sid,
        token or fake.auth_token,
        account_sid=account_sid,
        http_client=http_client,
        environment={},  # ignore TWILIO_EDGE/TWILIO_REGION: they rewrite the host name
    )
    client.api.base_url = fake.base_url
    return client, http_client


@pytest.fixture
async def client(fake: FakeTwilio) -> AsyncIterator[Client]:
    sdk, http_client = await _client(fake)
    yield sdk
    await http_client.close()


async def _raises(coro: Any) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as info:
        await coro
    return info.value


class TestCreate:
    async def test_message_is_recorded_and_parsed(self, fake: FakeTwilio, client: Client) -> None:
        """A create through the SDK answers 201 with a queued Message and records what was sent."""
        before = time.monotonic()
        message = await client.messages.create_async(
            to=USER,
            from_=SANDBOX,
            body="Hello, Ada",
            status_callback="https://bot.example.com/status",
            media_url=["https://example.com/a.png", "https://example.com/b.png"],
        )
        assert message.sid is not None
        assert message.sid.startswith("SM")
        assert len(message.sid) == 34
        assert (message.to, message.from_, message.body) == (USER, SANDBOX, "Hello, Ada")
        assert (message.status, message.direction) == ("queued", "outbound-api")
        assert message.account_sid == fake.account_sid
        assert message.api_version == "2010-04-01"
        assert isinstance(message.date_created, datetime)
        assert (message.num_segments, message.num_media) == ("1", "2")
        assert (message.price, message.error_code, message.messaging_service_sid) == (None,) * 3
        assert message.uri == f"/2010-04-01/Accounts/{fake.account_sid}/Messages/{message.sid}.json"
        [sent] = fake.messages
        assert sent.sid == message.sid
        assert (sent.to, sent.from_, sent.body) == (USER, SANDBOX, "Hello, Ada")
        assert sent.status_callback == "https://bot.example.com/status"
        assert sent.media_url == ["https://example.com/a.png", "https://example.com/b.png"]
        assert sent.at >= before
        [request] = fake.requests
        assert request.auth == (fake.account_sid, fake.auth_token)
        assert request.form["To"] == USER

    async def test_messaging_service_instead_of_from(
        self, fake: FakeTwilio, client: Client
    ) -> None:
        """A MessagingServiceSid replaces From, and the segment count starts at 0."""
        message = await client.messages.create_async(
            to=USER, messaging_service_sid=SERVICE, body="hi"
        )
        assert (message.messaging_service_sid, message.from_) == (SERVICE, None)
        assert message.num_segments == "0"
        assert fake.messages[0].messaging_service_sid == SERVICE

    async def test_long_unicode_body_counts_ucs2_segments(self, client: Client) -> None:
        """A 100-character body with an emoji is UCS-2, so it needs two 67-unit segments."""
        message = await client.messages.create_async(to=USER, from_=SANDBOX, body="é" * 99 + "🙂")
        assert message.num_segments == "2"

    async def test_body_over_1600_is_21617(self, fake: FakeTwilio, client: Client) -> None:
        """A body over 1600 characters raises TwilioRestException 400 with code 21617."""
        error = await _raises(client.messages.create_async(to=USER, from_=SANDBOX, body="x" * 1601))
        assert (error.status, error.code) == (400, 21617)
        assert "1600 character limit" in error.msg
        assert fake.messages == []
        assert len(fake.requests) == 1

    async def test_body_of_exactly_1600_is_accepted(self, fake: FakeTwilio, client: Client) -> None:
        """A body of exactly 1600 characters is still accepted."""
        await client.messages.create_async(to=USER, from_=SANDBOX, body="x" * 1600)
        assert len(fake.messages) == 1

    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"to": USER, "body": "hi"}, 21603),
            ({"to": USER, "from_": SANDBOX}, 21602),
            ({"to": "15551234567", "from_": SANDBOX, "body": "hi"}, 21211),
        ],
    )
    async def test_missing_or_bad_fields_are_400(
        self, client: Client, fields: dict[str, str], code: int
    ) -> None:
        """A missing sender or body, or a To that is not E.164, is a 400 with Twilio's code."""
        error = await _raises(client.messages.create_async(**fields))
        assert (error.status, error.code) == (400, code)


class TestAuth:
    async def test_wrong_token_is_401(self, fake: FakeTwilio) -> None:
        """A wrong auth token is a 401 with code 20003, and the request is still recorded."""
        sdk, http_client = await _client(fake, token="wrong")
        try:
            error = await _raises(sdk.messages.create_async(to=USER, from_=SANDBOX, body="hi"))
        finally:
            await http_client.close()
        assert (error.status, error.code) == (401, 20003)
        assert fake.messages == []
        assert fake.requests[0].auth == (fake.account_sid, "wrong")

    async def test_other_account_in_path_is_404(self, fake: FakeTwilio) -> None:
        """Right credentials but another AccountSid in the path is a 404 with code 20404."""
        sdk, http_client = await _client(fake, account_sid="AC" + "1" * 32)
        try:
            error = await _raises(sdk.messages.create_async(to=USER, from_=SANDBOX, body="hi"))
        finally:
            await http_client.close()
        assert (error.status, error.code) == (404, 20404)


class TestScript:
    async def test_429_then_success_exposes_retry_after(
        self, fake: FakeTwilio, client: Client
    ) -> None:
        """A scripted 429 raises code 20429 with Retry-After readable; the retry then succeeds."""
        fake.script(too_many_requests(retry_after=2))
        error = await _raises(client.messages.create_async(to=USER, from_=SANDBOX, body="hi"))
        assert (error.status, error.code) == (429, 20429)
        assert last_headers.get()["Retry-After"] == "2"
        message = await client.messages.create_async(to=USER, from_=SANDBOX, body="hi")
        assert [m.sid for m in fake.messages] == [message.sid]
        assert len(fake.requests) == 2

    async def test_429_without_retry_after(self, fake: FakeTwilio, client: Client) -> None:
        """too_many_requests(None) sends no Retry-After header at all."""
        fake.script(too_many_requests(None))
        await _raises(client.messages.create_async(to=USER, from_=SANDBOX, body="hi"))
        assert "Retry-After" not in last_headers.get()

    @pytest.mark.parametrize(
        ("reply", "status", "code"),
        [
            (server_error(), 500, 20500),
            (server_error(503), 503, 20503),
            (outside_window(), 400, 63016),
        ],
    )
    async def test_scripted_errors(
        self, fake: FakeTwilio, client: Client, reply: TwilioReply, status: int, code: int
    ) -> None:
        """Scripted server errors and 63016 arrive as TwilioRestException with their codes."""
        fake.script(reply)
        error = await _raises(client.messages.create_async(to=USER, from_=SANDBOX, body="hi"))
        assert (error.status, error.code) == (status, code)
        assert fake.messages == []

    async def test_delayed_success(self, fake: FakeTwilio, client: Client) -> None:
        """A scripted delay holds the answer, then the message is accepted as usual."""
        fake.script(TwilioReply(delay=0.05))
        started = time.monotonic()
        await client.messages.create_async(to=USER, from_=SANDBOX, body="hi")
        assert time.monotonic() - started >= 0.05
        async with asyncio.timeout(1):
            assert len(await fake.wait_for_messages(1)) == 1


class TestWebhooks:
    def test_signed_form_validates_only_for_its_url(self) -> None:
        """signed_form's signature validates with RequestValidator, and fails for another URL."""
        params = whatsapp_inbound(body="hi there & more")
        body, headers = signed_form("secret", WEBHOOK, params)
        assert dict(parse_qsl(body.decode(), keep_blank_values=True)) == params
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        validator = RequestValidator("secret")
        signature = headers["X-Twilio-Signature"]
        assert validator.validate(WEBHOOK, params, signature)
        assert not validator.validate(WEBHOOK.replace("bot.", "evil."), params, signature)
        assert not RequestValidator("other").validate(WEBHOOK, params, signature)

    def test_whatsapp_inbound_fields(self) -> None:
        """An inbound WhatsApp message carries Twilio's fields, with numbered media fields."""
        params = whatsapp_inbound(media=[("https://api.twilio.com/media/1", "image/jpeg")])
        assert params["MessageSid"] == params["SmsMessageSid"] == params["SmsSid"]
        assert params["MessageSid"].startswith("MM")
        assert (params["From"], params["WaId"], params["ProfileName"]) == (
            USER,
            "15551234567",
            "Ada",
        )
        assert (params["SmsStatus"], params["NumMedia"], params["MessageType"]) == (
            "received",
            "1",
            "image",
        )
        assert params["MediaUrl0"] == "https://api.twilio.com/media/1"
        assert params["MediaContentType0"] == "image/jpeg"

    def test_whatsapp_status_fields(self) -> None:
        """A status callback names the message, its status and, when failed, the error code."""
        params = whatsapp_status(sid="SM" + "f" * 32, status="failed", error_code="63016")
        assert (params["MessageStatus"], params["ErrorCode"]) == ("failed", "63016")
        assert params["ChannelPrefix"] == "whatsapp"
        assert "ErrorCode" not in whatsapp_status(sid="SM" + "f" * 32)


async def test_media_needs_basic_auth_and_redirects_to_another_origin(fake: FakeTwilio) -> None:
    """The Media resource answers 401 (code 20003) without auth and 307 to a CDN on another
    port with it; the CDN serves the bytes and content type with no auth at all."""
    url = fake.add_media("image/png", b"\x89PNG picture")
    good = aiohttp.encode_basic_auth(fake.account_sid, fake.auth_token)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as response:
            assert response.status == 401
            assert (await response.json())["code"] == 20003
        headers = {"Authorization": good}
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            assert response.status == 307
            location = response.headers["Location"]
        assert f":{fake.cdn_port}/cdn/" in location
        assert fake.cdn_port != fake.port
        async with session.get(location) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "image/png"
            assert await response.read() == b"\x89PNG picture"
    assert [hit.auth is not None for hit in fake.media_hits] == [False, True, False]


async def test_typing_indicator_answers_in_twilios_shape_and_records_its_auth(
    fake: FakeTwilio,
) -> None:
    """The Typing Indicators resource: 401 without auth, 400 without messageId, success JSON
    with it, and a scripted 500 in Twilio's error shape; every request is recorded."""
    url = fake.base_url + TYPING_PATH
    good = {"Authorization": aiohttp.encode_basic_auth(fake.account_sid, fake.auth_token)}
    form = {"messageId": "SM" + "1" * 32, "channel": "whatsapp"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=form) as response:
            assert response.status == 401
        async with session.post(url, data={"channel": "whatsapp"}, headers=good) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 20001
        async with session.post(url, data=form, headers=good) as response:
            assert response.status == 200
            assert await response.json() == {"success": True}
        fake.refuse_typing(server_error())
        async with session.post(url, data=form, headers=good) as response:
            assert response.status == 500
            assert (await response.json())["code"] == 20500
    assert [r.user for r in fake.typing] == [None, *[fake.account_sid] * 3]
    assert fake.requests == []  # the Messages resource saw none of them

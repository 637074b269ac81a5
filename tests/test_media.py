"""Pictures, stickers, voice notes and contact cards end to end: fetched by their channel from
fake Twilio and Telegram, pictures sent to the chain's first image-capable model, voice notes
transcribed, contact cards read, nothing private in the logs, sizes capped while downloading."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.config import TelegramConfig
from bot.media import NO_EARS, NOT_HEARD, TOO_SLOW, UNSUPPORTED, contact_cards, too_large
from bot.messages import InboundMessage
from bot.settings import Settings
from channels.base import RawRequest
from channels.telegram import TelegramChannel
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, server_error
from tests.fakes.telegram_server import (
    FakeTelegram,
    private_photo_update,
    private_text_update,
    private_voice_update,
)
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import Gateway, eventually, running_gateway, twilio_settings

PUBLIC = "https://bot.example.com"
SECRET = "tg-secret"
PHOTO = b"\xff\xd8\xff\xe0" + b"a picture of a cat" * 50  # a JPEG's magic, then anything
VOICE = b"OggS" + b"a voice note" * 40
MAX_BYTES = 100_000


def data_url(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def provider(url: str, api: str, model: str, *, images: bool) -> dict[str, Any]:
    entry = {"id": model, "contextWindow": 32000, "maxTokens": 1024}
    if images:
        entry["input"] = ["text", "image"]
    return {
        "baseUrl": url, "apiKey": "sk-test-media", "api": api, "timeoutSeconds": 5,
        "connectTimeoutSeconds": 1, "models": [entry],
    }  # fmt: skip


def media_config(
    text_url: str,
    vision_url: str,
    *,
    vision_api: str = "openai-responses",
    vision_first: bool = False,
    transcription: bool = True,
    timeout: float = 20,
    transcription_cost: dict[str, float] | None = None,
) -> str:
    """Text-only `local/local-model` and image-capable `vision/vision-model` (second unless
    `vision_first`); voice notes to `local/whisper-1` when `transcription` (listed with
    `transcription_cost` when given)."""
    chain = ["local/local-model", "vision/vision-model"]
    chain = chain[::-1] if vision_first else chain
    media: dict[str, Any] = {"maxBytes": MAX_BYTES}
    if transcription:
        media["transcriptionModel"] = "local/whisper-1"
    config = {
        "agents": {"defaults": {
            "model": {"primary": chain[0], "fallbacks": chain[1:]},
            "systemPrompt": "You are a test assistant.",
            "timeoutSeconds": timeout,
            "media": media,
        }},
        "models": {"mode": "replace", "providers": {
            "local": provider(text_url, "openai-responses", "local-model", images=False),
            "vision": provider(vision_url, vision_api, "vision-model", images=True),
        }},
    }  # fmt: skip
    if transcription_cost is not None:
        whisper = {"id": "whisper-1", "contextWindow": 32000, "maxTokens": 1024}
        config["models"]["providers"]["local"]["models"].append(
            whisper | {"cost": transcription_cost}
        )
    return json.dumps(config)[:-1] + ",\n}"  # running_gateway adds `channels` before the "}"


@dataclass
class Setup:
    gw: Gateway
    text: FakeOpenAI
    vision: FakeOpenAI
    events: CapturedEvents


@pytest.fixture
async def models() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    async with (
        FakeOpenAI(models=["local-model", "whisper-1"]) as text,
        FakeOpenAI(models=["vision-model"]) as vision,
    ):
        yield text, vision


def whatsapp_gateway(
    tmp_path: Path,
    redis_url: str,
    events: CapturedEvents,
    twilio: FakeTwilio,
    config: str,
    access: str = 'dmPolicy: "open"',
):  # type: ignore[no-untyped-def]
    return running_gateway(
        model_url="unused", redis_url=redis_url, data_dir=tmp_path, log=events.log,
        channels=f"whatsapp: {{ {access} }}", config_text=config, bot_public_url=PUBLIC,
        **twilio_settings(twilio),
    )  # fmt: skip


def telegram_gateway(
    tmp_path: Path, redis_url: str, events: CapturedEvents, telegram: FakeTelegram, config: str
):  # type: ignore[no-untyped-def]
    return running_gateway(
        model_url="unused", redis_url=redis_url, data_dir=tmp_path, log=events.log,
        channels='telegram: { dmPolicy: "open" }', config_text=config, bot_public_url=PUBLIC,
        telegram_bot_token=telegram.token, telegram_webhook_secret=SECRET,
        telegram_api_base_url=telegram.base_url,
    )  # fmt: skip


async def post_whatsapp(gw: Gateway, fields: dict[str, str], token: str) -> None:
    body, headers = signed_form(token, f"{PUBLIC}/webhooks/whatsapp", fields)
    response = await gw.http.post("/webhooks/whatsapp", data=body, headers=headers)
    assert response.status == 200


async def post_telegram(gw: Gateway, update: dict[str, Any]) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    response = await gw.http.post("/webhooks/telegram", json=update, headers=headers)
    assert response.status == 200


def assert_private(events: CapturedEvents, *secrets: str) -> None:
    """None of the secrets (URLs, tokens, file paths, transcripts, base64 bytes) was logged."""
    for secret in secrets:
        assert secret not in events.text, f"{secret[:40]!r} reached the logs"


async def test_whatsapp_photo_goes_to_the_first_vision_model_fetched_with_credentials(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A WhatsApp photo with a question is fetched with the account's Basic auth (none sent to
    the CDN), reaches the first image-capable model as image data with the question, and is
    answered; the next text turn sends no image and remembers only "[picture]"."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    url = twilio.add_media("image/jpeg", PHOTO)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="What animal is this?", media=[(url, "image/jpeg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
        assert answer.body == "ok"
        assert text.requests_to("/responses") == []  # the text-only primary was skipped
        [seen] = vision.requests_to("/responses")
        assert seen.images == [data_url("image/jpeg", PHOTO)]
        assert "What animal is this?" in seen.prompt
        resource, cdn = twilio.media_hits
        assert resource.auth == (twilio.account_sid, twilio.auth_token)
        assert cdn.path.startswith("/cdn/")
        assert cdn.host != resource.host
        assert cdn.authorization is None
        [fetched] = events.events("media_fetched")
        assert (fetched["type"], fetched["bytes"]) == ("image/jpeg", len(PHOTO))
        assert fetched["ms"] >= 0

        await post_whatsapp(gw, whatsapp_inbound(body="And its name?"), twilio.auth_token)
        await asyncio.wait_for(twilio.wait_for_messages(2), 20)
        [later] = text.requests_to("/responses")
        assert later.images == []
        assert "[picture]" in later.prompt
        assert "What animal is this?" in later.prompt
        assert len(vision.requests_to("/responses")) == 1
    b64 = base64.b64encode(PHOTO).decode()
    assert_private(events, url, twilio.auth_token, "/cdn/", b64[:40], "a picture of a cat")


async def test_telegram_photo_with_caption_sends_the_largest_size(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    telegram: FakeTelegram, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A Telegram photo with a caption fetches only its largest size (getFile, then the file
    URL) and sends it with the caption, as a chat-completions `image_url`, to the vision model."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url, vision_api="openai-completions")
    small_id = telegram.add_file(b"small")
    large_id = telegram.add_file(PHOTO)
    sizes = [(small_id, 90, 60, 5), (large_id, 1280, 853, len(PHOTO))]
    update = private_photo_update(sizes=sizes, caption="What animal is this?", update_id=1)
    async with telegram_gateway(tmp_path, redis_url, events, telegram, config) as gw:
        await post_telegram(gw, update)
        await eventually(lambda: len(telegram.sent) == 1)
        assert telegram.sent[0]["text"] == "ok"
        assert [c.params["file_id"] for c in telegram.calls_to("getFile")] == [large_id]
        assert telegram.downloads == [telegram.files[large_id][0]]
        [seen] = vision.requests_to("/chat/completions")
        assert seen.images == [data_url("image/jpeg", PHOTO)]
        assert "What animal is this?" in seen.prompt
        assert text.requests_to("/responses") == []

        await post_telegram(gw, private_text_update(text="And its name?", update_id=2))
        await eventually(lambda: len(telegram.sent) == 2)
        [later] = text.requests_to("/responses")
        assert later.images == []
        assert "[picture]" in later.prompt
    path = telegram.files[large_id][0]
    assert_private(events, telegram.token, path, base64.b64encode(PHOTO).decode()[:40])


async def test_whatsapp_voice_note_is_transcribed_and_answered(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A WhatsApp voice note without text goes to the transcription model (multipart file and
    model, the provider's key) and its transcript, marked as a voice note, to the chat model;
    the transcript never reaches the logs."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    url = twilio.add_media("audio/ogg", VOICE)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="", media=[(url, "audio/ogg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert answer.body == "ok"
    [heard] = text.transcriptions
    assert (heard.model, heard.audio, heard.content_type) == ("whisper-1", VOICE, "audio/ogg")
    assert heard.headers["Authorization"] == "Bearer sk-test-media"
    [seen] = text.requests_to("/responses")
    assert f"[voice note] {text.transcript}" in seen.prompt
    [transcribed] = events.events("transcribed")
    assert transcribed["seconds"] == text.transcript_seconds
    assert transcribed["ms"] >= 0
    assert_private(events, url, text.transcript, twilio.auth_token)


async def test_a_voice_note_is_a_priced_call_of_its_turn(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """The transcription's tokens, as gpt-4o-transcribe reports them, are a call of the turn
    (kind transcription) priced with the model's `cost`; whisper-1's duration-only answer is
    counted as an estimate, marked so."""
    text, vision = models
    text.transcript_tokens = (150, 12)
    config = media_config(
        text.base_url, vision.base_url, transcription_cost={"input": 2.5, "output": 10}
    )
    url = twilio.add_media("audio/ogg", VOICE)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="", media=[(url, "audio/ogg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        await asyncio.wait_for(twilio.wait_for_messages(1), 20)
        text.transcript_tokens = None  # now as whisper-1 answers: a duration, no tokens
        fields = whatsapp_inbound(body="", media=[(url, "audio/ogg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        await asyncio.wait_for(twilio.wait_for_messages(2), 20)
        by_model = {r.key: r.totals for r in await gw.app.usage.report(by="model", days=1)}
    heard = by_model["local/whisper-1"]
    estimated_out = len(text.transcript) // 3
    assert (heard.calls, heard.estimated) == (2, 1)
    assert (heard.tokens_in, heard.tokens_out) == (150 + 1, 12 + estimated_out)
    assert heard.cost_nusd == round(((150 + 1) * 2.5 + (12 + estimated_out) * 10) * 1000)
    kinds = [e["kind"] for e in events.events("model_usage")]
    assert kinds.count("transcription") == 2
    assert by_model["local/local-model"].calls == 2  # the answers, counted apart


async def test_a_file_over_max_bytes_is_refused_while_downloading(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A picture far over maxBytes, streamed with no Content-Length, is abandoned once the
    download passes the cap (the CDN never sends it all); the person is told, no model runs."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    total = 256 * 1024 * 1024
    url = twilio.add_media("image/jpeg", streamed=total)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="Look!", media=[(url, "image/jpeg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
        assert answer.body == too_large(MAX_BYTES)
        [sent] = twilio.cdn_bytes_sent.values()
    assert sent < total
    assert vision.requests == []
    assert text.requests == []
    [rejected] = events.events("media_rejected")
    assert rejected["reason"] == "too_large"
    assert_private(events, url)


async def test_voice_notes_without_a_transcription_model_get_a_short_reply(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    telegram: FakeTelegram, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """With no transcriptionModel a voice note is not downloaded and gets "please type"."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url, transcription=False)
    file_id = telegram.add_file(VOICE, folder="voice", ext="oga")
    async with telegram_gateway(tmp_path, redis_url, events, telegram, config) as gw:
        await post_telegram(
            gw, private_voice_update(file_id=file_id, file_size=len(VOICE), update_id=1)
        )
        await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == NO_EARS
    assert telegram.calls_to("getFile") == []
    assert text.requests == []


async def test_a_failed_transcription_gets_an_apology_and_no_model_call(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    telegram: FakeTelegram, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A transcription server error is logged and answered with a short apology; no chat model
    is called."""
    text, vision = models
    text.transcription_error = server_error()
    config = media_config(text.base_url, vision.base_url)
    file_id = telegram.add_file(VOICE, folder="voice", ext="oga")
    async with telegram_gateway(tmp_path, redis_url, events, telegram, config) as gw:
        await post_telegram(
            gw, private_voice_update(file_id=file_id, file_size=len(VOICE), update_id=1)
        )
        await eventually(lambda: len(telegram.sent) == 1)
    assert telegram.sent[0]["text"] == NOT_HEARD
    assert len(text.transcriptions) == 1
    assert text.requests_to("/responses") == []
    assert vision.requests == []
    [rejected] = events.events("media_rejected")
    assert rejected["reason"] == "transcription"
    assert "500" in rejected["error"]


async def test_unsupported_attachments_get_a_short_reply(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A PDF is refused in one sentence, without downloading it or calling a model."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    url = twilio.add_media("application/pdf", b"%PDF-1.7")
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="Read this", media=[(url, "application/pdf")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert answer.body == UNSUPPORTED
    assert twilio.media_hits == []
    assert text.requests == []
    assert vision.requests == []


async def test_failover_keeps_a_picture_to_image_capable_models(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """When the only vision model fails, the picture's turn ends in an apology rather than
    falling over to the text-only model that follows it in the chain."""
    text, vision = models
    vision.default = server_error()
    config = media_config(text.base_url, vision.base_url, vision_first=True)
    url = twilio.add_media("image/png", PHOTO)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="What is this?", media=[(url, "image/png")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert "can't reach a language model" in (answer.body or "")
    assert len(vision.requests_to("/responses")) == 1
    assert text.requests_to("/responses") == []


async def test_a_download_that_stalls_ends_within_the_turns_timeout(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A CDN that sends headers and then nothing is given up on at the turn's timeout (here
    1 s): the person is asked to send it again, and no model runs."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url, timeout=1)
    url = twilio.add_media("image/jpeg", hang=True)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="Look!", media=[(url, "image/jpeg")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert answer.body == TOO_SLOW
    assert vision.requests == []
    [rejected] = events.events("media_rejected")
    assert rejected["reason"] == "timeout"


def telegram_channel(events: CapturedEvents, *, require_mention: bool = True) -> TelegramChannel:
    settings = Settings(_env_file=None, telegram_bot_token="1:tok", telegram_webhook_secret=SECRET)  # type: ignore[call-arg]
    config = TelegramConfig(dm_policy="open", require_mention=require_mention)
    channel = TelegramChannel(settings=settings, config=config, http=None, log=events.log)  # type: ignore[arg-type]
    channel.me = {"id": 123456, "username": "switchboard_test_bot"}
    return channel


def parse(channel: TelegramChannel, update: dict[str, Any]) -> list[InboundMessage]:
    body = json.dumps(update).encode()
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    return channel.parse(RawRequest(url=f"{PUBLIC}/webhooks/telegram", headers=headers, body=body))


def test_telegram_parses_photos_voice_and_documents_with_their_types(
    events: CapturedEvents,
) -> None:
    """A photo is its largest size's file id (image/jpeg) with the caption as text; a voice
    note and a document carry their mime types and sizes; a static sticker is a WebP picture
    with its emoji as its note."""
    channel = telegram_channel(events)
    sizes = [("small", 90, 60, 5), ("large", 1280, 853, 900), ("mid", 320, 213, 60)]
    [photo] = parse(channel, private_photo_update(sizes=sizes, caption="Look", update_id=1))
    assert (photo.text, photo.media) == ("Look", ("large",))
    assert (photo.meta["type0"], photo.meta["size0"]) == ("image/jpeg", "900")
    [voice] = parse(channel, private_voice_update(file_id="v1", file_size=42, update_id=2))
    assert (voice.text, voice.media, voice.meta["type0"]) == ("", ("v1",), "audio/ogg")
    document = private_text_update(update_id=3)
    del document["message"]["text"]
    document["message"]["document"] = {"file_id": "d1", "mime_type": "application/pdf"}
    [doc] = parse(channel, document)
    assert (doc.media, doc.meta["type0"]) == (("d1",), "application/pdf")
    sticker = private_text_update(update_id=4)
    del sticker["message"]["text"]
    sticker["message"]["sticker"] = {"file_id": "s1", "width": 512, "height": 512, "emoji": "😀"}
    [static] = parse(channel, sticker)
    assert (static.text, static.media, static.meta["type0"]) == ("", ("s1",), "image/webp")
    assert static.meta["note0"] == "[sticker 😀]"


def test_telegram_group_photos_need_a_mention_in_the_caption(events: CapturedEvents) -> None:
    """In a group, a photo is for the bot only when its caption mentions it (the mention is
    taken out of the text)."""
    channel = telegram_channel(events)
    update = private_photo_update(sizes=[("p", 10, 10, 1)], caption="nice", update_id=1)
    update["message"]["chat"] = {"id": -100123, "type": "supergroup", "title": "Group"}
    assert parse(channel, update) == []
    update["message"]["caption"] = "@switchboard_test_bot what is this?"
    [message] = parse(channel, update)
    assert (message.text, message.media) == ("what is this?", ("p",))


async def test_an_attachment_of_no_known_type_is_refused_after_download(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """An attachment declared with no type and served as bare bytes is refused as unsupported:
    it is neither shown to a model nor sent for transcription."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    url = twilio.add_media("application/octet-stream", b"\x00\x01 mystery")
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        await post_whatsapp(gw, whatsapp_inbound(body="?", media=[(url, "")]), twilio.auth_token)
        [answer] = await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert answer.body == UNSUPPORTED
    assert text.transcriptions == []
    assert text.requests == []
    assert vision.requests == []


async def test_attachments_are_fetched_only_after_the_access_check(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A stranger's photo costs nothing (never downloaded, no model); an allowed sender's
    photo is fetched and answered."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    access = 'dmPolicy: "allowlist", allowFrom: ["whatsapp:+15551234567"]'
    url = twilio.add_media("image/jpeg", PHOTO)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config, access) as gw:
        stranger = whatsapp_inbound(
            from_="whatsapp:+15559990000", body="hi", media=[(url, "image/jpeg")]
        )
        await post_whatsapp(gw, stranger, twilio.auth_token)
        await eventually(lambda: bool(events.events("message_rejected")))
        assert twilio.media_hits == []
        friend = whatsapp_inbound(body="What is it?", media=[(url, "image/jpeg")])
        await post_whatsapp(gw, friend, twilio.auth_token)
        await eventually(lambda: len(vision.requests_to("/responses")) == 1)
        await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    assert [m.to for m in twilio.messages] == ["whatsapp:+15551234567"]
    assert len(twilio.media_hits) == 2  # the friend's: the resource, then the CDN
    assert len(events.events("media_fetched")) == 1
    assert text.requests == []


async def test_a_whatsapp_sticker_is_a_picture_for_a_vision_model(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """A WhatsApp sticker (WebP) is fetched and shown to the vision model as a picture, noted
    "[sticker]" in the turn and in memory."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    sticker = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"a sticker" * 20
    url = twilio.add_media("image/webp", sticker)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="", media=[(url, "image/webp")]) | {"MessageType": "sticker"}
        await post_whatsapp(gw, fields, twilio.auth_token)
        await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    [seen] = vision.requests_to("/responses")
    assert seen.images == [data_url("image/webp", sticker)]
    assert seen.json is not None
    assert "[sticker]" in json.dumps(seen.json["input"][-1], ensure_ascii=False)


async def test_a_telegram_sticker_without_a_vision_model_is_its_emoji(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    telegram: FakeTelegram, models: tuple[FakeOpenAI, FakeOpenAI],
) -> None:  # fmt: skip
    """With no model that takes images, a static sticker is not downloaded and not refused:
    the model reads "[sticker 😀]"."""
    text, _ = models
    config = json.dumps({
        "agents": {"defaults": {"model": "local/local-model", "media": {"maxBytes": MAX_BYTES}}},
        "models": {"mode": "replace", "providers": {
            "local": provider(text.base_url, "openai-responses", "local-model", images=False),
        }},
    })[:-1] + ",\n}"  # fmt: skip
    file_id = telegram.add_file(b"RIFFWEBP", folder="stickers", ext="webp")
    update = private_text_update(update_id=1)
    del update["message"]["text"]
    update["message"]["sticker"] = {
        "file_id": file_id, "file_unique_id": "AgADs", "type": "regular", "width": 512,
        "height": 512, "is_animated": False, "is_video": False, "emoji": "😀", "file_size": 8,
    }  # fmt: skip
    async with telegram_gateway(tmp_path, redis_url, events, telegram, config) as gw:
        await post_telegram(gw, update)
        await eventually(lambda: len(telegram.sent) == 1)
    [seen] = text.requests_to("/responses")
    assert seen.json is not None
    assert seen.turn_texts[-1] == "[sticker 😀]"
    assert seen.images == []
    assert telegram.calls_to("getFile") == []


async def test_a_whatsapp_contact_card_is_read_as_name_and_numbers(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents,
    twilio: FakeTwilio, models: tuple[FakeOpenAI, FakeOpenAI], data_dir: Path,
) -> None:  # fmt: skip
    """A shared contact (text/vcard) is fetched like other media, with the account's
    credentials, and the model reads its name and numbers, never the file or its URL."""
    text, vision = models
    config = media_config(text.base_url, vision.base_url)
    card = (data_dir / "whatsapp" / "contact.vcf").read_bytes()
    url = twilio.add_media("text/vcard", card)
    async with whatsapp_gateway(tmp_path, redis_url, events, twilio, config) as gw:
        fields = whatsapp_inbound(body="", media=[(url, "text/vcard")])
        await post_whatsapp(gw, fields, twilio.auth_token)
        await asyncio.wait_for(twilio.wait_for_messages(1), 20)
    [seen] = text.requests_to("/responses")
    assert seen.json is not None
    assert seen.turn_texts[-1] == ("[contact: Ada Lovelace, +44 20 7946 0000, +1 555 0100]")
    assert twilio.media_hits[0].auth == (twilio.account_sid, twilio.auth_token)
    assert url not in seen.prompt
    assert "VCARD" not in seen.prompt
    assert vision.requests == []


def test_vcards_with_several_contacts_escapes_and_no_name_stay_short() -> None:
    """A vCard file of many contacts shows a few, each one line, escapes undone; a card with
    no name or a file with no card still says what it was."""
    one = (
        "BEGIN:VCARD\r\nVERSION:2.1\r\nN:Doe;Jane;;;\r\nTEL;CELL:+1 555 \r\n 0199\r\nEND:VCARD\r\n"
    )
    nameless = "BEGIN:VCARD\nVERSION:3.0\nTEL:+49 30 1234\nEND:VCARD\n"
    escaped = "BEGIN:VCARD\nFN:Smith\\, Bob [work]\nEND:VCARD\n"
    assert contact_cards(one.encode()) == "[contact: Jane Doe, +1 555 0199]"
    assert contact_cards(nameless.encode()) == "[contact: no name, +49 30 1234]"
    assert contact_cards(escaped.encode()) == "[contact: Smith, Bob (work)]"
    many = contact_cards((one * 7).encode()).splitlines()
    assert many == ["[contact: Jane Doe, +1 555 0199]"] * 5 + ["[and 2 more contacts]"]
    assert contact_cards(b"not a card") == "[contact card]"

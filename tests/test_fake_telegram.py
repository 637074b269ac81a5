"""Tests for tests.fakes.telegram_server: the fake Bot API answers in Telegram's real shapes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes.telegram_server import (
    CONFLICT_POLLING,
    CONFLICT_WEBHOOK,
    FakeTelegram,
    TgReply,
    group_text_update,
    private_text_update,
    too_many_requests,
)

TOKEN = "123456:TEST-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def call(
    session: aiohttp.ClientSession,
    fake: FakeTelegram,
    method: str,
    *,
    token: str = TOKEN,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    """POST a JSON body to `{base}/bot{token}/{method}`; return (status, decoded envelope)."""
    url = f"{fake.base_url}/bot{token}/{method}"
    async with session.post(url, json=params) as response:
        return response.status, await response.json()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition until it holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class TestGetMe:
    async def test_returns_the_bot_user(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """getMe answers ok with the bot's User object and its getMe-only flags."""
        status, body = await call(session, fake, "getMe")
        assert status == 200
        assert body["ok"] is True
        me = body["result"]
        assert me["id"] == 123456
        assert me["is_bot"] is True
        assert me["username"] == "switchboard_test_bot"
        assert me["can_join_groups"] is True
        assert me["can_read_all_group_messages"] is False
        assert me["supports_inline_queries"] is False
        assert fake.calls[-1].method == "getMe"

    async def test_wrong_token_is_unauthorized(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A token the fake does not hold gets 401 Unauthorized in the error envelope."""
        status, body = await call(session, fake, "getMe", token="999:nope")
        assert status == 401
        assert body == {"ok": False, "error_code": 401, "description": "Unauthorized"}

    async def test_unknown_method_is_not_found(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A method the fake does not implement gets 404 Not Found, and is still recorded."""
        status, body = await call(session, fake, "sendTelepathy")
        assert status == 404
        assert body == {"ok": False, "error_code": 404, "description": "Not Found"}
        assert fake.calls[-1].method == "sendTelepathy"


class TestSendMessage:
    async def test_returns_a_message_and_records_it(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """sendMessage returns a Message from the bot with per-chat increasing ids."""
        _, first = await call(session, fake, "sendMessage", chat_id=1001, text="hi")
        _, second = await call(
            session, fake, "sendMessage", chat_id=1001, text="again", parse_mode="HTML"
        )
        _, other = await call(session, fake, "sendMessage", chat_id=2002, text="elsewhere")
        message = first["result"]
        assert first["ok"] is True
        assert message["from"]["id"] == 123456
        assert message["from"]["is_bot"] is True
        assert message["chat"] == {"id": 1001, "first_name": "Ada", "type": "private"}
        assert message["text"] == "hi"
        assert isinstance(message["date"], int)
        assert second["result"]["message_id"] == message["message_id"] + 1
        assert other["result"]["message_id"] == 1
        assert [(s["chat_id"], s["text"], s["parse_mode"]) for s in fake.sent] == [
            (1001, "hi", None),
            (1001, "again", "HTML"),
            (2002, "elsewhere", None),
        ]

    async def test_reply_to_a_pushed_message(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A reply_parameters reply nests the pushed message and continues the chat's ids."""
        update = private_text_update(text="question", message_id=40)
        fake.push_update(update)
        _, body = await call(
            session,
            fake,
            "sendMessage",
            chat_id=1001,
            text="answer",
            reply_parameters={"message_id": 40},
        )
        message = body["result"]
        assert message["message_id"] == 41
        assert message["reply_to_message"]["text"] == "question"
        assert message["chat"]["username"] == "ada"
        assert fake.sent[0]["reply_to_message_id"] == 40

    async def test_form_encoded_with_json_fields(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A form-encoded body works, with objects sent as JSON strings, as the real API allows."""
        url = f"{fake.base_url}/bot{TOKEN}/sendMessage"
        form = {"chat_id": "1001", "text": "hi", "reply_parameters": json.dumps({"message_id": 7})}
        async with session.post(url, data=form) as response:
            body = await response.json()
        assert body["ok"] is True
        assert fake.sent[0]["chat_id"] == 1001
        assert fake.sent[0]["reply_to_message_id"] == 7
        assert fake.calls[-1].params["reply_parameters"] == {"message_id": 7}

    async def test_too_long_text_is_refused(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """Text over 4096 UTF-16 code units is a 400 "message is too long"; 4096 is fine."""
        status, body = await call(session, fake, "sendMessage", chat_id=1, text="😀" * 2049)
        assert status == 400
        assert body == {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: message is too long",
        }
        status, _ = await call(session, fake, "sendMessage", chat_id=1, text="😀" * 2048)
        assert status == 200
        assert len(fake.sent) == 1

    async def test_empty_text_is_refused(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """Empty or blank text is a 400 "message text is empty" and nothing is recorded as sent."""
        for text in ("", "  \n"):
            status, body = await call(session, fake, "sendMessage", chat_id=1, text=text)
            assert status == 400
            assert body["description"] == "Bad Request: message text is empty"
        assert fake.sent == []

    async def test_scripted_429_then_ok(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A scripted flood-control 429 carries retry_after; the next call answers normally."""
        fake.script("sendMessage", too_many_requests(3))
        status, body = await call(session, fake, "sendMessage", chat_id=1, text="hi")
        assert status == 429
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        }
        status, body = await call(session, fake, "sendMessage", chat_id=1, text="hi")
        assert status == 200
        assert body["ok"] is True
        assert len(fake.sent) == 1
        assert len(fake.calls_to("sendMessage")) == 2

    async def test_scripted_default_description(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A scripted status without a description uses the HTTP phrase."""
        fake.script("getMe", TgReply(status=502))
        status, body = await call(session, fake, "getMe")
        assert (status, body["description"], body["error_code"]) == (502, "Bad Gateway", 502)


class TestSendChatAction:
    async def test_records_the_action(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """sendChatAction answers true and is recorded; an unknown action is a 400."""
        _, body = await call(session, fake, "sendChatAction", chat_id=1001, action="typing")
        assert body == {"ok": True, "result": True}
        assert [(a["chat_id"], a["action"]) for a in fake.actions] == [(1001, "typing")]
        status, body = await call(session, fake, "sendChatAction", chat_id=1001, action="dance")
        assert status == 400
        assert body["description"] == "Bad Request: wrong parameter action in request"


class TestSendMessageDraft:
    async def test_records_drafts_in_private_chats_only(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """sendMessageDraft answers true for a private chat (an empty text is "Thinking…"),
        checks HTML like sendMessage, and refuses groups and a zero draft_id."""
        _, body = await call(session, fake, "sendMessageDraft", chat_id=7, draft_id=5, text="")
        assert body == {"ok": True, "result": True}
        _, body = await call(
            session, fake, "sendMessageDraft", chat_id=7, draft_id=5, text="<b>Hi</b> &amp; yo",
            parse_mode="HTML",
        )  # fmt: skip
        assert body["ok"] is True
        assert [(d["draft_id"], d["visible"]) for d in fake.drafts] == [(5, ""), (5, "Hi & yo")]
        for params in (
            {"chat_id": -100123, "draft_id": 5, "text": "x"},
            {"chat_id": 7, "draft_id": 0, "text": "x"},
            {"chat_id": 7, "draft_id": 5, "text": "<b>x", "parse_mode": "HTML"},
        ):
            status, body = await call(session, fake, "sendMessageDraft", **params)
            assert status == 400, params
        assert len(fake.drafts) == 2
        assert fake.sent == []

    async def test_a_server_before_bot_api_9_5_does_not_know_it(
        self, session: aiohttp.ClientSession
    ) -> None:
        """With `drafts=False` the method is unknown: 404 Not Found, as for any other."""
        async with FakeTelegram(token=TOKEN, drafts=False) as old:
            status, body = await call(session, old, "sendMessageDraft", chat_id=7, draft_id=1)
        assert status == 404
        assert body == {"ok": False, "error_code": 404, "description": "Not Found"}


class TestGetUpdates:
    async def test_returns_pushed_updates_and_offset_confirms(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """Pushed updates come back in order; an offset past them confirms and drops them."""
        first = fake.push_update(private_text_update(text="one"))
        second = fake.push_update(private_text_update(text="two"))
        assert second == first + 1
        _, body = await call(session, fake, "getUpdates", timeout=0)
        assert [u["update_id"] for u in body["result"]] == [first, second]
        assert [u["message"]["text"] for u in body["result"]] == ["one", "two"]
        _, body = await call(session, fake, "getUpdates", offset=second, timeout=0)
        assert [u["update_id"] for u in body["result"]] == [second]
        _, body = await call(session, fake, "getUpdates", offset=second + 1, timeout=0)
        assert body == {"ok": True, "result": []}
        assert fake.pending == []

    async def test_long_poll_wakes_on_push(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A waiting long poll returns as soon as an update is pushed, not at its timeout."""
        started = time.monotonic()
        poll = asyncio.create_task(call(session, fake, "getUpdates", timeout=30))
        await until(lambda: len(fake.calls_to("getUpdates")) == 1)
        update_id = fake.push_update(private_text_update(text="wake up"))
        status, body = await poll
        assert status == 200
        assert [u["update_id"] for u in body["result"]] == [update_id]
        assert time.monotonic() - started < 3

    async def test_long_poll_times_out_empty(self, session: aiohttp.ClientSession) -> None:
        """With nothing pushed, a long poll answers an empty list after its (capped) timeout."""
        async with FakeTelegram(token=TOKEN, max_long_poll=0.2) as fake:
            started = time.monotonic()
            status, body = await call(session, fake, "getUpdates", timeout=30)
        assert (status, body) == (200, {"ok": True, "result": []})
        assert time.monotonic() - started < 3

    async def test_close_wakes_a_long_poll(self, session: aiohttp.ClientSession) -> None:
        """Closing the fake ends a waiting long poll at once instead of at its timeout."""
        fake = FakeTelegram(token=TOKEN, max_long_poll=30)
        await fake.start()
        poll = asyncio.create_task(call(session, fake, "getUpdates", timeout=30))
        await until(lambda: len(fake.calls_to("getUpdates")) == 1)
        started = time.monotonic()
        await fake.close()
        status, body = await poll
        assert (status, body) == (200, {"ok": True, "result": []})
        assert time.monotonic() - started < 3

    async def test_concurrent_poll_terminates_the_first(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A second getUpdates ends the first with 409 and the second gets the update."""
        first = asyncio.create_task(call(session, fake, "getUpdates", timeout=30))
        await until(lambda: len(fake.calls_to("getUpdates")) == 1)
        second = asyncio.create_task(call(session, fake, "getUpdates", timeout=30))
        status, body = await first
        assert status == 409
        assert body == {"ok": False, "error_code": 409, "description": CONFLICT_POLLING}
        update_id = fake.push_update(private_text_update())
        status, body = await second
        assert status == 200
        assert [u["update_id"] for u in body["result"]] == [update_id]

    async def test_allowed_updates_filters_types(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """Updates of types outside allowed_updates are never delivered."""
        fake.push_update(private_text_update(edited=True))
        kept = fake.push_update(private_text_update())
        _, body = await call(session, fake, "getUpdates", allowed_updates=["message"])
        assert [u["update_id"] for u in body["result"]] == [kept]


class TestWebhook:
    async def test_active_webhook_blocks_get_updates(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """With a webhook set getUpdates is a 409; after deleteWebhook polling works again."""
        _, body = await call(
            session,
            fake,
            "setWebhook",
            url="https://bot.example/telegram",
            secret_token="s3cret_-",
            allowed_updates=["message"],
        )
        assert body == {"ok": True, "result": True, "description": "Webhook was set"}
        assert fake.webhook is not None
        assert fake.webhook["secret_token"] == "s3cret_-"
        fake.push_update(private_text_update())
        _, info = await call(session, fake, "getWebhookInfo")
        assert info["result"]["url"] == "https://bot.example/telegram"
        assert info["result"]["pending_update_count"] == 1
        assert info["result"]["allowed_updates"] == ["message"]
        status, body = await call(session, fake, "getUpdates")
        assert status == 409
        assert body == {"ok": False, "error_code": 409, "description": CONFLICT_WEBHOOK}
        _, body = await call(session, fake, "deleteWebhook", drop_pending_updates=True)
        assert body["description"] == "Webhook was deleted"
        assert fake.webhook is None
        status, body = await call(session, fake, "getUpdates")
        assert (status, body["result"]) == (200, [])
        _, info = await call(session, fake, "getWebhookInfo")
        empty = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        assert info["result"] == empty

    async def test_set_webhook_validates_like_telegram(
        self, fake: FakeTelegram, session: aiohttp.ClientSession
    ) -> None:
        """A plain-HTTP URL or a secret with a colon is refused with Telegram's texts."""
        status, body = await call(session, fake, "setWebhook", url="http://bot.example/hook")
        assert status == 400
        assert "An HTTPS URL must be provided" in body["description"]
        status, body = await call(
            session, fake, "setWebhook", url="https://bot.example/hook", secret_token=TOKEN
        )
        assert status == 400
        assert body["description"] == "Bad Request: secret token contains unallowed characters"
        assert fake.webhook is None


class TestUpdateBuilders:
    def test_private_text_update_shape(self) -> None:
        """A private update has a message with a user `from`, a private chat, a date and text."""
        update = private_text_update(text="/start now", update_id=5)
        message = update["message"]
        assert update["update_id"] == 5
        assert message["from"]["is_bot"] is False
        assert message["chat"]["type"] == "private"
        assert message["chat"]["id"] == 1001
        assert message["entities"] == [{"offset": 0, "length": 6, "type": "bot_command"}]
        edited = private_text_update(edited=True)
        assert "message" not in edited
        assert edited["edited_message"]["edit_date"] >= edited["edited_message"]["date"]

    def test_group_mention_entities_count_utf16(self) -> None:
        """A mention entity's offset counts UTF-16 code units, so an emoji before it counts two."""
        update = group_text_update(text="😀 hey @switchboard_test_bot")
        message = update["message"]
        assert message["chat"] == {"id": -100123, "title": "Test group", "type": "supergroup"}
        assert message["entities"] == [{"offset": 7, "length": 21, "type": "mention"}]

    def test_group_mention_bot_and_reply(self) -> None:
        """mention_bot prefixes the handle; reply_to_bot adds a replied message from the bot."""
        update = group_text_update(text="what now?", mention_bot="switchboard_test_bot")
        assert update["message"]["text"] == "@switchboard_test_bot what now?"
        assert update["message"]["entities"][0] == {"offset": 0, "length": 21, "type": "mention"}
        reply = group_text_update(text="and then?", reply_to_bot=True, chat_id=-5)
        replied = reply["message"]["reply_to_message"]
        assert reply["message"]["chat"]["type"] == "group"
        assert replied["from"] == {
            "id": 123456,
            "is_bot": True,
            "first_name": "Switchboard",
            "username": "switchboard_test_bot",
        }
        assert "entities" not in reply["message"]


async def test_get_file_then_download_by_file_path(
    fake: FakeTelegram, session: aiohttp.ClientSession
) -> None:
    """getFile gives a stored file's file_path and size; the file URL serves it (only with the
    bot's token); an unknown file_id is a 400."""
    file_id = fake.add_file(b"jpeg bytes")
    status, body = await call(session, fake, "getFile", file_id=file_id)
    assert status == 200
    result = body["result"]
    assert (result["file_id"], result["file_size"]) == (file_id, len(b"jpeg bytes"))
    assert result["file_path"].startswith("photos/")
    async with session.get(f"{fake.base_url}/file/bot{TOKEN}/{result['file_path']}") as response:
        assert response.status == 200
        assert await response.read() == b"jpeg bytes"
    async with session.get(f"{fake.base_url}/file/bot1:wrong/{result['file_path']}") as response:
        assert response.status == 401
    status, body = await call(session, fake, "getFile", file_id="nope")
    assert (status, body["description"]) == (400, "Bad Request: invalid file_id")
    assert fake.downloads == [result["file_path"]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<foo>hi</foo>", 'Unsupported start tag "foo" at byte offset 0'),
        ("<b>hi", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>hi</i>", 'Unmatched end tag at byte offset 5, expected "</b>", found "</i>"'),
        ("1 < 2", "Unclosed start tag at byte offset 2"),
        ("fish & chips", "Character entity expected at byte offset 5"),
    ],
)
async def test_html_the_bot_api_cannot_parse_is_refused_in_its_shape(
    fake: FakeTelegram, session: aiohttp.ClientSession, text: str, reason: str
) -> None:
    """sendMessage with parse_mode HTML refuses unknown, unbalanced and mismatched tags and a
    bare `<` or `&` with Telegram's 400 "can't parse entities", and sends nothing."""
    status, body = await call(
        session, fake, "sendMessage", chat_id=42, text=text, parse_mode="HTML"
    )
    assert status == 400
    assert body == {
        "ok": False,
        "error_code": 400,
        "description": f"Bad Request: can't parse entities: {reason}",
    }
    assert fake.sent == []


async def test_html_the_bot_api_can_parse_is_sent_with_its_visible_text(
    fake: FakeTelegram, session: aiohttp.ClientSession
) -> None:
    """Known, balanced tags and escaped `&`, `<`, `>` are accepted; the message's visible
    text is the markup's text with the entities decoded."""
    text = '<b>a</b> &amp; <a href="https://e.x/?a=1&amp;b=2">link</a> &lt;ok&gt;'
    status, body = await call(
        session, fake, "sendMessage", chat_id=42, text=text, parse_mode="HTML"
    )
    assert (status, body["ok"]) == (200, True)
    [sent] = fake.sent
    assert sent["visible"] == "a & link <ok>"

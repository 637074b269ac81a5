"""An in-process fake of the Telegram Bot API built on aiohttp.web, in the real shapes.

It answers `{base}/bot{token}/{method}` (getMe, getUpdates with long polling, the webhook methods,
sendMessage, sendMessageDraft, sendChatAction, getFile) with the real envelope and error texts
(an unknown method: 404 "Not Found"; `drafts=False` plays a server older than Bot API 9.5,
which has no sendMessageDraft), plus scripted errors
(sendMessage with `parse_mode: "HTML"` checks the markup as Telegram does, see `parse_html`)
and chats that refuse the bot (`refuse_chat`: blocked, deactivated, not found), and serves files
at `{base}/file/bot{token}/{file_path}` as the Bot API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

from aiohttp import web

MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units
MAX_DOWNLOAD = 20 * 1024 * 1024  # getFile refuses bigger files
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
CONFLICT_POLLING = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CONFLICT_SET_WEBHOOK = "Conflict: terminated by setWebhook request"
CHAT_ACTIONS = frozenset(
    [
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    ]
)
# The tags Telegram's HTML parse mode knows (https://core.telegram.org/bots/api#html-style).
HTML_TAGS = frozenset(
    [
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    ]
)
_TAG = re.compile(
    r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s+[A-Za-z-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>]+))*)\s*>"
)
_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")
# Update types the Bot API leaves out unless asked for by name in allowed_updates.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}\b")
_COMMAND = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{5,32})?\b")
# Fresh message ids for built updates, so two built messages in one chat never share an id.
_built_message_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Call:
    """One request the fake received: method name, merged JSON/form/query params, monotonic time."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class TgReply:
    """A scripted behaviour for one call: wait `delay`, then answer normally (200) or fail."""

    status: int = 200
    description: str | None = None
    error_code: int | None = None  # defaults to `status`
    retry_after: int | None = None  # parameters.retry_after
    delay: float = 0.0
    migrate_to_chat_id: int | None = None  # parameters.migrate_to_chat_id


def too_many_requests(retry_after: int = 1) -> TgReply:
    """Telegram's flood-control 429 with parameters.retry_after."""
    description = f"Too Many Requests: retry after {retry_after}"
    return TgReply(status=429, description=description, retry_after=retry_after)


def bot_blocked() -> TgReply:
    """The 403 Telegram answers when the user has blocked the bot."""
    return TgReply(status=403, description="Forbidden: bot was blocked by the user")


def user_deactivated() -> TgReply:
    """The 403 Telegram answers when the user's account was deleted."""
    return TgReply(status=403, description="Forbidden: user is deactivated")


def chat_not_found() -> TgReply:
    """The 400 Telegram answers for a chat the bot cannot see (never started, or gone)."""
    return TgReply(status=400, description="Bad Request: chat not found")


class _ApiError(Exception):
    """A refusal the real API sends as {"ok": false, "error_code", "description"}."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _bad_request(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


@dataclass(slots=True, eq=False)
class _Poll:
    """A getUpdates request that is waiting; `ended_by` is set when another request ends it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by: str | None = None


Handler = Callable[[dict[str, Any]], Awaitable[tuple[Any, str | None]]]


class FakeTelegram:
    """A Bot API server on 127.0.0.1 for one bot, holding a queue of updates and what was sent."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token",
        username: str = "switchboard_test_bot",
        bot_id: int = 123456,
        first_name: str = "Switchboard",
        max_long_poll: float = 5.0,  # caps getUpdates' `timeout` so a test cannot hang
        drafts: bool = True,  # False: no sendMessageDraft (a server before Bot API 9.5)
    ) -> None:
        self.token = token
        self.username = username
        self.bot_id = bot_id
        self.first_name = first_name
        self.max_long_poll = max_long_poll
        self.calls: list[Call] = []
        self.sent: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.drafts: list[dict[str, Any]] = []  # sendMessageDraft calls that were accepted
        self.menus: list[dict[str, Any]] = []  # setMyCommands calls: {"scope", "commands"}
        self.webhook: dict[str, Any] | None = None
        self.port = 0
        self._updates: deque[dict[str, Any]] = deque()
        self._next_update_id = 1
        self._allowed: frozenset[str] | None = None
        self._poll: _Poll | None = None
        self._scripts: defaultdict[str, deque[TgReply]] = defaultdict(deque)
        self._refused_chats: dict[str, TgReply] = {}  # chat id as text → its refusal
        self._chats: dict[int, dict[str, Any]] = {}
        self._last_message_id: defaultdict[int, int] = defaultdict(int)
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id → (file_path, bytes)
        self.downloads: list[str] = []  # file paths fetched from /file/bot<token>/
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, tuple[str, Handler]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendMessageDraft": self._send_message_draft,
                "sendChatAction": self._send_chat_action,
                "setMyCommands": self._set_my_commands,
                "getFile": self._get_file,
            }.items()
            if drafts or name != "sendMessageDraft"
        }

    @property
    def base_url(self) -> str:
        """The value for TELEGRAM_API_BASE_URL, e.g. `http://127.0.0.1:4321`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot's User object as it appears in `from` of its messages."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    @property
    def me(self) -> dict[str, Any]:
        """The bot's User object as getMe returns it, with the getMe-only fields."""
        return self.bot_user | {
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by an offset."""
        return list(self._updates)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on a free port."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Wake a waiting getUpdates and delayed replies, then stop the server."""
        self._closing.set()
        if self._poll is not None:
            self._poll.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting -----------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an Update for getUpdates (assigning `update_id` if missing); return its id."""
        update = dict(update)
        update_id = update.setdefault("update_id", self._next_update_id)
        self._next_update_id = max(self._next_update_id, update_id + 1)
        self._updates.append(update)
        for message in _messages_in(update):
            chat_id = message["chat"]["id"]
            self._chats.setdefault(chat_id, message["chat"])
            self._remember(chat_id, message)
        if self._poll is not None:
            self._poll.wake.set()
        return int(update_id)

    def script(self, method: str, *replies: TgReply) -> None:
        """Queue behaviours for the next calls of `method`, in order; then it answers normally."""
        self._scripts[method.lower()].extend(replies)

    def refuse_chat(self, chat_id: int, reply: TgReply | None) -> None:
        """Answer every sendMessage and sendChatAction to `chat_id` with `reply` (e.g.
        `bot_blocked()`, as for a person who blocked the bot); None serves the chat again."""
        if reply is None:
            self._refused_chats.pop(str(chat_id), None)
        else:
            self._refused_chats[str(chat_id)] = reply

    def add_file(self, data: bytes, *, folder: str = "photos", ext: str = "jpg") -> str:
        """Store a file the bot may fetch (getFile, then the file URL); return its file_id."""
        file_id = f"AgAC{uuid.uuid4().hex}"
        self.files[file_id] = (f"{folder}/file_{len(self.files)}.{ext}", data)
        return file_id

    def calls_to(self, method: str) -> list[Call]:
        """Recorded calls of one method."""
        return [call for call in self.calls if call.method.lower() == method.lower()]

    # -- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        params, parse_error = await _params(request)
        canonical, handler = self._methods.get(name.lower(), (name, None))
        self.calls.append(Call(canonical, params, time.monotonic()))
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        if handler is None:
            return _error(404, "Not Found")
        if parse_error is not None:
            return _error(400, parse_error)
        if canonical in ("sendMessage", "sendChatAction"):
            refusal = self._refused_chats.get(str(params.get("chat_id")))
            if refusal is not None:
                return _scripted_error(refusal)
        script = self._scripts[canonical.lower()]
        reply = script.popleft() if script else TgReply()
        if reply.delay:
            await self._sleep(reply.delay)
        if reply.status != 200:
            return _scripted_error(reply)
        try:
            result, description = await handler(params)
        except _ApiError as exc:
            return _error(exc.code, exc.description)
        body: dict[str, Any] = {"ok": True, "result": result}
        if description is not None:
            body["description"] = description
        return web.json_response(body)

    async def _download(self, request: web.Request) -> web.Response:
        """A file by its file_path; octet-stream, as the Bot API serves files."""
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["path"]
        self.downloads.append(path)
        for file_path, data in self.files.values():
            if file_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "Not Found")

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, "Not Found")

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # -- methods -------------------------------------------------------------------------------

    async def _get_me(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        return self.me, None

    async def _get_updates(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        if self.webhook is not None:
            raise _ApiError(409, CONFLICT_WEBHOOK)
        offset = _int(params, "offset")
        limit = min(max(_int(params, "limit") or 100, 1), 100)
        timeout = max(_int(params, "timeout") or 0, 0)
        if params.get("allowed_updates") is not None:
            self._allowed = frozenset(_list(params, "allowed_updates")) or None
        if offset is not None:
            self._confirm(offset)
        if self._poll is not None:  # the newer request wins, as on the real server
            self._poll.ended_by = CONFLICT_POLLING
            self._poll.wake.set()
        poll = self._poll = _Poll()
        deadline = time.monotonic() + min(timeout, self.max_long_poll)
        try:
            while True:
                if poll.ended_by is not None:
                    raise _ApiError(409, poll.ended_by)
                updates = self._deliverable(limit)
                remaining = deadline - time.monotonic()
                if updates or remaining <= 0 or self._closing.is_set():
                    return updates, None
                poll.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poll.wake.wait(), remaining)
        finally:
            if self._poll is poll:
                self._poll = None

    async def _set_webhook(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params)
        if not url.startswith("https://"):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        allowed = _list(params, "allowed_updates") if "allowed_updates" in params else None
        same = self.webhook is not None and self.webhook["url"] == url
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": allowed,
            "max_connections": _int(params, "max_connections") or 40,
            "ip_address": params.get("ip_address"),
        }
        if allowed is not None:
            self._allowed = frozenset(allowed) or None
        if _bool(params, "drop_pending_updates"):
            self._updates.clear()
        if self._poll is not None:
            self._poll.ended_by = CONFLICT_SET_WEBHOOK
            self._poll.wake.set()
        return True, "Webhook is already set" if same else "Webhook was set"

    async def _delete_webhook(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        if _bool(params, "drop_pending_updates"):
            self._updates.clear()
        existed, self.webhook = self.webhook is not None, None
        return True, "Webhook was deleted" if existed else "Webhook is already deleted"

    async def _get_webhook_info(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        info: dict[str, Any] = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info, None

    async def _send_message(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        chat_id = _chat_id(params)
        raw = "" if params.get("text") is None else str(params["text"])
        text = raw
        if str(params.get("parse_mode") or "").lower() == "html":
            text = parse_html(raw)  # what the person sees: the limits count that
        if not text.strip():
            raise _bad_request("message text is empty")
        if _utf16_len(text) > MAX_MESSAGE_LENGTH:
            raise _bad_request("message is too long")
        reply_parameters = params.get("reply_parameters")
        if reply_parameters is not None and not isinstance(reply_parameters, dict):
            raise _bad_request("can't parse reply parameters JSON object")
        reply_to = _int(reply_parameters or {}, "message_id")
        if reply_to is None:
            reply_to = _int(params, "reply_to_message_id")
        message_id = self._last_message_id[chat_id] + 1
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.bot_user,
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if reply_to is not None and (replied := self._messages.get((chat_id, reply_to))):
            message["reply_to_message"] = replied
        self._remember(chat_id, message)
        self.sent.append(
            {
                "chat_id": chat_id,
                "text": raw,
                "visible": text,
                "parse_mode": params.get("parse_mode"),
                "reply_to_message_id": reply_to,
                "reply_parameters": reply_parameters,
                "link_preview_options": params.get("link_preview_options"),
                "disable_web_page_preview": params.get("disable_web_page_preview"),
                "message_id": message_id,
                "message": message,
                "at": time.monotonic(),
            }
        )
        return message, None

    async def _send_message_draft(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        """A draft of a message being written, in a private chat: `draft_id` non-zero, text
        0-4096 characters after entities parsing (empty: "Thinking…"); True."""
        chat_id = _chat_id(params)
        if self._chat(chat_id).get("type") != "private":
            raise _bad_request("drafts can be sent only to private chats")
        ident = _int(params, "draft_id")
        if not ident:
            raise _bad_request("draft_id must be non-zero")
        raw = "" if params.get("text") is None else str(params["text"])
        text = raw
        if str(params.get("parse_mode") or "").lower() == "html":
            text = parse_html(raw)
        if _utf16_len(text) > MAX_MESSAGE_LENGTH:
            raise _bad_request("message is too long")
        at = time.monotonic()
        self.drafts.append(
            {"chat_id": chat_id, "draft_id": ident, "text": raw, "visible": text, "at": at}
        )
        return True, None

    async def _get_file(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        file_id = params.get("file_id")
        if not isinstance(file_id, str) or file_id not in self.files:
            raise _ApiError(400, "Bad Request: invalid file_id")
        path, data = self.files[file_id]
        if len(data) > MAX_DOWNLOAD:
            raise _ApiError(400, "Bad Request: file is too big")
        unique = "AQAD" + file_id[-12:]
        return {
            "file_id": file_id,
            "file_unique_id": unique,
            "file_size": len(data),
            "file_path": path,
        }, None

    async def _send_chat_action(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        chat_id = _chat_id(params)
        action = params.get("action")
        if action not in CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        self.actions.append({"chat_id": chat_id, "action": action, "at": time.monotonic()})
        return True, None

    async def _set_my_commands(self, params: dict[str, Any]) -> tuple[Any, str | None]:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad_request("commands must be a list of at most 100 BotCommand")
        for item in commands:
            name = str(item.get("command", "")) if isinstance(item, dict) else ""
            text = str(item.get("description", "")) if isinstance(item, dict) else ""
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name) or not 1 <= len(text) <= 256:
                raise _bad_request("BOT_COMMAND_INVALID")
        scope = params.get("scope") or {"type": "default"}
        self.menus.append({"scope": scope, "commands": commands})
        return True, None

    # -- state ---------------------------------------------------------------------------------

    def _confirm(self, offset: int) -> None:
        """Forget updates before `offset`; a negative offset keeps only the last -offset."""
        if offset < 0:
            while len(self._updates) > -offset:
                self._updates.popleft()
            return
        while self._updates and self._updates[0]["update_id"] < offset:
            self._updates.popleft()

    def _deliverable(self, limit: int) -> list[dict[str, Any]]:
        """The first `limit` queued updates of allowed types; others are dropped, never sent."""
        self._updates = deque(u for u in self._updates if self._is_allowed(_update_type(u)))
        return list(itertools.islice(self._updates, limit))

    def _is_allowed(self, kind: str) -> bool:
        """An explicit allowed_updates list, or every type but the opt-in ones."""
        return kind not in OPT_IN_UPDATES if self._allowed is None else kind in self._allowed

    def _chat(self, chat_id: int) -> dict[str, Any]:
        if chat_id in self._chats:
            return self._chats[chat_id]
        if chat_id > 0:
            return {"id": chat_id, "first_name": "Ada", "type": "private"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "title": "Test group", "type": kind}

    def _remember(self, chat_id: int, message: dict[str, Any]) -> None:
        """Keep a message for reply_to_message and move the chat's message id counter past it."""
        stored = {k: v for k, v in message.items() if k != "reply_to_message"}
        self._messages[(chat_id, message["message_id"])] = stored
        self._last_message_id[chat_id] = max(self._last_message_id[chat_id], message["message_id"])


# -- update builders ---------------------------------------------------------------------------


def private_text_update(
    *,
    chat_id: int = 1001,
    user_id: int = 1001,
    text: str = "hello",
    update_id: int | None = None,
    first_name: str = "Ada",
    username: str | None = "ada",
    edited: bool = False,
    message_id: int | None = None,
) -> dict[str, Any]:
    """A private-chat Update with a text `message` (or `edited_message`)."""
    user = _user(user_id, first_name, username)
    chat = {k: v for k, v in user.items() if k in ("id", "first_name", "username")}
    chat |= {"id": chat_id, "type": "private"}
    message = _message(chat, user, text, message_id, edited=edited)
    return _update(message, update_id, edited=edited)


def _private_update_without_text(
    chat_id: int, user_id: int, update_id: int | None
) -> dict[str, Any]:
    """A private-chat Update whose message has no text yet (a photo or a voice note goes in)."""
    update = private_text_update(chat_id=chat_id, user_id=user_id, update_id=update_id)
    del update["message"]["text"]
    update["message"].pop("entities", None)
    return update


def private_photo_update(
    *,
    sizes: list[tuple[str, int, int, int]],  # (file_id, width, height, file_size), small first
    caption: str | None = None,
    chat_id: int = 1001,
    user_id: int = 1001,
    update_id: int | None = None,
) -> dict[str, Any]:
    """A private-chat Update with a `photo` (its sizes, as Telegram lists them) and a caption."""
    update = _private_update_without_text(chat_id, user_id, update_id)
    message = update["message"]
    message["photo"] = [
        {"file_id": fid, "file_unique_id": "AQAD" + fid[-12:], "file_size": size,
         "width": width, "height": height}
        for fid, width, height, size in sizes
    ]  # fmt: skip
    if caption is not None:
        message["caption"] = caption
    return update


def private_voice_update(
    *,
    file_id: str,
    file_size: int,
    duration: int = 3,
    chat_id: int = 1001,
    user_id: int = 1001,
    update_id: int | None = None,
) -> dict[str, Any]:
    """A private-chat Update with a `voice` note (OGG/Opus, as Telegram records them)."""
    update = _private_update_without_text(chat_id, user_id, update_id)
    message = update["message"]
    message["voice"] = {
        "file_id": file_id, "file_unique_id": "AgAD" + file_id[-12:], "duration": duration,
        "mime_type": "audio/ogg", "file_size": file_size,
    }  # fmt: skip
    return update


def group_text_update(
    *,
    chat_id: int = -100123,
    user_id: int = 1001,
    text: str,
    mention_bot: str | None = None,
    reply_to_bot: bool = False,
    bot_id: int = 123456,
    bot_username: str = "switchboard_test_bot",
    update_id: int | None = None,
    first_name: str = "Ada",
    username: str | None = "ada",
    title: str = "Test group",
    edited: bool = False,
    message_id: int | None = None,
) -> dict[str, Any]:
    """A group Update (supergroup when the id starts -100); `mention_bot` prefixes "@name "."""
    if mention_bot is not None:
        handle = "@" + mention_bot.lstrip("@")
        if handle.lower() not in text.lower():
            text = f"{handle} {text}"
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    chat = {"id": chat_id, "title": title, "type": kind}
    message = _message(chat, _user(user_id, first_name, username), text, message_id, edited=edited)
    if reply_to_bot:
        bot = {"id": bot_id, "is_bot": True, "first_name": "Switchboard", "username": bot_username}
        earlier = message["message_id"] - 1
        message["reply_to_message"] = {
            "message_id": earlier,
            "from": bot,
            "chat": chat,
            "date": message["date"] - 60,
            "text": "An earlier answer.",
        }
    return _update(message, update_id, edited=edited)


def _user(user_id: int, first_name: str, username: str | None) -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username is not None:
        user["username"] = username
    return user | {"language_code": "en"}


def _message(
    chat: dict[str, Any],
    user: dict[str, Any],
    text: str,
    message_id: int | None,
    *,
    edited: bool,
) -> dict[str, Any]:
    now = int(time.time())
    message: dict[str, Any] = {
        "message_id": next(_built_message_ids) if message_id is None else message_id,
        "from": user,
        "chat": chat,
        "date": now - 5 if edited else now,
    }
    if edited:
        message["edit_date"] = now
    message["text"] = text
    if entities := _entities(text):
        message["entities"] = entities
    return message


def _update(message: dict[str, Any], update_id: int | None, *, edited: bool) -> dict[str, Any]:
    update: dict[str, Any] = {} if update_id is None else {"update_id": update_id}
    update["edited_message" if edited else "message"] = message
    return update


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command (at the start) and mention entities, offsets in UTF-16 code units."""
    found = []
    if command := _COMMAND.match(text):
        found.append(("bot_command", command.start(), command.end()))
    found.extend(("mention", m.start(), m.end()) for m in _MENTION.finditer(text))
    return [
        {"offset": _utf16_len(text[:start]), "length": _utf16_len(text[start:end]), "type": kind}
        for kind, start, end in sorted(found, key=lambda entity: entity[1])
    ]


# -- helpers -----------------------------------------------------------------------------------


def parse_html(text: str) -> str:
    """The visible text of a sendMessage in HTML parse mode; _ApiError 400 "can't parse
    entities" for an unknown tag, an unbalanced one, or a bare `<` or `&` (Telegram itself
    lets a bare `&` through as text: the fake is stricter, so a stray one shows in tests)."""
    visible: list[str] = []
    stack: list[str] = []
    i = 0

    def refuse(reason: str) -> _ApiError:
        return _bad_request(f"can't parse entities: {reason}")

    while i < len(text):
        offset = len(text[:i].encode())
        if text[i] == "<":
            tag = _TAG.match(text, i)
            if tag is None:
                raise refuse(f"Unclosed start tag at byte offset {offset}")
            closing, name = tag.group(1) == "/", tag.group(2).lower()
            if closing:
                if not stack:
                    raise refuse(f"Unexpected end tag at byte offset {offset}")
                if stack[-1] != name:
                    raise refuse(
                        f'Unmatched end tag at byte offset {offset}, expected "</{stack[-1]}>", '
                        f'found "</{name}>"'
                    )
                stack.pop()
            elif name not in HTML_TAGS:
                raise refuse(f'Unsupported start tag "{name}" at byte offset {offset}')
            else:
                stack.append(name)
            i = tag.end()
        elif text[i] == "&":
            entity = _ENTITY.match(text, i)
            if entity is None:
                raise refuse(f"Character entity expected at byte offset {offset}")
            visible.append(html.unescape(entity.group()))
            i = entity.end()
        else:
            visible.append(text[i])
            i += 1
    if stack:
        raise refuse(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(visible)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _update_type(update: dict[str, Any]) -> str:
    return next((key for key in update if key != "update_id"), "")


def _messages_in(update: dict[str, Any]) -> list[dict[str, Any]]:
    kinds = ("message", "edited_message", "channel_post", "edited_channel_post")
    return [
        update[kind]
        for kind in kinds
        if isinstance(update.get(kind), dict) and "chat" in update[kind]
    ]


async def _params(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """Query parameters merged with a JSON, urlencoded or multipart body, as the Bot API does."""
    params: dict[str, Any] = {k: _maybe_json(v) for k, v in request.query.items()}
    if not request.can_read_body:
        return params, None
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return params, "Bad Request: can't parse JSON object"
        if not isinstance(body, dict):
            return params, "Bad Request: can't parse JSON object"
        return params | body, None
    form = await request.post()
    params |= {k: _maybe_json(v) for k, v in form.items() if isinstance(v, str)}
    return params, None


def _maybe_json(value: str) -> Any:
    """Form and query values carry arrays and objects as JSON-serialized strings."""
    if value[:1] in ("[", "{"):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _int(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _bad_request(f"wrong parameter {name} in request")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"wrong parameter {name} in request") from None


def _bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def _list(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if not isinstance(value, list):
        raise _bad_request(f"can't parse {name} JSON array")
    return [str(item) for item in value]


def _chat_id(params: dict[str, Any]) -> int:
    value = params.get("chat_id")
    if value is None or value == "":
        raise _bad_request("chat_id is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request("chat not found") from None


def _error(code: int, description: str) -> web.Response:
    body = {"ok": False, "error_code": code, "description": description}
    return web.json_response(body, status=code)


def _scripted_error(reply: TgReply) -> web.Response:
    parameters = {
        key: value
        for key, value in (
            ("retry_after", reply.retry_after),
            ("migrate_to_chat_id", reply.migrate_to_chat_id),
        )
        if value is not None
    }
    description = reply.description or HTTPStatus(reply.status).phrase
    body: dict[str, Any] = {
        "ok": False,
        "error_code": reply.error_code or reply.status,
        "description": description,
    }
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=reply.status)


__all__ = [
    "CONFLICT_POLLING",
    "CONFLICT_SET_WEBHOOK",
    "CONFLICT_WEBHOOK",
    "MAX_MESSAGE_LENGTH",
    "Call",
    "FakeTelegram",
    "TgReply",
    "bot_blocked",
    "chat_not_found",
    "group_text_update",
    "private_photo_update",
    "private_text_update",
    "private_voice_update",
    "too_many_requests",
    "user_deactivated",
]

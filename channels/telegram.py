"""Telegram through the Bot API (plain aiohttp): webhooks with a secret, long polling, replies.

Webhook requests are checked against TELEGRAM_WEBHOOK_SECRET in constant time. Whatever a
person sent in a `message` or `edited_message` (read by channels.telegram_parse) becomes an
InboundMessage (one conversation per chat; in groups only when the bot is mentioned or
replied to, unless `requireMention: false`). Replies go out
with sendMessage as HTML (the model's Markdown rendered by channels.markdown; a chunk the
API cannot parse goes once more as plain text) in chunks within `textChunkLimit` (UTF-16
units of visible text, as Telegram counts),
paced per chat, one attempt per chunk from the outbox (which retries 429 after
`retry_after`, 5xx and network errors, and never a chat that refuses the bot: blocked,
deactivated, not found); other Bot API calls retry a few times themselves. A private chat
sees the reply as it is written (channels.telegram_draft: sendMessageDraft previews).
Webhooks, polling and sending share the Bot API client and its error translation, so they
stay in one module (a little over 400 lines).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bot.config import TelegramConfig
from bot.errors import (
    BadPayload,
    ChannelNotConfigured,
    ChannelSendError,
    MediaRejected,
    RecipientUnreachable,
    WebhookSecretError,
)
from bot.messages import Attachment, InboundMessage, OutboundMessage
from bot.settings import Settings
from channels import markdown, telegram_parse
from channels.base import Ack, EventLog, RawRequest, download
from channels.telegram_draft import Drafts, TelegramDraft, draft_id
from channels.telegram_parse import _dict, _is_int, _size, _utf8

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message"]
RETRY_STATUSES = {429, 500, 502, 503, 504}
# A 400 that means the chat is out of the bot's reach (every 403 of a send means that too:
# "Forbidden: bot was blocked by the user", "Forbidden: user is deactivated", kicked…).
UNREACHABLE_400 = ("Bad Request: chat not found", "Bad Request: user not found")
PARSE_REFUSED = "can't parse entities"  # our HTML refused: the chunk goes again as plain text
SEND_METHODS = frozenset({"sendMessage", "sendChatAction"})
MAX_RETRY_AFTER = 60.0
MAX_DATE = 2**40  # a message `date` (Unix seconds) beyond this is not a date
MAX_PACED_CHATS = 10_000  # chats the pacer remembers at once, however short its window


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram measures message text."""
    return len(text.encode("utf-16-le")) // 2


class ChatPacer:
    """At most one message per `seconds` to each chat (Telegram's advice), in bounded memory.

    Only chats sent to within the last `seconds` are remembered (at most `max_chats`, the
    oldest forgotten first), so the map stays small however many chats the bot has answered.
    """

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_chats: int = MAX_PACED_CHATS,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self.max_chats = max_chats
        self._last: OrderedDict[str, float] = OrderedDict()  # oldest send first

    def __len__(self) -> int:
        return len(self._last)

    def wait(self, chat_id: str) -> float:
        """Seconds to wait before the next message to `chat_id` may go out (0: none)."""
        self._forget()
        last = self._last.get(chat_id)
        return 0.0 if last is None else max(0.0, last + self.seconds - self.clock())

    def sent(self, chat_id: str) -> None:
        """A message to `chat_id` went out now."""
        self._last[chat_id] = self.clock()
        self._last.move_to_end(chat_id)
        self._forget()

    def _forget(self) -> None:
        """Drop the chats whose window has passed, and the oldest beyond `max_chats`."""
        now = self.clock()
        while self._last:
            chat_id, last = next(iter(self._last.items()))
            if last + self.seconds > now and len(self._last) <= self.max_chats:
                return
            del self._last[chat_id]


class TelegramError(ChannelSendError):
    """The Bot API answered `ok: false` (or could not be reached)."""


class TelegramChannel:
    """One Telegram bot: its webhooks, its updates and its replies."""

    name = "telegram"
    ack = Ack(content_type="application/json", body=b"{}")

    def __init__(
        self,
        *,
        settings: Settings,
        config: TelegramConfig,
        http: aiohttp.ClientSession,
        log: EventLog,
        attempts: int = 4,
        backoff_seconds: float = 0.5,
        pace_seconds: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.http = http
        self.log = log
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.pace_seconds = pace_seconds
        self.sleep = sleep
        token = settings.telegram_bot_token
        self.token = token.get_secret_value() if token else None
        secret = settings.telegram_webhook_secret
        self.secret = secret.get_secret_value().encode() if secret else None
        self.base_url = settings.telegram_api_base_url.rstrip("/")
        self.public_url = settings.bot_public_url
        self.me: dict[str, Any] | None = None
        self.pacer = ChatPacer(pace_seconds, clock=clock)
        self.drafts = Drafts(
            self,
            interval_seconds=config.draft_interval_ms / 1000,
            chunk_limit=config.text_chunk_limit,
            log=log,
            clock=clock,
            sleep=sleep,
        )

    def startup_problems(self) -> list[str]:
        """What stops webhook mode from starting (it never runs without a secret)."""
        if self.config.mode == "webhook" and self.secret is None:
            return [
                "TELEGRAM_WEBHOOK_SECRET is not set: webhook mode refuses to start without it "
                "(set it, then `bot telegram set-webhook`; or use channels.telegram.mode: polling)"
            ]
        return []

    def startup_warnings(self) -> list[str]:
        if self.config.dm_policy == "open":
            return ["channels.telegram.dmPolicy is open: anyone who finds the bot can use it"]
        return []

    # -- the Bot API ---------------------------------------------------------------------------

    async def call(
        self, method: str, *, http_seconds: float = 30, attempts: int | None = None, **params: Any
    ) -> Any:
        """Call a Bot API method; retry 429, 5xx and network errors (up to `attempts`, the
        channel's default if None); return `result`."""
        if self.token is None:
            raise TelegramError("TELEGRAM_BOT_TOKEN is not set", retryable=False)
        url = f"{self.base_url}/bot{self.token}/{method}"
        body = {k: v for k, v in params.items() if v is not None}
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            delay = self.backoff_seconds * 2 ** (attempt - 1)
            error: ChannelSendError
            try:
                async with self.http.post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=http_seconds)
                ) as response:
                    answer = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = TelegramError(
                    f"{method}: cannot reach the Bot API ({type(exc).__name__})", retryable=True
                )
            else:
                if isinstance(answer, dict) and answer.get("ok"):
                    return answer.get("result")
                answer = answer if isinstance(answer, dict) else {}
                description = str(answer.get("description") or f"HTTP {status}")
                error = TelegramError(
                    f"{method}: {description}", retryable=status in RETRY_STATUSES, status=status
                )
                if method in SEND_METHODS and (
                    status == 403 or (status == 400 and description.startswith(UNREACHABLE_400))
                ):
                    error = RecipientUnreachable(f"{method}: {description}", code=status)
                retry_after = (answer.get("parameters") or {}).get("retry_after")
                if status == 429 and isinstance(retry_after, int | float):
                    delay = min(float(retry_after), MAX_RETRY_AFTER)
                    error.retry_after = float(retry_after)
            if not error.retryable or attempt == attempts:
                raise error
            self.log.warning("send_retry", channel=self.name, error=str(error), ms=delay * 1000)
            await self.sleep(delay)
        raise AssertionError("unreachable")

    async def bot_user(self) -> dict[str, Any]:
        """The bot's own User (getMe), fetched once: its username gates group messages."""
        if self.me is None:
            self.me = await self.call("getMe")
        return self.me

    # -- inbound -------------------------------------------------------------------------------

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        """A webhook update, once its secret token matches."""
        if self.secret is None:
            raise ChannelNotConfigured("TELEGRAM_WEBHOOK_SECRET is not set")
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.secret):
            raise WebhookSecretError(f"wrong or missing {SECRET_HEADER}")
        try:
            # Strict UTF-8 first: json.loads(bytes) would let UTF-8-encoded surrogates through.
            update = json.loads(request.body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadPayload("the body is not UTF-8 JSON (or is nested too deeply)") from exc
        if not isinstance(update, dict) or not _is_int(update.get("update_id")):
            raise BadPayload("not a Telegram Update: update_id missing")
        return self._messages(update)

    def messages_in(self, update: dict[str, Any]) -> list[InboundMessage]:
        """The text messages of one polled update that the bot should answer (often none);
        a malformed one is logged and skipped, so it cannot hold up the updates after it."""
        try:
            return self._messages(update)
        except BadPayload as exc:
            self.log.warning(
                "message_rejected", channel=self.name, reason="BadPayload", error=str(exc)
            )
            return []

    def _messages(self, update: dict[str, Any]) -> list[InboundMessage]:
        """The messages of one update that the bot should answer (often none): whatever a
        person sent, read by channels.telegram_parse; BadPayload when such a message lacks
        integer chat and sender ids or holds text that is no UTF-8."""
        message = update.get("message") or update.get("edited_message")
        if not isinstance(message, dict):
            return []  # an update kind we do not handle
        found = telegram_parse.content(message)
        if found is None:
            return []  # nothing a person sent (a service message), or a bad text
        chat, sender = message.get("chat"), message.get("from")
        if sender is None:
            return []  # no person to answer (Telegram omits `from` only for channel posts)
        if not (isinstance(chat, dict) and _is_int(chat.get("id"))):
            raise BadPayload("a Telegram message needs chat.id, an integer")
        if not (isinstance(sender, dict) and _is_int(sender.get("id"))):
            raise BadPayload("a Telegram message needs from.id, an integer")
        text = found.text()
        chat_type = _utf8(chat["type"]) if isinstance(chat.get("type"), str) else ""
        if chat_type in ("group", "supergroup") and self.config.require_mention:
            addressed = self._addressed_text(message, found.typed)
            if addressed is None:
                return []
            text = found.text(addressed)
        date, message_id = message.get("date"), message.get("message_id")
        name = sender.get("first_name")
        return [
            InboundMessage(
                channel=self.name,
                conversation=f"telegram:{chat['id']}",
                sender=f"telegram:{sender['id']}",
                text=text,
                platform_id=str(update["update_id"]),
                ts=float(date) if _is_int(date) and 0 < date < MAX_DATE else time.time(),
                sender_name=_utf8(name) if isinstance(name, str) else None,
                media=found.media,
                meta={
                    "chat_type": chat_type,
                    "message_id": str(message_id) if _is_int(message_id) else "",
                    **found.meta,
                },
                reply=telegram_parse.reply(message, bot_id=(self.me or {}).get("id")),
                forwarded_from=telegram_parse.forwarded_from(message),
            )
        ]

    def _addressed_text(self, message: dict[str, Any], text: str) -> str | None:
        """In a group: the text (or caption) without the bot's @mention, or None if not for
        the bot."""
        me = self.me or {}
        username, bot_id = me.get("username"), me.get("id")
        replied = _dict(_dict(message.get("reply_to_message")).get("from"))
        if username:
            mention = re.compile(rf"@{re.escape(username)}\b", re.IGNORECASE)
            if mention.search(text):
                return mention.sub("", text).strip() or text
        if bot_id is not None and replied.get("id") == bot_id:
            return text
        return None

    async def prepare_polling(self) -> None:
        """Polling and a webhook exclude each other: delete the webhook, learn who we are."""
        await self.call("deleteWebhook", drop_pending_updates=False)
        await self.bot_user()

    async def fetch(self, offset: int | None, poll_seconds: float) -> list[dict[str, Any]]:
        """Long-poll getUpdates for updates from `offset` (confirming the ones before it)."""
        result = await self.call(
            "getUpdates",
            http_seconds=poll_seconds + 10,
            offset=offset,
            timeout=int(poll_seconds),
            allowed_updates=ALLOWED_UPDATES,
        )
        return list(result or [])

    # -- outbound ------------------------------------------------------------------------------

    def chunks(self, message: OutboundMessage) -> list[str]:
        """The reply's Markdown as Telegram HTML messages, in order, each within
        `textChunkLimit` UTF-16 units of visible text (channels.markdown)."""
        return markdown.chunks(message.text, markdown.TELEGRAM, self.config.text_chunk_limit)

    async def send(self, message: OutboundMessage) -> None:
        """Send the reply in order, one sendMessage per chunk, about one a second per chat,
        retrying each a few times (the worker's outbox uses `send_chunk`)."""
        for chunk in self.chunks(message):
            await self._send_chunk(message, chunk, attempts=None)

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        """One sendMessage for one chunk, paced per chat; TelegramError says whether to retry."""
        await self._send_chunk(message, chunk, attempts=1)

    async def _send_chunk(
        self, message: OutboundMessage, chunk: str, *, attempts: int | None
    ) -> None:
        chat_id = message.conversation.removeprefix("telegram:")
        wait = self.pacer.wait(chat_id)
        if wait > 0:
            await self.sleep(wait)
        try:
            try:
                await self.call(
                    "sendMessage", attempts=attempts, chat_id=chat_id, text=chunk, parse_mode="HTML"
                )
            except TelegramError as exc:
                if exc.status != 400 or PARSE_REFUSED not in str(exc):
                    raise
                self.log.warning("format_fallback", channel=self.name, error=str(exc))
                plain = markdown.visible_text(chunk)
                await self.call("sendMessage", attempts=attempts, chat_id=chat_id, text=plain)
        finally:
            self.pacer.sent(chat_id)

    typing_every = 4.0  # "typing…" lasts about 5 s on the person's screen

    async def typing(self, message: InboundMessage) -> None:
        """Show "typing…" in the message's chat, unless its reply shows as a draft already."""
        chat_id = message.conversation.removeprefix("telegram:")
        if not self.drafts.showing(chat_id):
            await self.call("sendChatAction", chat_id=chat_id, action="typing")

    def preview(self, message: InboundMessage) -> TelegramDraft | None:
        """The reply as it is written, in a private chat (`streaming: "draft"`); None in
        groups, with streaming off, or when this Bot API server has no drafts."""
        if self.config.streaming != "draft" or message.meta.get("chat_type") != "private":
            return None
        chat_id = message.conversation.removeprefix("telegram:")
        return self.drafts.open(chat_id, draft_id(message.conversation, message.platform_id))


class TelegramMediaFetcher:
    """Telegram attachments: `getFile`, then `{api}/file/bot{token}/{file_path}`."""

    def __init__(self, channel: TelegramChannel) -> None:
        self.channel = channel

    async def fetch_media(
        self, message: InboundMessage, index: int, *, max_bytes: int
    ) -> Attachment:
        """The `index`th attachment of a Telegram message, at most `max_bytes`."""
        if index >= len(message.media):
            raise MediaRejected("the message has no such attachment", reason="fetch_failed")
        size = message.meta.get(f"size{index}", "")
        if size.isdigit() and int(size) > max_bytes:
            raise MediaRejected(f"the file is over {max_bytes} bytes", reason="too_large")
        try:
            found = await self.channel.call("getFile", file_id=message.media[index])
        except TelegramError as exc:
            raise MediaRejected(str(exc), reason="fetch_failed") from exc
        path = _dict(found).get("file_path")
        if not isinstance(path, str) or not path:
            raise MediaRejected("getFile gave no file_path", reason="fetch_failed")
        if _size(_dict(found)) > max_bytes:
            raise MediaRejected(f"the file is over {max_bytes} bytes", reason="too_large")
        return await download(
            self.channel.http,
            f"{self.channel.base_url}/file/bot{self.channel.token}/{path}",
            max_bytes=max_bytes,
            declared_type=message.meta.get(f"type{index}", ""),
        )

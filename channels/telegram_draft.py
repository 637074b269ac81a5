"""Telegram drafts: a private chat sees the reply as it is written (sendMessageDraft, Bot API 9.5).

A `TelegramDraft` is one turn's preview (bot.llm.preview.TurnPreview). It keeps the latest
final text and a background task sends it as a draft, at most one per `draftIntervalMs` per
chat, so the model's stream never waits on the Bot API. A draft is a preview, never a message:
the reply is sent once, from the outbox, after the draft is closed (a draft still in flight is
waited for briefly, so none lands after the reply). One `draft_id` per reply, derived from the
message it answers, so a turn resumed by another worker goes on animating the same draft.

`Drafts` is what a channel's drafts share in one process: whether the Bot API knows the method
(a self-hosted or older server answers 404: drafts are off until the process restarts, after
one failed try however many turns asked at once), per-chat pacing, and a 429's pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bot.errors import ChannelSendError
from channels import markdown
from channels.base import EventLog

DRAFT_METHOD = "sendMessageDraft"
DRAFT_HTTP_SECONDS = 5.0  # one draft call; a slower one is abandoned (the reply does not wait)
CLOSE_WAIT = 1.0  # how long the reply waits for a draft still in flight
PARSE_REFUSED = "can't parse entities"


class DraftApi(Protocol):
    """What a draft needs of its channel: a Bot API call (bot.channels.telegram)."""

    async def call(
        self, method: str, *, http_seconds: float = 30, attempts: int | None = None, **params: Any
    ) -> Any: ...


class Support(enum.StrEnum):
    """Whether this process's Bot API server knows sendMessageDraft."""

    UNKNOWN = "unknown"
    PROBING = "probing"  # one draft is finding out; the others wait for its answer
    YES = "yes"
    NO = "no"


class Outcome(enum.Enum):
    """What became of one draft call."""

    SHOWN = "shown"
    AGAIN = "again"  # a 429: the same text goes again after its pause
    STOP = "stop"  # no more drafts in this turn


def draft_id(conversation: str, platform_id: str) -> int:
    """A non-zero 31-bit id for the reply to one message: the same for every worker."""
    digest = hashlib.blake2b(f"{conversation}\0{platform_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF or 1


class Drafts:
    """The drafts of one channel in one process: support, pacing and pauses per chat."""

    def __init__(
        self,
        api: DraftApi,
        *,
        interval_seconds: float,
        chunk_limit: int,
        log: EventLog,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.interval = interval_seconds
        self.chunk_limit = chunk_limit
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.support = Support.UNKNOWN
        self.last: dict[str, float] = {}  # chat → when its last draft went out (live chats)
        self.paused_until: dict[str, float] = {}  # chat → end of a 429's retry_after
        self.live: dict[str, TelegramDraft] = {}  # chat → the draft of its turn now running

    def open(self, chat_id: str, ident: int) -> TelegramDraft | None:
        """The draft of a turn in a private chat, or None when this server has no drafts."""
        if self.support is Support.NO:
            return None
        draft = TelegramDraft(self, chat_id, ident)
        self.live[chat_id] = draft
        return draft

    def showing(self, chat_id: str) -> bool:
        """Whether the chat's turn shows a draft now (so "typing…" would add nothing)."""
        draft = self.live.get(chat_id)
        return draft is not None and draft.showing

    def wait(self, chat_id: str) -> float:
        """Seconds before the chat's next draft may go out: its interval, or a 429's pause."""
        now = self.clock()
        due = max(self.last.get(chat_id, 0.0) + self.interval, self.paused_until.get(chat_id, 0.0))
        return max(0.0, due - now)

    def closed(self, draft: TelegramDraft) -> None:
        """A turn's draft is over: forget its chat unless another turn's draft took it."""
        if self.live.get(draft.chat_id) is draft:
            del self.live[draft.chat_id]
            if self.wait(draft.chat_id) == 0:
                self.last.pop(draft.chat_id, None)
                self.paused_until.pop(draft.chat_id, None)


class TelegramDraft:
    """One turn's reply as it is written, in a private chat (a bot.llm.preview.TurnPreview)."""

    def __init__(self, drafts: Drafts, chat_id: str, ident: int) -> None:
        self.drafts = drafts
        self.chat_id = chat_id
        self.ident = ident
        self.latest: str | None = None  # the final text to show next ("": "Thinking…")
        self.shown: str | None = None  # what the last draft that went out showed
        self.sending = False  # a draft call is in flight
        self.stopped = False  # closed, or drafts failed for this turn
        self.task: asyncio.Task[None] | None = None

    @property
    def showing(self) -> bool:
        return self.shown is not None and not self.stopped

    async def text(self, so_far: str) -> None:
        self._want(so_far)

    async def thinking(self) -> None:
        """Telegram's "Thinking…" (an empty draft), unless text is already shown."""
        if self.latest is None:
            self._want("")

    async def reset(self) -> None:
        """The words shown are void: back to "Thinking…" until the next model writes."""
        if self.latest is not None:
            self._want("")

    async def close(self) -> None:
        """No more drafts; one in flight is waited for (briefly) so it never lands after the
        reply, which the outbox sends next."""
        self.stopped = True
        task, self.task = self.task, None
        if task is not None and not task.done():
            if self.sending:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.drafts.closed(self)

    def _want(self, text: str) -> None:
        """Show `text` next; start the sender if it is not running."""
        if self.stopped or self.drafts.support is Support.NO:
            return
        self.latest = text
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Send the latest text as a draft whenever the chat's pacing allows, until shown."""
        drafts = self.drafts
        while not self.stopped and self.latest is not None and self.latest != self.shown:
            wait = drafts.wait(self.chat_id)
            if drafts.support is Support.PROBING:
                wait = max(wait, drafts.interval)  # another turn is finding out: ask again later
            if wait > 0:
                await drafts.sleep(wait)
                continue
            if drafts.support is Support.NO:
                return
            text = self.latest
            if drafts.support is Support.UNKNOWN:
                drafts.support = Support.PROBING
            self.sending = True
            try:
                outcome = await self._send(text)
            finally:
                self.sending = False
                if drafts.support is Support.PROBING:  # an error that says nothing either way
                    drafts.support = Support.UNKNOWN
            if outcome is Outcome.STOP:
                self.stopped = True
                return
            if outcome is Outcome.SHOWN:
                self.shown = text

    async def _send(self, text: str) -> Outcome:
        """One draft of `text` (its last chunk as HTML; "" shows "Thinking…"). A 429 pauses
        the chat's drafts (the text is tried again after it); a server without the method,
        or any other refusal, stops them."""
        drafts = self.drafts
        html = markdown.chunks(text, markdown.TELEGRAM, drafts.chunk_limit)[-1] if text else ""
        try:
            try:
                await self._call(html, parse_mode="HTML" if html else None)
            except ChannelSendError as exc:
                if exc.status != 400 or PARSE_REFUSED not in str(exc):
                    raise
                await self._call(markdown.visible_text(html), parse_mode=None)
        except ChannelSendError as exc:
            drafts.last[self.chat_id] = drafts.clock()
            if exc.status == 429:
                pause = exc.retry_after if exc.retry_after is not None else drafts.interval
                drafts.paused_until[self.chat_id] = drafts.clock() + pause
                drafts.log.info(
                    "draft_paused", **self._where, ms=round(pause * 1000), error=str(exc)
                )
                return Outcome.AGAIN
            if exc.status == 404:
                drafts.support = Support.NO
                drafts.log.warning(
                    "drafts_unsupported",
                    **self._where,
                    error=str(exc),
                    hint="this Bot API server has no sendMessageDraft (Bot API 9.5+): "
                    "replies show typing only until the gateway restarts",
                )
            else:
                drafts.log.warning("preview_failed", **self._where, call="draft", error=str(exc))
            return Outcome.STOP
        drafts.support = Support.YES
        drafts.last[self.chat_id] = drafts.clock()
        return Outcome.SHOWN

    @property
    def _where(self) -> dict[str, str]:
        return {"channel": "telegram", "conversation": f"telegram:{self.chat_id}"}

    async def _call(self, text: str, *, parse_mode: str | None) -> None:
        await self.drafts.api.call(
            DRAFT_METHOD,
            http_seconds=DRAFT_HTTP_SECONDS,
            attempts=1,
            chat_id=self.chat_id,
            draft_id=self.ident,
            text=text,
            parse_mode=parse_mode,
        )

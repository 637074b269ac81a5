"""What the model reads of one message a person sent: bracketed lines saying it was forwarded
and what it replies to, then its text (with its attachments' notes).

A reply the platform quoted (Telegram) shows that quote; one it only names by id (WhatsApp's
OriginalRepliedMessageSid) is looked up in the conversation's memory, whose turns remember
the ids of the messages they hold; one found nowhere is "[reply to an earlier message]".

The bot's own messages get their ids only from the platform, after the outbox sent them, and
memory is append-only (the model's prompt cache must keep hitting), so no turn holds them. A
reply to the bot that memory does not resolve asks the message's channel for the text
(`ReplyFetcher`: WhatsApp reads Twilio's Message resource), after the access check, within
REPLY_FETCH_SECONDS; refused, missing or slow, it says "[reply to your earlier message]" and
the turn goes on. This costs nothing in a turn without such a reply (no Redis command, no
request), where recording each sent chunk's id beside its assistant turn in the outbox would
add to every send and still need a read here; and it quotes the very chunk replied to. A
reply to the person's own message is never fetched: memory is its truth (after /new, too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from bot.errors import ReplyUnavailable
from bot.logs import Logger
from bot.messages import InboundMessage, Reply, Turn

QUOTE_CHARS = 300  # an earlier message, as quoted in a reply
REPLY_FETCH_SECONDS = 5.0  # the most a turn waits for a replied-to message's text
_SPACE = re.compile(r"\s+")


class ReplyFetcher(Protocol):
    """A channel's way to the text of one of the bot's messages that a reply names by id (it
    holds the credentials); ReplyUnavailable when the platform will not give it."""

    async def replied_text(self, message: InboundMessage) -> str: ...


def _quoted(text: str) -> str:
    """`text` on one line, cut to QUOTE_CHARS, in guillemets."""
    flat = _SPACE.sub(" ", text).strip()
    if len(flat) > QUOTE_CHARS:
        flat = flat[: QUOTE_CHARS - 1].rstrip() + "…"
    return f"«{flat}»"


def _found(reply: Reply, history: Sequence[Turn]) -> Turn | None:
    """The remembered turn holding the replied-to message, newest first."""
    if not reply.ref:
        return None
    return next((t for t in reversed(history) if reply.ref in t.refs), None)


def reply_line(reply: Reply, history: Sequence[Turn]) -> str:
    """[reply to your earlier message: «…»], [reply to Ada: «…»], [reply to an earlier
    message]: what the model needs to know about the message replied to."""
    found = None if reply.quote else _found(reply, history)
    quote = reply.quote or (found.text if found is not None else "")
    if reply.to_bot or (found is not None and found.role == "assistant"):
        whose = "your earlier message"
    elif reply.author:
        whose = reply.author
    elif found is not None:
        whose = "their earlier message"
    else:
        whose = "an earlier message"
    return f"[reply to {whose}: {_quoted(quote)}]" if quote.strip() else f"[reply to {whose}]"


def _unresolved(message: InboundMessage, history: Sequence[Turn]) -> bool:
    """A reply to the bot that names a message neither the platform quoted nor memory holds."""
    reply = message.reply
    return (
        reply is not None
        and reply.to_bot
        and bool(reply.ref)
        and not reply.quote
        and _found(reply, history) is None
    )


async def _with_quote(
    message: InboundMessage, fetcher: ReplyFetcher, log: Logger, seconds: float
) -> InboundMessage:
    """`message` with its reply's quote from its channel; unchanged when it cannot be had."""
    assert message.reply is not None
    try:
        async with asyncio.timeout(seconds):
            text = await fetcher.replied_text(message)
    except (ReplyUnavailable, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, ReplyUnavailable) else "timeout"
        error = str(exc) or f"no answer within {seconds:g} s"
        log.info(
            "reply_unquoted",
            channel=message.channel,
            conversation=message.conversation,
            msg_id=message.platform_id,
            reason=reason,
            error=error,
        )
        return message
    return dataclasses.replace(message, reply=dataclasses.replace(message.reply, quote=text))


async def quote_replies(
    batch: Sequence[InboundMessage],
    history: Sequence[Turn],
    fetchers: Mapping[str, ReplyFetcher],
    *,
    log: Logger,
    seconds: float = REPLY_FETCH_SECONDS,
) -> list[InboundMessage]:
    """The batch, each reply to a bot message memory lacks quoted by its channel (at once,
    within `seconds`); a batch with no such reply comes back as it is, with no request."""
    wanted = [i for i, m in enumerate(batch) if m.channel in fetchers and _unresolved(m, history)]
    messages = list(batch)
    if not wanted:
        return messages
    quoted = await asyncio.gather(
        *(_with_quote(messages[i], fetchers[messages[i].channel], log, seconds) for i in wanted)
    )
    for i, message in zip(wanted, quoted, strict=True):
        messages[i] = message
    return messages


def context_lines(message: InboundMessage, history: Sequence[Turn]) -> list[str]:
    """The bracketed lines that go before the message's text."""
    lines = []
    if message.forwarded_from is not None:
        origin = message.forwarded_from.strip()
        lines.append(f"[forwarded from {origin}]" if origin else "[forwarded]")
    if message.reply is not None:
        lines.append(reply_line(message.reply, history))
    return lines


def user_text(message: InboundMessage, text: str, history: Sequence[Turn]) -> str:
    """The message's `text` (its own, with its attachments' notes) after its context lines;
    "" when there is no text, so that a message nothing could be read of stays empty."""
    if not text.strip():
        return ""
    return "\n".join([*context_lines(message, history), text])

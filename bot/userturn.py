"""What the model reads of one message a person sent: bracketed lines saying it was forwarded
and what it replies to, then its text (with its attachments' notes).

A reply the platform quoted (Telegram) shows that quote; one it only names by id (WhatsApp's
OriginalRepliedMessageSid) is looked up in the conversation's memory, whose turns remember
the ids of the messages they hold; one found nowhere is "[reply to an earlier message]".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.messages import InboundMessage, Reply, Turn

QUOTE_CHARS = 300  # an earlier message, as quoted in a reply
_SPACE = re.compile(r"\s+")


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

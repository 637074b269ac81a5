"""The values that travel between channels, the agent and Redis: frozen, no project imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What a message answers: the platform's id of the earlier message (Telegram's
    message_id, WhatsApp's MessageSid; "" when not given), who wrote it (`to_bot`: the bot
    did; `author`: a display name, "" when unknown) and its text as the platform quoted it
    ("" when it did not: the agent then looks the id up in memory)."""

    ref: str = ""
    to_bot: bool = False
    author: str = ""
    quote: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "to_bot": self.to_bot, "author": self.author, "quote": self.quote}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        return cls(
            ref=str(data.get("ref") or ""),
            to_bot=bool(data.get("to_bot")),
            author=str(data.get("author") or ""),
            quote=str(data.get("quote") or ""),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """One message a person sent on a channel, in neutral form."""

    channel: str
    conversation: str
    sender: str
    text: str
    platform_id: str
    ts: float
    sender_name: str | None = None
    media: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    reply: Reply | None = None  # the earlier message this one replies to
    forwarded_from: str | None = None  # forwarded: from whom ("" when the platform hides it)

    @property
    def ref(self) -> str:
        """The id a later reply names this message by (Telegram: its message_id)."""
        return self.meta.get("message_id") or self.platform_id

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channel": self.channel,
            "conversation": self.conversation,
            "sender": self.sender,
            "text": self.text,
            "platform_id": self.platform_id,
            "ts": self.ts,
            "sender_name": self.sender_name,
            "media": list(self.media),
            "meta": dict(self.meta),
        }
        if self.reply is not None:
            data["reply"] = self.reply.to_dict()
        if self.forwarded_from is not None:
            data["forwarded_from"] = self.forwarded_from
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InboundMessage:
        reply = data.get("reply")
        return cls(
            channel=data["channel"],
            conversation=data["conversation"],
            sender=data["sender"],
            text=data["text"],
            platform_id=data["platform_id"],
            ts=float(data["ts"]),
            sender_name=data.get("sender_name"),
            media=tuple(data.get("media") or ()),
            meta=dict(data.get("meta") or {}),
            reply=Reply.from_dict(reply) if isinstance(reply, dict) else None,
            forwarded_from=data.get("forwarded_from"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """A fetched attachment as the core sees it: bytes and a content type, never a URL."""

    content_type: str
    data: bytes

    @property
    def kind(self) -> str:
        """The content type's top-level part: "image", "audio", …"""
        return self.content_type.partition("/")[0].strip().lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """One reply to send to a conversation on a channel. `failure`: why the turn failed (no
    model answered, or it crashed) when the text is an apology standing in for the answer;
    only the console shows it. `quiet_for`: set on a message the person did not just ask for
    (a reminder): how long (s) they had been silent when it was queued, for a channel whose
    platform refuses free-form messages after a while (WhatsApp's 24-hour window)."""

    channel: str
    conversation: str
    text: str
    reply_to: str | None = None
    failure: str | None = None
    quiet_for: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channel": self.channel,
            "conversation": self.conversation,
            "text": self.text,
            "reply_to": self.reply_to,
        }
        if self.failure is not None:
            data["failure"] = self.failure
        if self.quiet_for is not None:
            data["quiet_for"] = self.quiet_for
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutboundMessage:
        return cls(
            channel=data["channel"],
            conversation=data["conversation"],
            text=data["text"],
            reply_to=data.get("reply_to"),
            failure=data.get("failure"),
            quiet_for=data.get("quiet_for"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One entry of a conversation's history as the model sees it. `refs`: the platform ids
    of the messages it holds (InboundMessage.ref), so a later reply to one can be resolved."""

    role: Role
    text: str
    ts: float
    refs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "text": self.text, "ts": self.ts}
        if self.refs:
            data["refs"] = list(self.refs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        role = data["role"]
        if role not in ("user", "assistant"):
            raise ValueError(f"unknown turn role {role!r}")
        refs = tuple(str(r) for r in data.get("refs") or ())
        return cls(role=role, text=data["text"], ts=float(data["ts"]), refs=refs)

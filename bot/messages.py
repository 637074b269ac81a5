"""The values that travel between channels, the agent and Redis: frozen, no project imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]


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

    def to_dict(self) -> dict[str, Any]:
        return {
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InboundMessage:
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
    only the console shows it."""

    channel: str
    conversation: str
    text: str
    reply_to: str | None = None
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channel": self.channel,
            "conversation": self.conversation,
            "text": self.text,
            "reply_to": self.reply_to,
        }
        if self.failure is not None:
            data["failure"] = self.failure
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutboundMessage:
        return cls(
            channel=data["channel"],
            conversation=data["conversation"],
            text=data["text"],
            reply_to=data.get("reply_to"),
            failure=data.get("failure"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One entry of a conversation's history as the model sees it."""

    role: Role
    text: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "ts": self.ts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        role = data["role"]
        if role not in ("user", "assistant"):
            raise ValueError(f"unknown turn role {role!r}")
        return cls(role=role, text=data["text"], ts=float(data["ts"]))

"""The contract every channel meets, and the neutral form of an incoming webhook request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from bot.messages import InboundMessage, OutboundMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRequest:
    """A webhook request as the platform sent it: public URL, headers, body bytes."""

    url: str
    headers: Mapping[str, str]
    body: bytes


class Channel(Protocol):
    """A chat platform: parses its webhooks into messages and delivers replies."""

    name: str

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        """Verify and parse one webhook request; raise WebhookAuthError or BadPayload."""
        ...

    async def send(self, message: OutboundMessage) -> None:
        """Deliver a reply; raise ChannelSendError (with `retryable`) when it cannot."""
        ...

"""The contract every channel meets, the neutral form of a webhook request, and capped
attachment downloads. (Long replies are split into messages by channels.markdown.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from bot.errors import MediaRejected
from bot.messages import Attachment, InboundMessage, OutboundMessage

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRequest:
    """A webhook request as the platform sent it: public URL, headers, body bytes."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """What a platform gets back once its webhook's messages are safely stored."""

    content_type: str
    body: bytes


class EventLog(Protocol):
    """The structured-event logger channels are given (bot.logs builds it)."""

    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...


class Channel(Protocol):
    """A chat platform: parses its webhooks into messages and delivers replies."""

    name: str
    ack: Ack

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        """Verify and parse one webhook request; raise WebhookAuthError or BadPayload."""
        ...

    async def send(self, message: OutboundMessage) -> None:
        """Deliver a reply; raise ChannelSendError (with `retryable`) when it cannot."""
        ...

    def chunks(self, message: OutboundMessage) -> list[str]:
        """The reply as the platform messages it is sent in, in order (channels.markdown)."""
        ...

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        """One attempt at one chunk; raise ChannelSendError (`retryable`, `retry_after`)."""
        ...


@runtime_checkable
class StatusReceiver(Protocol):
    """A channel that also takes delivery-status callbacks at /webhooks/<name>/status."""

    def status(self, request: RawRequest) -> None:
        """Verify and record one status callback."""
        ...


# --- Downloading attachments ---------------------------------------------------------------


def same_origin(a: URL, b: URL) -> bool:
    """Same scheme, host and port: where credentials for `a` may also be sent."""
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def download(
    http: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    headers_for: Callable[[URL], Mapping[str, str]] = lambda _: {},
    declared_type: str = "",
) -> Attachment:
    """GET an attachment, following redirects here so each hop's headers (credentials) are
    chosen by `headers_for` for that hop's URL alone; stop reading as soon as the body passes
    `max_bytes`. MediaRejected "too_large" or "fetch_failed" (its message names no URL)."""
    target = URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with http.get(
                target, headers=dict(headers_for(target)), allow_redirects=False
            ) as response:
                if response.status in REDIRECTS and "Location" in response.headers:
                    target = target.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise MediaRejected(
                        f"the download answered HTTP {response.status}", reason="fetch_failed"
                    )
                if (response.content_length or 0) > max_bytes:
                    raise _too_large(max_bytes)
                data = await read_capped(response, max_bytes)
                content_type = response.headers.get("Content-Type", "")
                if not content_type or content_type.startswith("application/octet-stream"):
                    content_type = declared_type or content_type  # file servers often say no more
                return Attachment(content_type=content_type, data=data)
        except (aiohttp.ClientError, ValueError) as exc:  # str(exc) may hold the URL: not kept
            raise MediaRejected(
                f"the download failed ({type(exc).__name__})", reason="fetch_failed"
            ) from None
    raise MediaRejected(f"more than {MAX_REDIRECTS} redirects", reason="fetch_failed")


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, read in chunks; MediaRejected "too_large" the moment it passes `max_bytes`."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(data)


def _too_large(max_bytes: int) -> MediaRejected:
    return MediaRejected(f"the file is over {max_bytes} bytes", reason="too_large")

"""The aiohttp application: channel webhooks, health and readiness, and the error → HTTP table.

A webhook is answered only after intake stored its messages in Redis (or, while Redis is
down, in the fsync'd local spool); errors map to the status a platform understands (403 bad
signature, 400 bad payload, 503 retry later).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from bot.errors import (
    BadPayload,
    BotError,
    ChannelNotConfigured,
    StoreUnavailable,
    WebhookAuthError,
    WebhookSecretError,
)
from bot.logs import Logger
from bot.messages import InboundMessage
from channels.base import Channel, RawRequest, StatusReceiver

REDIS_KEY = web.AppKey("redis", aioredis.Redis)
MetricsBody = Callable[[], Awaitable[bytes]]
METRICS_KEY: web.AppKey[MetricsBody] = web.AppKey("metrics")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# One table maps the error tree to what a platform sees; the first match wins.
HTTP_STATUS: dict[type[BotError], int] = {
    WebhookSecretError: 401,
    WebhookAuthError: 403,
    BadPayload: 400,
    ChannelNotConfigured: 503,
    StoreUnavailable: 503,
}


class Intake(Protocol):
    async def accept(self, message: InboundMessage) -> bool: ...


def status_for(exc: BotError) -> int:
    """The HTTP status for an error raised while handling a webhook."""
    for kind, status in HTTP_STATUS.items():
        if isinstance(exc, kind):
            return status
    return 500


async def healthz(_: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Redis answers: the gateway can accept messages."""
    try:
        await request.app[REDIS_KEY].ping()
    except (RedisError, OSError) as exc:
        body = {"status": "unavailable", "checks": {"redis": f"error: {type(exc).__name__}"}}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ok", "checks": {"redis": "ok"}})


class WebhookRoutes:
    """Turns webhook requests into stored messages for one process's channels."""

    def __init__(self, *, intake: Intake, public_url: str | None, log: Logger) -> None:
        self.intake = intake
        self.public_url = public_url.rstrip("/") if public_url else None
        self.log = log

    def raw(self, request: web.Request, body: bytes) -> RawRequest:
        """The request as the platform addressed it: BOT_PUBLIC_URL + path and query."""
        url = f"{self.public_url}{request.path_qs}" if self.public_url else str(request.url)
        return RawRequest(url=url, headers=request.headers, body=body)

    def rejected(self, channel: str, exc: BotError) -> web.Response:
        status = status_for(exc)
        self.log.warning(
            "message_rejected",
            channel=channel,
            status=status,
            reason=type(exc).__name__,
            error=str(exc),
        )
        return web.json_response({"error": str(exc)}, status=status)

    def inbound(self, channel: Channel) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                for message in channel.parse(self.raw(request, await request.read())):
                    await self.intake.accept(message)
            except BotError as exc:
                return self.rejected(channel.name, exc)
            return web.Response(body=channel.ack.body, content_type=channel.ack.content_type)

        return handle

    def status(self, channel: StatusReceiver, name: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                channel.status(self.raw(request, await request.read()))
            except BotError as exc:
                return self.rejected(name, exc)
            return web.Response(status=204)

        return handle


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's metrics."""
    body = await request.app[METRICS_KEY]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_web_app(
    *,
    redis: aioredis.Redis,
    intake: Intake,
    channels: Iterable[Channel] = (),
    public_url: str | None = None,
    metrics_body: Callable[[], Awaitable[bytes]] | None = None,
    log: Logger,
) -> web.Application:
    """The HTTP surface of the gateway."""
    app = web.Application()
    app[REDIS_KEY] = redis
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_body is not None:
        app[METRICS_KEY] = metrics_body
        app.router.add_get("/metrics", metrics)
    routes = WebhookRoutes(intake=intake, public_url=public_url, log=log)
    for channel in channels:
        app.router.add_post(f"/webhooks/{channel.name}", routes.inbound(channel))
        if isinstance(channel, StatusReceiver):
            app.router.add_post(
                f"/webhooks/{channel.name}/status", routes.status(channel, channel.name)
            )
    return app

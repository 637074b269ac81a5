"""The aiohttp application: channel webhooks, health and readiness, and the error → HTTP table.

A webhook is answered only after intake stored its messages in Redis (or, while Redis is
down, in the fsync'd local spool); errors map to the status a platform understands (403 bad
signature, 400 bad payload, 503 retry later).

Overload: each process holds at most `max_inflight` webhooks in flight. From the high-water
mark (80 %) on, /readyz answers 503 with `checks.load: "busy"` so a load balancer routes
away before anything is shed; past the limit a webhook is shed: a 503 with Retry-After where
the platform retries it (Telegram), straight into the local spool where a 5xx would lose it
(WhatsApp: Twilio does not retry 5xx), and a 503 only when the spool is at the limit too.
Each shed is a `webhook_shed` event.
"""

from __future__ import annotations

import math
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


DEFAULT_MAX_INFLIGHT = 256  # BOT_MAX_INFLIGHT
HIGH_WATER = 0.8  # /readyz says busy from this share of the limit on
LOST_ON_5XX = frozenset({"whatsapp"})  # platforms that drop a webhook answered 5xx


class Intake(Protocol):
    async def accept(self, message: InboundMessage) -> bool: ...


class Load:
    """This process's webhooks in flight against its limit: busy from the high-water mark,
    shedding at the limit; `spilling`: webhooks past the limit on their way to the spool."""

    def __init__(self, limit: int = DEFAULT_MAX_INFLIGHT, high_water: float = HIGH_WATER) -> None:
        self.limit = max(1, limit)
        self.busy_at = min(self.limit, max(1, math.ceil(self.limit * high_water)))
        self.inflight = 0
        self.spilling = 0

    @property
    def busy(self) -> bool:
        return self.inflight >= self.busy_at

    @property
    def full(self) -> bool:
        return self.inflight >= self.limit


LOAD_KEY = web.AppKey("load", Load)


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
    """Redis answers and the process is below its high-water mark of webhooks in flight:
    the gateway can accept messages (503 tells a load balancer to route elsewhere)."""
    load = request.app[LOAD_KEY]
    checks = {"load": "busy" if load.busy else "ok"}
    try:
        await request.app[REDIS_KEY].ping()
        checks["redis"] = "ok"
    except (RedisError, OSError) as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(value == "ok" for value in checks.values())
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": checks,
        "inflight": {"now": load.inflight, "busy_at": load.busy_at, "limit": load.limit},
    }
    return web.json_response(body, status=200 if ok else 503)


class WebhookRoutes:
    """Turns webhook requests into stored messages for one process's channels."""

    def __init__(
        self,
        *,
        intake: Intake,
        public_url: str | None,
        log: Logger,
        load: Load,
        spill: Intake | None = None,
    ) -> None:
        self.intake = intake
        self.public_url = public_url.rstrip("/") if public_url else None
        self.log = log
        self.load = load
        self.spill = spill

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

    async def take(self, channel: Channel, request: web.Request, intake: Intake) -> web.Response:
        """Parse the webhook, hand its messages to `intake`, answer the platform."""
        try:
            for message in channel.parse(self.raw(request, await request.read())):
                await intake.accept(message)
        except BotError as exc:
            return self.rejected(channel.name, exc)
        return web.Response(body=channel.ack.body, content_type=channel.ack.content_type)

    async def shed(self, channel: Channel, request: web.Request) -> web.Response:
        """Past the limit: into the spool where a 503 would lose the message, else a 503
        that the platform retries."""
        load = self.load
        spill = self.spill is not None and channel.name in LOST_ON_5XX
        spill = spill and load.spilling < load.limit
        self.log.warning(
            "webhook_shed",
            channel=channel.name,
            answer="spool" if spill else "503",
            inflight=load.inflight,
            limit=load.limit,
        )
        if spill and self.spill is not None:
            load.spilling += 1
            try:
                return await self.take(channel, request, self.spill)
            finally:
                load.spilling -= 1
        body = {"error": "too many webhooks in flight; retry later"}
        return web.json_response(body, status=503, headers={"Retry-After": "1"})

    def inbound(self, channel: Channel) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            load = self.load
            if load.full:
                return await self.shed(channel, request)
            load.inflight += 1
            try:
                return await self.take(channel, request, self.intake)
            finally:
                load.inflight -= 1

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
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    spill: Intake | None = None,
) -> web.Application:
    """The HTTP surface of the gateway; `spill` takes the WhatsApp webhooks past
    `max_inflight` (the local spool), else they get a 503 like the others."""
    app = web.Application()
    app[REDIS_KEY] = redis
    load = app[LOAD_KEY] = Load(max_inflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_body is not None:
        app[METRICS_KEY] = metrics_body
        app.router.add_get("/metrics", metrics)
    routes = WebhookRoutes(intake=intake, public_url=public_url, log=log, load=load, spill=spill)
    for channel in channels:
        app.router.add_post(f"/webhooks/{channel.name}", routes.inbound(channel))
        if isinstance(channel, StatusReceiver):
            app.router.add_post(
                f"/webhooks/{channel.name}/status", routes.status(channel, channel.name)
            )
    return app

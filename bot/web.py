"""The aiohttp application: health and readiness routes, and the error → HTTP status table."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from bot.errors import BadPayload, BotError, StoreUnavailable, WebhookAuthError

REDIS_KEY = web.AppKey("redis", aioredis.Redis)

# One table maps the error tree to what a platform sees.
HTTP_STATUS: dict[type[BotError], int] = {
    WebhookAuthError: 403,
    BadPayload: 400,
    StoreUnavailable: 503,
}


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


def make_web_app(*, redis: aioredis.Redis) -> web.Application:
    """The HTTP surface of the gateway."""
    web_app = web.Application()
    web_app[REDIS_KEY] = redis
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    return web_app

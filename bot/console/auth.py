"""Signing in to the console: the token (BOT_CONSOLE_TOKEN, else one kept in Redis), sessions
in Redis behind an HttpOnly SameSite=Strict cookie, and a CSRF token per session.

The cookie holds a random session id, never the token: a session expires on its own, can be
signed out, and a cookie that leaks (a backup of a browser profile) does not sign anyone in
after it expires, while the token stays valid for new sign-ins.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import cast

import redis.asyncio as aioredis

from bot.settings import Settings

TOKEN_KEY = "console:token"
COOKIE = "switchboard_console"
SESSION_SECONDS = 12 * 3600


def session_key(session: str) -> str:
    return f"console:session:{session}"


def flash_key(session: str) -> str:
    return f"console:flash:{session}"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def console_problems(settings: Settings) -> list[str]:
    """Set-up errors that stop a process from serving the console."""
    if not settings.bot_console_port or is_loopback(settings.bot_console_host):
        return []
    if settings.bot_console_token and settings.bot_console_token.get_secret_value():
        return []
    return [
        f"BOT_CONSOLE_HOST={settings.bot_console_host} is not a loopback address, and "
        "BOT_CONSOLE_TOKEN is not set: set BOT_CONSOLE_TOKEN to a long random value, or bind "
        "the console to 127.0.0.1 (or set BOT_CONSOLE_PORT=0 to turn it off)"
    ]


async def console_token(redis: aioredis.Redis, settings: Settings) -> str:
    """BOT_CONSOLE_TOKEN, else the token kept in Redis (made by whichever process asks
    first: SET NX, so every process accepts the same one)."""
    if settings.bot_console_token and settings.bot_console_token.get_secret_value():
        return settings.bot_console_token.get_secret_value()
    await redis.set(TOKEN_KEY, secrets.token_urlsafe(32), nx=True)
    return cast("str", await redis.get(TOKEN_KEY))


def sign_in_url(settings: Settings, token: str) -> str:
    """http://HOST:PORT/login?token=… (a wildcard bind is reached on loopback)."""
    host = settings.bot_console_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.bot_console_port}/login?token={token}"


def same(given: str, expected: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Signed-in browsers: session id → its CSRF token, in Redis (every process sees them)."""

    def __init__(self, redis: aioredis.Redis, *, seconds: int = SESSION_SECONDS) -> None:
        self.redis = redis
        self.seconds = seconds

    async def open(self) -> str:
        """A new session; its id (the cookie's value)."""
        session = secrets.token_urlsafe(32)
        await self.redis.set(session_key(session), secrets.token_urlsafe(32), ex=self.seconds)
        return session

    async def csrf(self, session: str) -> str | None:
        """The session's CSRF token, or None if there is no such session (any more)."""
        if not session or len(session) > 100:
            return None
        return cast("str | None", await self.redis.get(session_key(session)))

    async def close(self, session: str) -> None:
        await self.redis.delete(session_key(session), flash_key(session))

    async def flash(self, session: str, note: str) -> None:
        """A note for the session's next page (what an action did)."""
        await self.redis.set(flash_key(session), note, ex=60)

    async def take_flash(self, session: str) -> str | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(flash_key(session))
            pipe.delete(flash_key(session))
            note, _ = await pipe.execute()
        return cast("str | None", note)

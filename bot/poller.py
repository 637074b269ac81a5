"""Long polling (web role): one poller across all processes fetches updates into intake.

A lease in Redis makes exactly one process poll (two pollers get 409 conflicts from
Telegram); the offset lives in Redis and moves past an update only after intake stored it,
so a restart, or another process taking over, neither loses nor repeats an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.errors import BotError
from bot.intake import RedisIntake
from bot.logs import Logger
from bot.messages import InboundMessage
from bot.scripts import Script

# KEYS: lease. ARGV: token, ttl ms. Take the lease if free, renew it if ours.
HOLD = Script(
    """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

# KEYS: lease, offset. ARGV: token, new offset. Only the lease holder moves the offset.
ADVANCE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
)

# KEYS: lease. ARGV: token. Give up the lease if it is still ours.
RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


class UpdateSource(Protocol):
    """A platform polled for updates (Telegram's getUpdates)."""

    name: str

    async def prepare_polling(self) -> None:
        """Get ready to poll (e.g. delete a webhook that would make polling fail)."""
        ...

    async def fetch(self, offset: int | None, poll_seconds: float) -> list[dict[str, Any]]:
        """Updates from `offset` on, waiting up to `poll_seconds` for the first one."""
        ...

    def messages_in(self, update: dict[str, Any]) -> list[InboundMessage]:
        """The messages of one update that should be answered."""
        ...


class Poller:
    """Runs the poll loop while this process holds the poller lease."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        intake: RedisIntake,
        source: UpdateSource,
        log: Logger,
        poll_seconds: float = 20,
        lease_seconds: float = 60,
        retry_seconds: float = 2,
    ) -> None:
        self.redis = redis
        self.intake = intake
        self.source = source
        self.log = log
        self.poll_seconds = poll_seconds
        self.lease_ms = int(max(lease_seconds, poll_seconds * 2) * 1000)
        self.retry_seconds = retry_seconds
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_key = f"poller:{{{source.name}}}:lease"
        self.offset_key = f"poller:{{{source.name}}}:offset"
        self._hold = HOLD.on(redis)
        self._advance = ADVANCE.on(redis)
        self._release = RELEASE.on(redis)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; stand by while another process holds the lease."""
        prepared = False
        try:
            while not stop.is_set():
                try:
                    if not await self._hold(
                        keys=[self.lease_key], args=[self.token, self.lease_ms]
                    ):
                        await self._pause(stop, self.lease_ms / 3000)
                        continue
                    if not prepared:
                        await self.source.prepare_polling()
                        prepared = True
                        self.log.info("poller_started", channel=self.source.name)
                    await self.poll_once(stop)
                except (BotError, RedisError, OSError) as exc:
                    self.log.error("poll_failed", channel=self.source.name, error=str(exc))
                    await self._pause(stop, self.retry_seconds)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self.lease_key], args=[self.token])

    async def poll_once(self, stop: asyncio.Event) -> None:
        """Fetch one batch of updates, store their messages, then move the offset past them."""
        stored = await self.redis.get(self.offset_key)
        fetch = asyncio.create_task(
            self.source.fetch(int(stored) if stored else None, self.poll_seconds)
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            return
        for update in fetch.result():
            for message in self.source.messages_in(update):
                await self.intake.accept(message)
            offset = int(update["update_id"]) + 1
            if not await self._advance(
                keys=[self.lease_key, self.offset_key], args=[self.token, offset]
            ):
                self.log.warning("poller_lease_lost", channel=self.source.name)
                return

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

"""Processes announce themselves in Redis (role, pid, host, version, start, last seen) so the
console lists the whole deployment: a periodic background task, nothing per turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.logs import Logger

PROCS_KEY = "console:procs"  # sorted set: process id → last seen (epoch s); the index
EVERY_SECONDS = 10.0
TTL_SECONDS = 30  # a process not seen for this long is gone (its key expires with it)


def proc_key(proc_id: str) -> str:
    return f"console:proc:{proc_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """One process as it last said it was."""

    id: str  # host:pid
    role: str
    pid: int
    host: str
    version: str
    started: float
    seen: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Announcement:
        return cls(
            id=str(data["id"]),
            role=str(data["role"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            version=str(data["version"]),
            started=float(data["started"]),
            seen=float(data["seen"]),
        )


class ProcessBeacon:
    """Refreshes this process's short-lived key every `every` seconds until stopped."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        role: str,
        version: str,
        log: Logger,
        every: float = EVERY_SECONDS,
        ttl: int = TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.log = log
        self.every = every
        self.ttl = ttl
        self.clock = clock
        host, pid = socket.gethostname(), os.getpid()
        self.me = Announcement(
            id=f"{host}:{pid}",
            role=role,
            pid=pid,
            host=host,
            version=version,
            started=clock(),
            seen=clock(),
        )

    async def announce(self) -> None:
        """Say this process is alive now (one round trip); forget processes long gone."""
        now = self.clock()
        body = json.dumps({**self.me.to_dict(), "seen": now})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(proc_key(self.me.id), body, ex=self.ttl)
            pipe.zadd(PROCS_KEY, {self.me.id: now})
            pipe.zremrangebyscore(PROCS_KEY, "-inf", now - self.ttl)
            await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """Announce until `stop`, then withdraw. Redis trouble is logged and waited out:
        a missing announcement never stops a process."""
        while not stop.is_set():
            try:
                await self.announce()
            except (RedisError, OSError) as exc:
                self.log.warning("announce_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await stop.wait()
        with contextlib.suppress(RedisError, OSError):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(proc_key(self.me.id))
                pipe.zrem(PROCS_KEY, self.me.id)
                await pipe.execute()


async def processes(
    redis: aioredis.Redis, *, ttl: int = TTL_SECONDS, clock: Callable[[], float] = time.time
) -> list[Announcement]:
    """The processes seen within `ttl` seconds, by role then host and pid."""
    ids = cast("list[str]", await redis.zrangebyscore(PROCS_KEY, clock() - ttl, "+inf"))
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for proc_id in ids:
            pipe.get(proc_key(proc_id))
        bodies = await pipe.execute()
    found = []
    for body in bodies:
        if body:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                found.append(Announcement.from_dict(json.loads(body)))
    return sorted(found, key=lambda a: (a.role, a.host, a.pid))

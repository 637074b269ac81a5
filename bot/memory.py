"""Conversation memory in Redis: each conversation's turns, appended and loaded in order.

Every key of one conversation carries the conversation id as its hash tag, so one
conversation's keys live on one Redis Cluster slot. Until compaction arrives the history is
capped at `max_turns`, dropping the oldest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.messages import Turn


def conversation_key(conversation: str, part: str) -> str:
    """The Redis key for one part of a conversation's state, hash-tagged by conversation."""
    return f"conv:{{{conversation}}}:{part}"


class RedisMemory:
    """Turns of each conversation as a Redis list of JSON objects, oldest first."""

    def __init__(
        self, redis: aioredis.Redis, *, max_turns: int = 50, idle_days: float = 30
    ) -> None:
        self.redis = redis
        self.max_turns = max_turns
        self.ttl_seconds = int(idle_days * 86400)

    @staticmethod
    def key(conversation: str) -> str:
        """The list holding the conversation's turns."""
        return conversation_key(conversation, "turns")

    async def load(self, conversation: str) -> list[Turn]:
        """Every stored turn of the conversation, oldest first."""
        try:
            raw = await self.redis.lrange(self.key(conversation), 0, -1)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while loading history") from exc
        return [Turn.from_dict(json.loads(item)) for item in raw]

    async def append(self, conversation: str, turns: Sequence[Turn]) -> None:
        """Append turns atomically, keep only the newest `max_turns`, refresh the idle expiry."""
        if not turns:
            return
        key = self.key(conversation)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(json.dumps(t.to_dict(), ensure_ascii=False) for t in turns))
                pipe.ltrim(key, -self.max_turns, -1)
                pipe.expire(key, self.ttl_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while saving history") from exc

    async def clear(self, conversation: str) -> None:
        """Forget the conversation's history."""
        try:
            await self.redis.delete(self.key(conversation))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while clearing history") from exc

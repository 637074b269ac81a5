"""Conversation state in Redis: the turns since the last compaction and the summary before.

Between compactions history is append-only, so a server's prompt cache keeps hitting. A
compaction replaces the oldest turns by a summary in one Lua script, checked against the
summary version it started from, so a concurrent append is never lost and two compactions
never overwrite each other. Every key of a conversation carries its hash tag and expires
after `idleDays` without activity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.messages import Turn
from bot.reads import Read, fetch
from bot.scripts import Script

# KEYS: turns, summary, base. ARGV: expected summary version, base seen, turns to drop (from
# the base seen), new summary JSON ('' to keep none), ttl s. → 1 written, 0 version changed
REPLACE_PREFIX = Script(
    """
local current = redis.call('GET', KEYS[2])
local version = 0
if current then version = cjson.decode(current)['version'] end
if version ~= tonumber(ARGV[1]) then return 0 end
local base = tonumber(redis.call('GET', KEYS[3]) or '0')
local drop = tonumber(ARGV[2]) + tonumber(ARGV[3]) - base
if drop > 0 then
  redis.call('LTRIM', KEYS[1], drop, -1)
  redis.call('INCRBY', KEYS[3], drop)
end
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4]) end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return 1
"""
)


# Read atomically. KEYS: turns, summary, base, then other keys of the conversation read with
# them ("riders"). ARGV: the riders' ttl s. → {turns, summary or nil, base or nil, rider…}; each
# rider found gets the ttl (it expires with the conversation). One MGET for all but the list: a
# rider absent, as most are, costs the turn no command.
STATE = Script(
    """
local rest = redis.call('MGET', unpack(KEYS, 2))
for i = 4, #KEYS do
  if rest[i - 1] then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return {redis.call('LRANGE', KEYS[1], 0, -1), unpack(rest)}
"""
)


def conversation_key(conversation: str, part: str) -> str:
    """The Redis key for one part of a conversation's state, hash-tagged by conversation."""
    return f"conv:{{{conversation}}}:{part}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """What the earlier conversation said, written by a model at compaction."""

    text: str
    version: int  # 1 for the first compaction, +1 for each after
    folded: int  # turns summarised so far, over all compactions
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "version": self.version, "folded": self.folded, "ts": self.ts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(
            text=data["text"],
            version=int(data["version"]),
            folded=int(data.get("folded", 0)),
            ts=float(data.get("ts", 0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationState:
    """A conversation as the next prompt sees it."""

    summary: Summary | None
    turns: list[Turn]
    base: int  # turns ever removed from the front (the index of turns[0] since the start)

    @property
    def summary_version(self) -> int:
        return self.summary.version if self.summary else 0


class RedisMemory:
    """Turns of each conversation as a Redis list (oldest first) plus a summary."""

    def __init__(self, redis: aioredis.Redis, *, idle_days: float = 30) -> None:
        self.redis = redis
        self.ttl_seconds = int(idle_days * 86400)
        self._replace = REPLACE_PREFIX.on(redis)

    @staticmethod
    def key(conversation: str) -> str:
        """The list holding the conversation's turns."""
        return conversation_key(conversation, "turns")

    @staticmethod
    def keys(conversation: str) -> list[str]:
        """Every key of the conversation's memory: turns, summary, base."""
        return [conversation_key(conversation, part) for part in ("turns", "summary", "base")]

    def read_state(self, conversation: str) -> Read[ConversationState]:
        """The summary and the turns after it, read together (one script: atomic)."""
        return self.read_state_with(conversation, [], 0).then(lambda both: both[0])

    def read_state_with(
        self, conversation: str, riders: list[str], ttl_seconds: int
    ) -> Read[tuple[ConversationState, list[Any]]]:
        """The state and the values of `riders`, other keys under the conversation's hash tag,
        in the same script call; each rider found is given `ttl_seconds` (it expires with the
        conversation, as a read of it refreshes it)."""

        def queue(pipe: Pipeline) -> None:
            STATE.queue(pipe, [*self.keys(conversation), *riders], [ttl_seconds] if riders else [])

        def decode(replies: list[Any]) -> tuple[ConversationState, list[Any]]:
            raw_turns, raw_summary, raw_base, *found = replies[0]
            state = ConversationState(
                summary=Summary.from_dict(json.loads(raw_summary)) if raw_summary else None,
                turns=[Turn.from_dict(json.loads(item)) for item in raw_turns],
                base=int(raw_base or 0),
            )
            return state, found

        return Read(queue=queue, count=1, decode=decode)

    async def state(self, conversation: str) -> ConversationState:
        """The summary and the turns after it, read together."""
        return await fetch(self.redis, self.read_state(conversation), what="loading history")

    async def load(self, conversation: str) -> list[Turn]:
        """Every stored turn since the last compaction, oldest first."""
        return (await self.state(conversation)).turns

    async def append(self, conversation: str, turns: Sequence[Turn]) -> None:
        """Append turns and refresh the conversation's idle expiry."""
        if not turns:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(
                    self.key(conversation),
                    *(json.dumps(t.to_dict(), ensure_ascii=False) for t in turns),
                )
                for name in self.keys(conversation):
                    pipe.expire(name, self.ttl_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while saving history") from exc

    async def replace_prefix(
        self, conversation: str, *, seen: ConversationState, drop: int, summary: Summary | None
    ) -> bool:
        """Drop the first `drop` turns of `seen` and store `summary`, unless another compaction
        got there first (then False, and nothing changed)."""
        body = json.dumps(summary.to_dict(), ensure_ascii=False) if summary else ""
        try:
            written = await self._replace(
                keys=self.keys(conversation),
                args=[seen.summary_version, seen.base, drop, body, self.ttl_seconds],
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while compacting") from exc
        return bool(written)

    async def clear(self, conversation: str) -> None:
        """Forget the conversation: turns and summary."""
        try:
            await self.redis.delete(*self.keys(conversation))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while clearing history") from exc

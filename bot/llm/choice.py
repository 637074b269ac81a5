"""Which model a conversation uses: its own choice, else everyone's default, else the config.

Choices live in Redis (a conversation's under its hash tag, the default in one key), so they
survive restarts and every process sees them. A conversation's choice expires with the
conversation: it gets the memory's idle TTL when set, refreshed each time a turn reads it.
Every change is audited on a capped stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.llm.registry import ModelRegistry
from bot.llm.types import ModelRef
from bot.reads import Kept, Read, fetch

DEFAULT_KEY = "settings:model:default"
# How often a busy process reads everyone's default (bot.reads.Kept); its own change is seen at
# once.
READ_EVERY = 0.25
AUDIT_STREAM = "audit:model"
AUDIT_MAXLEN = 1000
Source = Literal["conversation", "default", "config"]


def conversation_model_key(conversation: str) -> str:
    return f"conv:{{{conversation}}}:model"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelChange:
    """One audited change: who moved which scope from what to what, and when."""

    who: str
    scope: str  # "default" or a conversation id
    before: str
    after: str
    ts: float


class RedisModelChoice:
    """Per-conversation and global model choices, resolved against the registry."""

    def __init__(
        self,
        redis: aioredis.Redis,
        registry: ModelRegistry,
        *,
        ttl_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.ttl_seconds = ttl_seconds  # the conversation's idle expiry (session.idleDays)
        self._default: Kept[str | None] = Kept(None, every=READ_EVERY, clock=clock)

    def read_current(self, conversation: str) -> Read[tuple[ModelRef, Source]]:
        """The model a conversation's next turn starts at, and where that choice comes from.

        Reading the conversation's choice refreshes its expiry (GETEX), as a turn refreshes the
        rest of the conversation. A stored value that is no usable ref is passed over. (A turn
        reads the conversation's choice with its memory, bot.memory's riders, and resolves it
        with `read_default` and `resolve`.)
        """

        def queue(pipe: Pipeline) -> None:
            pipe.getex(conversation_model_key(conversation), ex=self.ttl_seconds)

        mine = Read(queue=queue, count=1, decode=lambda replies: replies[0])
        return mine.plus(self.read_default()).then(lambda both: self.resolve(*both))

    @staticmethod
    def key(conversation: str) -> str:
        """Where the conversation's own choice is kept (under its hash tag)."""
        return conversation_model_key(conversation)

    def read_default(self) -> Read[str | None]:
        """Everyone's default as stored (None: unset): from Redis at most every READ_EVERY s,
        else as last read (or as this process last set it)."""

        def queue(pipe: Pipeline) -> None:
            pipe.get(DEFAULT_KEY)

        return self._default.read(Read(queue=queue, count=1, decode=lambda replies: replies[0]))

    def resolve(self, mine: str | None, default: str | None) -> tuple[ModelRef, Source]:
        """The conversation's stored choice, else the stored default, else the config's; a
        stored value that is no usable ref is passed over."""
        for stored, source in ((mine, "conversation"), (default, "default")):
            ref = self._usable(stored)
            if ref is not None:
                return ref, source  # type: ignore[return-value]
        return self.registry.default, "config"

    async def current(self, conversation: str) -> tuple[ModelRef, Source]:
        """The model a conversation's next turn starts at, and where that choice comes from."""
        return await fetch(
            self.redis, self.read_current(conversation), what="reading the model choice"
        )

    async def set(self, scope: str, ref: ModelRef | None, *, who: str) -> ModelChange:
        """Set (or with None, clear) the choice of a conversation or of "default"; audited."""
        key = DEFAULT_KEY if scope == "default" else conversation_model_key(scope)
        before = await self.default() if scope == "default" else (await self.current(scope))[0]
        change = ModelChange(
            who=who, scope=scope, before=str(before), after=str(ref or "(reset)"), ts=time.time()
        )
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if ref is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, str(ref), ex=None if scope == "default" else self.ttl_seconds)
                pipe.xadd(
                    AUDIT_STREAM,
                    {"change": json.dumps(asdict(change))},
                    maxlen=AUDIT_MAXLEN,
                    approximate=True,
                )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("Redis did not answer while saving the model choice") from exc
        if scope == "default":  # this process's next turn starts at it
            self._default.keep(str(ref) if ref else None)
        return change

    async def default(self) -> ModelRef:
        """Everyone's default: the stored one, else the config's primary."""
        stored = cast("str | None", await self.redis.get(DEFAULT_KEY))
        return self._usable(stored) or self.registry.default

    def _usable(self, stored: str | None) -> ModelRef | None:
        """The stored ref if it parses and its provider is still configured, else None."""
        ref = ModelRef.try_parse(stored) if stored else None
        return ref if ref is not None and ref.provider in self.registry.provider_ids else None

    async def history(self, count: int = 10) -> list[ModelChange]:
        """The latest audited changes, newest first."""
        rows = cast(
            "list[tuple[str, dict[str, str]]]",
            await self.redis.xrevrange(AUDIT_STREAM, count=count),
        )
        return [ModelChange(**json.loads(fields["change"])) for _, fields in rows]

    async def last_change(self, scope: str, *, within: int = 100) -> ModelChange | None:
        """The newest audited change of `scope` among the latest `within` changes, if any."""
        return next((c for c in await self.history(within) if c.scope == scope), None)

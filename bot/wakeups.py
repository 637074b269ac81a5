"""Wake-ups on the ready stream: the workers' consumer group (recreated when Redis lost it),
acking only the entries a worker still owns, and the sweep that wakes conversations whose
wake-up was lost (waiting messages or a left batch, and nobody holding the lease)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from bot.intake import READY_MAXLEN, READY_STREAM
from bot.logs import Logger
from bot.memory import conversation_key
from bot.scripts import Script

GROUP = "workers"
SWEEP_LOCK = "switchboard:sweep"
SWEEP_CHUNK = 500
# The keys that hold a conversation's work: its inbox and its batch (one glob for both).
WORK_KEYS = conversation_key("*", "[ib][na][bt][oc][xh]")

# KEYS: ready stream. ARGV: group, consumer, entry id… Ack and delete the entries this consumer
# still owns; one another worker reclaimed meanwhile is theirs to ack. A few commands for the
# whole batch, not three per entry: this consumer's pending entries (its turns in flight and
# these), then XACK and XDEL of the owned ones, 1000 ids a call (Lua's unpack is bounded).
ACK_OWNED = Script(
    """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000, ARGV[2])
local mine = {}
for _, p in ipairs(pending) do mine[p[1]] = true end
local owned = {}
for i = 3, #ARGV do
  if mine[ARGV[i]] then owned[#owned + 1] = ARGV[i] end
end
for i = 1, #owned, 1000 do
  local last = math.min(i + 999, #owned)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(owned, i, last))
  redis.call('XDEL', KEYS[1], unpack(owned, i, last))
end
return #owned
"""
)


def lease_key(conversation: str) -> str:
    """Held by the worker running the conversation's turns."""
    return conversation_key(conversation, "lease")


def batch_key(conversation: str) -> str:
    """The messages of the conversation's current turn, and its state."""
    return conversation_key(conversation, "batch")


def queue_acks(pipe: Pipeline, consumer: str, entries: list[str]) -> None:
    """Ack and delete finished wake-ups this consumer still owns (nothing if there are none)."""
    if entries:
        ACK_OWNED.queue(pipe, [READY_STREAM], [GROUP, consumer, *entries])


def group_lost(exc: ResponseError) -> bool:
    """The ready stream or its consumer group is gone (Redis restarted empty, or flushed)."""
    message = str(exc)  # in a pipeline the server's error follows the failed command
    return "NOGROUP" in message or "UNBLOCKED the stream key no longer exists" in message


async def ensure_group(redis: aioredis.Redis) -> None:
    """Create the ready stream and the workers' group unless they exist."""
    try:
        await redis.xgroup_create(READY_STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Sweeper:
    """Finds conversations with work and no wake-up in flight, and wakes them."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        name: str,
        every: float,
        log: Logger,
        skip: tuple[str, ...] = (),
    ) -> None:
        """`skip`: prefixes of conversations never woken, whose own process runs them (the
        composition root passes the console's: only `bot chat` can print its replies)."""
        self.redis = redis
        self.name = name
        self.every = every
        self.log = log
        self.skip = skip

    async def sweep(self, *, force: bool = False) -> int:
        """Wake every conversation that has waiting messages or a left batch and no lease
        holder; how many were woken. One process sweeps per period (a lock), unless `force`.

        On Redis Cluster the cluster client's SCAN walks every primary in turn."""
        if not force and not await self.redis.set(
            SWEEP_LOCK, self.name, nx=True, px=max(1, int(self.every * 1000))
        ):
            return 0
        woken = 0
        found: list[tuple[str, str]] = []
        # One pass over the keyspace for both kinds of work (SCAN walks every key whatever it
        # matches, so a pass per kind would cost twice): bench.sweep measures it.
        async for key in self.redis.scan_iter(match=WORK_KEYS, count=1000):
            work = _work(str(key))
            if work is not None and not work[0].startswith(self.skip):
                found.append(work)
            if len(found) >= SWEEP_CHUNK:
                woken += await self._wake_idle(found)
                found = []
        woken += await self._wake_idle(found)
        if woken:
            self.log.warning("wakeups_repaired", worker=self.name, conversations=woken)
        return woken

    async def _wake_idle(self, found: list[tuple[str, str]]) -> int:
        """Add a wake-up for each (conversation, inbox or batch key) whose lease is free and
        whose key still holds work (once per conversation)."""
        if not found:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation, key in found:
                pipe.exists(lease_key(conversation))
                pipe.exists(key)
            replies = await pipe.execute()
        idle = list(
            dict.fromkeys(
                conversation
                for (conversation, _), held, work in zip(
                    found, replies[::2], replies[1::2], strict=True
                )
                if work and not held
            )
        )
        if idle:
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation in idle:
                    pipe.xadd(
                        READY_STREAM,
                        {"conversation": conversation},
                        maxlen=READY_MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        return len(idle)


def _work(key: str) -> tuple[str, str] | None:
    """(conversation, key) for a conversation's inbox or batch key, else None."""
    for part in ("inbox", "batch"):
        head, tail = conversation_key("", part).split("}")
        if key.startswith(head) and key.endswith(f"}}{tail}"):
            return key[len(head) : -len(tail) - 1], key
    return None

"""Durable intake (web role): dedupe, append to the conversation's inbox, wake a worker.

`accept` returns only after Redis confirmed the message; the platform gets its 2xx after
that. The per-conversation write is one Lua script on the conversation's hash slot; the
wake-up is an entry on the shared `ready` stream, sent in the same round trip.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.logs import Logger
from bot.memory import conversation_key
from bot.messages import InboundMessage
from bot.scripts import Script

READY_STREAM = "switchboard:ready"
READY_MAXLEN = 100_000
DEDUPE_SECONDS = 24 * 3600

# KEYS: seen marker, inbox. ARGV: dedupe ttl, message JSON. Returns 1 if new, 0 if a duplicate.
# Sent with its source (EVAL): the wake-up queued after it must never go out before the message
# is stored, which a NOSCRIPT answered and run again (bot.scripts.ScriptPipeline) would allow.
ACCEPT = Script(
    """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
)


def seen_key(message: InboundMessage) -> str:
    """The dedupe marker of one platform message, in its conversation's hash slot."""
    return conversation_key(message.conversation, f"seen:{message.channel}:{message.platform_id}")


def inbox_key(conversation: str) -> str:
    return conversation_key(conversation, "inbox")


class RedisIntake:
    """Stores incoming messages durably and marks their conversations ready."""

    def __init__(self, redis: aioredis.Redis, *, log: Logger, ordered: bool = True) -> None:
        """`ordered`: the client applies a pipeline in order (one server). A Redis Cluster
        client sends each node's share concurrently: there the message is stored, then its
        wake-up sent, in two round trips."""
        self.redis = redis
        self.log = log
        self.ordered = ordered

    async def accept(self, message: InboundMessage, *, wake: bool = True) -> bool:
        """Store `message` once; True if new, False if its platform id was seen already.

        Raises StoreUnavailable when Redis did not confirm (the web role then keeps the
        message in its local spool, bot.spool; the poller leaves the offset). The
        wake-up is sent for duplicates too: a retry after a half-finished accept repairs it.
        `wake=False`: no wake-up, the caller runs the conversation itself (`bot chat`: only
        the process at the terminal can print the reply).
        """
        body = json.dumps(message.to_dict(), ensure_ascii=False)
        keys = [seen_key(message), inbox_key(message.conversation)]
        args: list[str | int] = [DEDUPE_SECONDS, body]
        # Who wrote, for the worker to read the turn's first reads with its claim (Agent.prefetch).
        entry: Any = {  # redis-py types values narrowly
            "conversation": message.conversation,
            "channel": message.channel,
            "sender": message.sender,
        }
        try:
            if self.ordered:
                async with self.redis.pipeline(transaction=False) as pipe:
                    ACCEPT.queue(pipe, keys, args, by_source=True)
                    if wake:
                        pipe.xadd(READY_STREAM, entry, maxlen=READY_MAXLEN, approximate=True)
                    fresh = (await pipe.execute())[0]
            else:  # the message must be in the inbox before any worker can see its wake-up
                # Each step a one-command pipeline: redis-py's cluster client (8.1) corrupts a
                # connection when hundreds of plain commands open connections to one node at
                # once (AttributeError in send_packed_command); its pipeline path does not.
                async with self.redis.pipeline(transaction=False) as pipe:
                    ACCEPT.queue(pipe, keys, args, by_source=True)
                    (fresh,) = await pipe.execute()
                if wake:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.xadd(READY_STREAM, entry, maxlen=READY_MAXLEN, approximate=True)
                        await pipe.execute()
        except (RedisError, OSError) as exc:
            self.log.error(
                "intake_failed",
                channel=message.channel,
                conversation=message.conversation,
                msg_id=message.platform_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise StoreUnavailable("Redis did not confirm the message") from exc
        self.log.info(
            "message_received" if fresh else "message_duplicate",
            channel=message.channel,
            conversation=message.conversation,
            msg_id=message.platform_id,
            text=message.text,
        )
        return bool(fresh)

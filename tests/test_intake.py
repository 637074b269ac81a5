"""Durable intake on real Redis: stored once, woken, and a clear error when Redis is gone."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from bot.errors import StoreUnavailable
from bot.intake import READY_STREAM, RedisIntake, inbox_key
from tests.conftest import CapturedEvents
from tests.helpers import dead_redis, inbound

CONV = "whatsapp:+15550001111"


async def test_accept_stores_the_message_and_wakes_a_worker(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A new message lands in its conversation's inbox and on the ready stream, the wake-up
    naming who wrote (a worker reads the turn's first reads with its claim)."""
    intake = RedisIntake(redis_client, log=events.log)
    message = inbound("hello", conversation=CONV)
    assert await intake.accept(message) is True
    [stored] = await redis_client.lrange(inbox_key(CONV), 0, -1)
    assert json.loads(stored)["text"] == "hello"
    [(_, fields)] = await redis_client.xrange(READY_STREAM)
    assert fields == {"conversation": CONV, "channel": message.channel, "sender": message.sender}
    assert events.events("message_received")[0]["msg_id"] == "m1"


async def test_same_platform_id_is_stored_once(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A platform retry with the same message id is acknowledged but not stored again."""
    intake = RedisIntake(redis_client, log=events.log)
    assert await intake.accept(inbound("hello", conversation=CONV, n=7)) is True
    assert await intake.accept(inbound("hello", conversation=CONV, n=7)) is False
    assert await redis_client.llen(inbox_key(CONV)) == 1
    assert events.events("message_duplicate")


async def test_dedupe_marker_expires_after_a_day(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Dedupe markers live in the conversation's hash slot and expire within 24 hours."""
    await RedisIntake(redis_client, log=events.log).accept(inbound("x", conversation=CONV))
    [marker] = await redis_client.keys("*seen*")
    assert marker.startswith(f"conv:{{{CONV}}}:")
    assert 0 < await redis_client.ttl(marker) <= 86400


async def test_unreachable_redis_is_a_distinct_error(events: CapturedEvents) -> None:
    """With Redis down, accept raises StoreUnavailable (the web role spools the message)."""
    dead = dead_redis()
    try:
        with pytest.raises(StoreUnavailable, match="Redis did not confirm"):
            await RedisIntake(dead, log=events.log).accept(inbound("hello"))
    finally:
        await dead.aclose()
    assert events.events("intake_failed")


async def test_a_failed_wake_up_is_repaired_by_the_platform_retry(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """If storing worked but the wake-up failed, the error surfaces; the retry wakes, once."""
    intake = RedisIntake(redis_client, log=events.log)
    await redis_client.set(READY_STREAM, "not a stream")  # makes XADD fail after the store
    with pytest.raises(StoreUnavailable):
        await intake.accept(inbound("hello", conversation=CONV))
    await redis_client.delete(READY_STREAM)
    assert await intake.accept(inbound("hello", conversation=CONV)) is False
    assert await redis_client.llen(inbox_key(CONV)) == 1
    assert await redis_client.xlen(READY_STREAM) == 1

"""A RoundTrip: several components' reads in one pipeline, each value on its own handle."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot.errors import StoreUnavailable
from bot.reads import Read, RoundTrip
from tests.helpers import dead_redis


def read_int(key: str) -> Read[int]:
    """One GET, as a number (0 when missing)."""

    def queue(pipe: Pipeline) -> None:
        pipe.get(key)

    return Read(queue=queue, count=1, decode=lambda replies: int(replies[0] or 0))


def read_pair(a: str, b: str) -> Read[tuple[str, str]]:
    """Two GETs, as a pair."""

    def queue(pipe: Pipeline) -> None:
        pipe.get(a)
        pipe.get(b)

    def decode(replies: list[Any]) -> tuple[str, str]:
        return replies[0], replies[1]

    return Read(queue=queue, count=2, decode=decode)


async def test_each_read_gets_its_own_replies(redis_client: aioredis.Redis) -> None:
    """Reads of different sizes and kinds, in one trip, each decode only their own replies."""
    await redis_client.mset({"n": 7, "a": "x", "b": "y", "m": 3})
    trip = RoundTrip(redis_client, what="reading the test")
    n = trip.add(read_int("n"))
    none = trip.add(Read.value("as is"))
    pair = trip.add(read_pair("a", "b"))
    many = trip.add(Read.each([read_int("m"), read_int("missing")]))
    with pytest.raises(RuntimeError):
        _ = n.value  # not read yet
    await trip.run()
    assert (n.value, none.value, pair.value, many.value) == (7, "as is", ("x", "y"), [3, 0])


async def test_redis_down_names_what_was_being_read() -> None:
    """With Redis unreachable the trip raises StoreUnavailable naming what it was reading."""
    redis = dead_redis()
    trip = RoundTrip(redis, what="reading the test")
    trip.add(read_int("n"))
    with pytest.raises(StoreUnavailable, match="while reading the test"):
        await trip.run()
    await redis.aclose()

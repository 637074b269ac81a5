"""A RoundTrip: several components' reads in one pipeline, each value on its own handle."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from bot.errors import StoreUnavailable
from bot.reads import Kept, Read, RoundTrip, execute_sharing, fetch
from tests.helpers import Clock, dead_redis, monitored


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


async def test_a_pipelines_repeated_reads_go_once(redis_client: aioredis.Redis) -> None:
    """Three claims' reads of the same keys (a GET, an HGETALL, an HMGET) go once each, and
    every copy gets the reply the unshared pipeline gives it; a read of a key that another
    command of the pipeline writes or names (a SET, a script's key) is sent each time."""
    await redis_client.mset({"default": "m1", "moved": "before", "scripted": "s"})
    await redis_client.hset("breaker", mapping={"state": "open", "until": "5"})

    def queue(pipe: Pipeline) -> None:
        for n in range(3):
            pipe.incr(f"own-{n}")
            pipe.get("default")
            pipe.hgetall("breaker")
            pipe.hmget("breaker", "state", "until")
            pipe.get("moved")
            pipe.set("moved", f"after-{n}")
            pipe.get("scripted")
            pipe.eval("return redis.call('GET', KEYS[1])", 1, "scripted")

    async with redis_client.pipeline(transaction=False) as pipe:
        queue(pipe)
        plain = await pipe.execute()
    await redis_client.delete("own-0", "own-1", "own-2", "moved")
    await redis_client.set("moved", "before")
    async with monitored(redis_client) as lines, redis_client.pipeline(transaction=False) as pipe:
        queue(pipe)
        shared = await execute_sharing(pipe)
    assert shared == plain
    assert shared[1:5] == ["m1", {"state": "open", "until": "5"}, ["open", "5"], "before"]
    sent = Counter(
        " ".join(line["command"].split()[:2]).lower()
        for line in lines
        if line.get("client_type") != "lua"  # the client's commands, not the script's own
    )
    assert sent["get default"] == 1
    assert (sent["hgetall breaker"], sent["hmget breaker"]) == (1, 1)
    assert (sent["get moved"], sent["get scripted"]) == (3, 3)


async def test_sharing_leaves_a_pipeline_without_repeats_as_it_is(
    redis_client: aioredis.Redis,
) -> None:
    """Nothing repeated, or an error among the replies: the pipeline's own replies, errors
    as values."""
    await redis_client.set("text", "not a number")
    async with redis_client.pipeline(transaction=False) as pipe:
        pipe.get("text")
        pipe.incr("text")
        pipe.get("text")
        replies = await execute_sharing(pipe)
    assert replies[0] == replies[2] == "not a number"
    assert isinstance(replies[1], ResponseError)


async def test_a_kept_value_is_read_once_a_period(redis_client: aioredis.Redis) -> None:
    """Kept reads from Redis, then gives what it read with no command until `every` has passed;
    a value this process keeps is given at once; after forget() the next read goes to Redis."""
    clock = Clock(0.0)
    kept: Kept[str | None] = Kept(None, every=1.0, clock=clock)
    await redis_client.set("test:kept", "one")

    def get(pipe: Pipeline) -> None:
        pipe.get("test:kept")

    async def read() -> tuple[str | None, int]:
        found = kept.read(Read(queue=get, count=1, decode=lambda replies: replies[0]))
        return await fetch(redis_client, found, what="reading"), found.count

    assert await read() == ("one", 1)
    await redis_client.set("test:kept", "two")
    clock.now += 0.5
    assert await read() == ("one", 0)
    clock.now += 0.5
    assert await read() == ("two", 1)
    kept.keep("mine")
    assert await read() == ("mine", 0)
    kept.forget()
    assert await read() == ("two", 1)

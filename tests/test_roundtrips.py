"""Group commit (bot.roundtrips): the round trips a process's tasks start in one event-loop
iteration go to Redis as one pipeline, each caller getting its own replies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bot.roundtrips import Coalescer, coalescer_for
from bot.scripts import Script, ScriptRedis

BUMP = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


async def round_trips(redis: aioredis.Redis) -> int:
    """Requests Redis has read from clients so far (INFO stats `total_reads_processed`: one per
    read event, so one per round trip on an otherwise idle server)."""
    stats = await redis.info("stats")
    return int(stats["total_reads_processed"])


@pytest.fixture
async def script_client(redis_url: str) -> Any:
    client = ScriptRedis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


class Sum:
    """A Tally for the tests: INCRBY of the callers' adds to one counter, summed."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.amount = 0
        self.settled: list[Any] = []

    def merge(self, other: Sum) -> None:
        self.amount += other.amount

    def queue(self, pipe: Pipeline) -> int:
        pipe.incrby(self.key, self.amount)
        return 1

    def settle(self, replies: list[Any]) -> None:
        self.settled.append(replies)


def adding(trips: Coalescer, key: str, amount: int, made: list[Sum]) -> Any:
    """A caller that sets its own key and adds `amount` to the flush's Sum of `key`."""

    def make() -> Sum:
        made.append(Sum(key))
        return made[-1]

    def queue(pipe: Pipeline) -> None:
        pipe.set(f"own-{amount}", amount)
        tally = trips.tally(pipe, key, make)
        assert tally is not None
        tally.amount += amount

    return trips.run(queue)


async def test_each_caller_gets_its_own_replies_in_its_order(
    script_client: aioredis.Redis,
) -> None:
    trips = Coalescer(script_client)

    def caller(n: int) -> Any:
        def queue(pipe: Pipeline) -> None:
            pipe.set(f"k{n}", n)
            BUMP.queue(pipe, [f"c{n}"], [n])
            pipe.get(f"k{n}")

        return trips.run(queue)

    replies = await asyncio.gather(*(caller(n) for n in range(5)))
    assert replies == [[True, n, str(n)] for n in range(5)]
    assert trips.trips == 1


async def test_one_callers_error_is_not_anothers(script_client: aioredis.Redis) -> None:
    trips = Coalescer(script_client)
    await script_client.set("text", "not a number")

    def bad(pipe: Pipeline) -> None:
        pipe.incr("text")
        pipe.set("after", 1)

    def good(pipe: Pipeline) -> None:
        pipe.incr("n")

    first, second = await asyncio.gather(trips.run(bad), trips.run(good))
    assert isinstance(first[0], ResponseError)
    assert first[1] is True
    assert second == [1]
    assert trips.trips == 1


async def test_a_script_redis_forgot_runs_again_for_its_caller(
    script_client: aioredis.Redis,
) -> None:
    """NOSCRIPT (Redis restarted empty): the refused EVALSHA is loaded and run again; the other
    callers' replies are kept."""
    trips = Coalescer(script_client)
    await script_client.script_flush()
    a, b = await asyncio.gather(
        trips.run(lambda pipe: BUMP.queue(pipe, ["a"], [2])),
        trips.run(lambda pipe: pipe.incr("b")),
    )
    assert (a, b) == ([2], [1])


async def test_a_connection_error_fails_every_caller_of_the_flush(redis_url: str) -> None:
    """Every caller gets the error, and the flush's tally is settled with it."""
    client = ScriptRedis.from_url(redis_url, decode_responses=True)
    trips = Coalescer(client)
    made: list[Sum] = []
    await client.ping()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("gone")

    pipe_class = type(client.pipeline(transaction=False))
    original = pipe_class.execute
    pipe_class.execute = broken  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(
            trips.run(lambda pipe: pipe.incr("x")),
            trips.run(lambda pipe: pipe.incr("y")),
            adding(trips, "total", 1, made),
            return_exceptions=True,
        )
    finally:
        pipe_class.execute = original  # type: ignore[method-assign]
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results)
    settled = [[type(r) for r in replies] for tally in made for replies in tally.settled]
    assert settled == [[RedisConnectionError]]
    # The next iteration's callers are not affected.
    client = ScriptRedis.from_url(redis_url, decode_responses=True)
    try:
        assert await Coalescer(client).run(lambda pipe: pipe.incr("x")) == [1]
    finally:
        await client.delete("x")
        await client.aclose()


async def test_callers_of_different_iterations_go_in_different_round_trips(
    script_client: aioredis.Redis,
) -> None:
    trips = Coalescer(script_client)

    async def later() -> list[Any]:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await trips.run(lambda pipe: pipe.incr("n"))

    first, second = await asyncio.gather(trips.run(lambda pipe: pipe.incr("n")), later())
    assert sorted([first[0], second[0]]) == [1, 2]
    assert trips.trips == 2


async def test_n_concurrent_callers_make_one_round_trip(script_client: aioredis.Redis) -> None:
    """Redis reads one request from the connection for 20 callers (INFO's read events)."""
    trips = coalescer_for(script_client)
    assert coalescer_for(script_client) is trips
    await script_client.ping()  # the connection open, before counting
    before = await round_trips(script_client)
    replies = await asyncio.gather(*(trips.run(lambda pipe: pipe.incr("n")) for _ in range(20)))
    after = await round_trips(script_client)
    assert sorted(r[0] for r in replies) == list(range(1, 21))
    # The INFO call that reads `after` is one read too; the twenty callers are one more.
    assert after - before == 2


async def test_a_caller_that_fails_to_queue_sends_nothing(script_client: aioredis.Redis) -> None:
    trips = Coalescer(script_client)

    def fails(pipe: Pipeline) -> None:
        pipe.set("half", 1)
        raise ValueError("bad input")

    async def failing() -> None:
        await trips.run(fails)

    results = await asyncio.gather(
        failing(), trips.run(lambda pipe: pipe.incr("n")), return_exceptions=True
    )
    assert isinstance(results[0], ValueError)
    assert results[1] == [1]
    assert await script_client.get("half") is None


async def test_a_flushs_adds_to_one_key_go_once_summed_after_the_callers(
    script_client: aioredis.Redis,
) -> None:
    """Five callers of one iteration add to the same counter: one INCRBY of the sum, sent after
    every caller's own commands (their replies are theirs alone), its reply handed to the
    tally; outside a flush's queueing there is no tally to add to."""
    trips = Coalescer(script_client)
    made: list[Sum] = []
    await script_client.set("total", 100)
    replies = await asyncio.gather(*(adding(trips, "total", n, made) for n in range(1, 6)))
    assert replies == [[True]] * 5
    assert await script_client.get("total") == "115"
    merged = [tally for tally in made if tally.settled]
    assert len(merged) == 1
    assert merged[0].settled == [[115]]
    assert merged[0].amount == 15
    async with script_client.pipeline(transaction=False) as own:
        assert trips.tally(own, "total", lambda: Sum("total")) is None


async def test_a_caller_that_fails_to_queue_adds_nothing_to_the_tally(
    script_client: aioredis.Redis,
) -> None:
    trips = Coalescer(script_client)
    made: list[Sum] = []

    def fails(pipe: Pipeline) -> None:
        tally = trips.tally(pipe, "total", lambda: Sum("total"))
        assert tally is not None
        tally.amount += 1000
        raise ValueError("bad input")

    async def failing() -> None:
        await trips.run(fails)

    results = await asyncio.gather(
        adding(trips, "total", 2, made), failing(), adding(trips, "total", 3, made),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(results[1], ValueError)
    assert await script_client.get("total") == "5"

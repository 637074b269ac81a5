"""The event stream's entries hold several events each: how the sink writes them, what it keeps,
and how every reader (`bot logs`, its follow, the console's time window) unpacks them."""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot import logreader
from bot.console.views import events_since
from bot.logreader import Filters, follow_redis, recent_from_redis
from bot.logs import (
    ENTRY_EVENTS,
    EVENT_STREAM,
    EventHub,
    Logger,
    RedisStreamSink,
    entry_events,
    make_logger,
)


def logged(redis: aioredis.Redis, *, max_len: int = 100_000) -> tuple[RedisStreamSink, Logger]:
    """A sink on `redis` (flushed by the test) and a JSON logger whose events reach it."""
    hub, sink = EventHub(), RedisStreamSink(redis, max_len=max_len)
    hub.add(sink)
    return sink, make_logger(stream=io.StringIO(), as_json=True, hub=hub)


async def stream_events(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Every event on the stream, oldest first, entry by entry."""
    return [e for _, fields in await redis.xrange(EVENT_STREAM) for e in entry_events(fields)]


async def followed(redis: aioredis.Redis, filters: Filters, after: str, n: int) -> list[Any]:
    """The `n` from the first `n` events follow_redis yields after `after`."""
    found: list[Any] = []
    async with asyncio.timeout(5):
        async for event in follow_redis(redis, filters, after):
            found.append(event["n"])
            if len(found) == n:
                break
    return found


def iso(at: float) -> str:
    """`at` as the logger's `ts` writes it."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


async def test_a_flush_writes_one_entry_per_chunk_and_every_reader_unpacks_it(
    redis_client: aioredis.Redis,
) -> None:
    """50 events flushed at once are ceil(50 / ENTRY_EVENTS) entries, not 50; `bot logs`, its
    follow and the console's time window each read back the 50 events in order."""
    sink, log = logged(redis_client)
    for n in range(50):
        log.info("turn_started", channel="whatsapp", n=n)
    await sink.flush()
    assert await redis_client.xlen(EVENT_STREAM) == math.ceil(50 / ENTRY_EVENTS)
    assert not sink.pending
    assert [e["n"] for e in await stream_events(redis_client)] == list(range(50))
    recent, last_id = await recent_from_redis(redis_client, Filters(), 100)
    assert [e["n"] for e in recent] == list(range(50))
    [(newest, _)] = await redis_client.xrevrange(EVENT_STREAM, count=1)
    assert last_id == newest
    assert await followed(redis_client, Filters(), "0-0", 50) == list(range(50))
    window = [event["n"] async for _, event in events_since(redis_client, 0)]
    assert window == list(range(50))


async def test_a_quiet_turn_is_one_xadd(redis_client: aioredis.Redis) -> None:
    """A turn's handful of events cost one stream entry."""
    sink, log = logged(redis_client)
    for event in ("message_received", "turn_started", "model_attempt", "turn_finished"):
        log.info(event, channel="console", conversation="console:1")
    await sink.flush()
    [(_, fields)] = await redis_client.xrange(EVENT_STREAM)
    assert [e["event"] for e in entry_events(fields)][-1] == "turn_finished"


async def test_old_single_event_entries_read_back_beside_new_ones(
    redis_client: aioredis.Redis,
) -> None:
    """A stream written before and after the upgrade (one event an entry, then several) reads
    back as one run of events, in order, through every reader."""
    for n in (0, 1):
        await redis_client.xadd(EVENT_STREAM, {"e": json.dumps({"event": "old", "n": n})})
    sink, log = logged(redis_client)
    for n in range(2, 40):
        log.info("new", n=n)
    await sink.flush()
    await redis_client.xadd(EVENT_STREAM, {"e": json.dumps({"event": "old", "n": 40})})
    everything = list(range(41))
    assert [e["n"] for e in await stream_events(redis_client)] == everything
    recent, _ = await recent_from_redis(redis_client, Filters(), 100)
    assert [e["n"] for e in recent] == everything
    last_five, _ = await recent_from_redis(redis_client, Filters(), 5)
    assert [e["n"] for e in last_five] == [36, 37, 38, 39, 40]
    assert await followed(redis_client, Filters(), "0-0", 41) == everything
    assert [e["n"] async for _, e in events_since(redis_client, 0)] == everything


async def test_paging_back_over_entries_neither_skips_nor_repeats_an_event(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages of 3 entries over entries of 1 to 16 events, the last `count` events (all of
    them, or every third) come back exactly, whatever `count`."""
    monkeypatch.setattr(logreader, "PAGE", 3)
    sink, log = logged(redis_client)
    n = 0
    for size in (1, 7, 16, 17, 33, 2, 1, 40, 5):  # one flush each: entries of every size
        for _ in range(size):
            log.info("turn_started" if n % 3 else "reply_sent", n=n)
            n += 1
        await sink.flush()
    assert await redis_client.xlen(EVENT_STREAM) < n
    replies = Filters(events=frozenset({"reply_sent"}))
    every_third = [k for k in range(n) if k % 3 == 0]
    for count in range(n + 2):
        recent, _ = await recent_from_redis(redis_client, Filters(), count)
        assert [e["n"] for e in recent] == list(range(n))[max(0, n - count) :]
        recent, _ = await recent_from_redis(redis_client, replies, count)
        assert [e["n"] for e in recent] == every_third[max(0, len(every_third) - count) :]


async def test_events_are_kept_or_not_by_their_own_time(redis_client: aioredis.Redis) -> None:
    """An entry flushed now may hold events logged long before: `--since` and the console's
    window keep only those whose own `ts` is inside, while the entry's id is."""
    sink = RedisStreamSink(redis_client, max_len=1000)
    now = time.time()
    for n, ago in enumerate((7200, 1800, 30)):  # buffered while Redis was away, say
        sink({}, json.dumps({"ts": iso(now - ago), "level": "info", "event": "reply_sent", "n": n}))
    await sink.flush()
    recent, _ = await recent_from_redis(redis_client, Filters(since=now - 3600), 10)
    assert [e["n"] for e in recent] == [1, 2]
    recent, _ = await recent_from_redis(redis_client, Filters(since=now - 60), 10)
    assert [e["n"] for e in recent] == [2]
    window = [(ms, e["n"]) async for ms, e in events_since(redis_client, int((now - 3600) * 1000))]
    assert [n for _, n in window] == [1, 2]
    assert window[0][0] == int((now - 1800) * 1000)


async def test_the_cap_counts_events_whether_entries_are_full_or_not(
    redis_client: aioredis.Redis,
) -> None:
    """`max_len` bounds events, not entries: written one event an entry or ENTRY_EVENTS an
    entry, the stream keeps the newest events, whole and in order, about `max_len` of them
    (Redis trims approximately, whole nodes of 100 entries: up to that many entries more)."""
    max_len = 800
    for size in (1, ENTRY_EVENTS):
        await redis_client.delete(EVENT_STREAM)
        sink, log = logged(redis_client, max_len=max_len)
        n = 0
        for _ in range(6 * max_len // size):
            for _ in range(size):
                log.info("turn_started", n=n)
                n += 1
            await sink.flush()
        kept = [e["n"] for e in await stream_events(redis_client)]
        assert kept == list(range(n - len(kept), n))
        assert max_len <= len(kept) <= max_len + 101 * size, (size, len(kept))


async def test_events_stay_buffered_while_redis_refuses_them(
    redis_client: aioredis.Redis,
) -> None:
    """A flush Redis answers with an error keeps every event, one entry's worth or several; the
    next flush writes them once each, in order, with those logged meanwhile after them."""
    await redis_client.set(EVENT_STREAM, "not a stream")  # every XADD fails: WRONGTYPE
    sink, log = logged(redis_client)
    for n in range(3):
        log.info("turn_started", n=n)
    await sink.flush()
    for n in range(3, 40):
        log.info("turn_started", n=n)
    await sink.flush()
    assert len(sink.pending) == 40
    await redis_client.delete(EVENT_STREAM)
    await sink.flush()
    assert not sink.pending
    assert [e["n"] for e in await stream_events(redis_client)] == list(range(40))


async def test_an_event_line_never_splits_across_lines(redis_client: aioredis.Redis) -> None:
    """Newlines and line separators in values, and a JSON text with a raw newline between its
    keys, each stay one event: the entry's separator is only ever a real line break."""
    sink, log = logged(redis_client)
    log.info("turn_started", note="one\ntwo\r\nthree\u2028four\x85five", n=0)
    sink({}, '{"event": "pretty",\n "n": 1}')
    await sink.flush()
    events = await stream_events(redis_client)
    assert [e["n"] for e in events] == [0, 1]
    assert events[0]["note"] == "one\ntwo\r\nthree\u2028four\x85five"


async def test_a_batch_of_several_entries_is_written_on_a_cluster(
    cluster_client: aioredis.Redis,
) -> None:
    """On Redis Cluster a flush of several entries (MULTI/EXEC on the stream's slot) writes
    them all, and `bot logs` reads them back in order."""
    sink, log = logged(cluster_client)
    for n in range(40):
        log.info("turn_started", n=n)
    await sink.flush()
    assert await cluster_client.xlen(EVENT_STREAM) == math.ceil(40 / ENTRY_EVENTS)
    recent, _ = await recent_from_redis(cluster_client, Filters(), 100)
    assert [e["n"] for e in recent] == list(range(40))

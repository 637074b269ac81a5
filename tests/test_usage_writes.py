"""What one turn's usage costs Redis and what it leaves there: commands per record, exact sums
past a double's precision, expiry only when needed, the active index trimmed every Nth record."""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bot.config import parse_config
from bot.roundtrips import coalescer_for
from bot.usage import (
    ACTIVE_KEY,
    ACTIVE_MAX,
    ACTIVE_TRIM_EVERY,
    CONVERSATION_FIELDS,
    CONVERSATION_KEY,
    HOT_TTL_EVERY,
    MODEL_KEY,
    REFRESH_SECONDS,
    SENDER_KEY,
    TTL_DAYS,
    Call,
    Prices,
    RedisUsage,
    Totals,
)
from tests.conftest import CapturedEvents
from tests.helpers import Clock, monitored

DAY = 1_795_000_000.0  # 2026-11-18 08:26:40 UTC
TODAY = "2026-11-18"
TTL = TTL_DAYS * 86400
LOCAL = "local/local-model"
IDS = itertools.count(1)


def usage_on(redis: aioredis.Redis, events: CapturedEvents, clock: Clock) -> RedisUsage:
    """A RedisUsage with no configured prices (the calls below come priced)."""
    prices = Prices(parse_config("{}", source="t", env={}))
    return RedisUsage(redis, prices=prices, log=events.log, clock=clock)


def turn(model: str = LOCAL, *, tokens: tuple[int, int] = (120, 30), cost: int = 0) -> Call:
    """A plain turn's one call: a local model's answer (or a priced one's, with `cost`)."""
    return Call(model=model, kind="turn", tokens_in=tokens[0], tokens_out=tokens[1],
                cost_nusd=cost, local=not cost)  # fmt: skip


def unique() -> str:
    """A tag for this test's sender, conversation and model (the MONITOR filter finds it)."""
    return f"test-usage-writes-{next(IDS)}"


@dataclass(slots=True)
class Seen:
    """The commands Redis ran for one test's keys, by name (a script's own calls included)."""

    commands: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.commands.values())


@asynccontextmanager
async def watched(redis: aioredis.Redis, tag: str) -> AsyncIterator[Seen]:
    """Count every top-level command and script call of this database that names `tag` or
    ACTIVE_KEY while the block runs (tests.helpers.monitored)."""
    seen = Seen()
    async with monitored(redis) as lines:
        yield seen
    for line in lines:
        if tag in line["command"] or ACTIVE_KEY in line["command"]:
            seen.commands[line["command"].split(" ", 1)[0].upper()] += 1


async def record_fresh(
    redis: aioredis.Redis, usage: RedisUsage, sender: str, calls: list[Call]
) -> None:
    """What a worker's commit queues for a private chat's turn that found no memory."""
    async with redis.pipeline(transaction=False) as pipe:
        usage.queue_record(pipe, sender=sender, conversation=sender, calls=calls, fresh=True)
        await pipe.execute()


async def test_a_plain_turns_record_is_one_script_call_and_a_hincrby_a_field(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A private chat's record (3 keys) costs, once its keys exist, one script call for the
    sender's day and conversation (one slot) and plain HINCRBYs for the model's day: a HINCRBY
    per field of each day (5 here) and of the conversation's (3: tokens in and out, turns; what
    the console shows, with the cost where there is one), the conversation's TTL, and one ZADD:
    no EXPIRE once the keys have their TTLs."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    sender, model = f"ann-{tag}", f"local/{tag}"
    await usage.record(sender=sender, conversation=sender, calls=[turn(model)])
    async with watched(redis_client, tag) as seen:
        await usage.record(sender=sender, conversation=sender, calls=[turn(model)])
    assert seen.commands == Counter(EVAL=1, HINCRBY=13, TTL=1, ZADD=1)


async def test_a_group_turn_adds_to_its_sender_and_conversation_apart(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """In a group the sender's day and the conversation are in different slots: a script call
    each (cluster-safe; the model's day is plain HINCRBYs); the conversation gets the sender's
    totals of CONVERSATION_FIELDS, and none of the others."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    sender, group, model = f"ann-{tag}", f"group-{tag}", f"local/{tag}"
    call = turn(model)
    async with watched(redis_client, tag) as seen:
        await usage.record(sender=sender, conversation=group, calls=[call])
    assert seen.commands["EVAL"] == 2
    key = SENDER_KEY.format(sender=sender, day=TODAY)
    mine = Totals.from_hash(await redis_client.hgetall(key))
    assert (mine.calls, mine.turns, mine.tokens_in, mine.local_tokens) == (1, 1, 120, 150)
    kept = Totals(**{name: getattr(mine, name) for name in CONVERSATION_FIELDS})
    assert await usage.conversation(group) == kept
    assert set(await redis_client.hkeys(CONVERSATION_KEY.format(conversation=group))) == {
        name for name in CONVERSATION_FIELDS if getattr(mine, name)
    }


async def test_the_first_record_sets_each_ttl_and_trims(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """The day's first record also sets each new key's TTL, reading none (a new key's is
    known from its first add), and a process's first record trims the active index."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    sender, model = f"ann-{tag}", f"local/{tag}"
    async with watched(redis_client, tag) as seen:
        await usage.record(sender=sender, conversation=sender, calls=[turn(model)])
    want = Counter(EVAL=1, HINCRBY=13, EXPIRE=3, ZADD=1, ZREMRANGEBYRANK=1)
    assert seen.commands == want


async def test_a_new_conversations_first_record_writes_each_new_key_with_one_hset(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A turn that found no memory (`fresh`) likely writes new keys: each that is absent
    (EXISTS) gets its fields in one HSET, not a HINCRBY each, and leaves the same totals and
    TTLs as the adds would (another sender's record, not fresh, alongside)."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    sender, other, model = f"ann-{tag}", f"bob-{tag}", f"local/{tag}"
    async with watched(redis_client, tag) as seen:
        await record_fresh(redis_client, usage, sender, [turn(model)])
    want = Counter(EVAL=1, EXISTS=2, HSET=2, HINCRBY=5, EXPIRE=3, ZADD=1, ZREMRANGEBYRANK=1)
    assert seen.commands == want  # the model's day: 5 HINCRBY, as every turn's
    await usage.record(sender=other, conversation=other, calls=[turn(model)])
    assert await usage_hashes(redis_client, sender, sender) == await usage_hashes(
        redis_client, other, other
    )
    for key in (SENDER_KEY.format(sender=sender, day=TODAY),
                CONVERSATION_KEY.format(conversation=sender)):  # fmt: skip
        assert TTL - 5 < await redis_client.ttl(key) <= TTL


async def test_a_likely_new_key_that_exists_is_added_to(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """After /new the next turn finds no memory, but the sender's day and the conversation's
    totals are there: they are added to (HINCRBY), never overwritten, and keep their TTLs."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    sender, model = f"ann-{tag}", f"local/{tag}"
    await usage.record(sender=sender, conversation=sender, calls=[turn(model)])
    day = SENDER_KEY.format(sender=sender, day=TODAY)
    await redis_client.expire(day, 1000)
    async with watched(redis_client, tag) as seen:
        await record_fresh(redis_client, usage, sender, [turn(model, tokens=(7, 3))])
    assert (seen.commands["EXISTS"], seen.commands["HSET"], seen.commands["EXPIRE"]) == (2, 0, 0)
    [mine, conversation] = await usage_hashes(redis_client, sender, sender)
    assert (mine.turns, mine.calls, mine.tokens_in, mine.local_tokens) == (2, 2, 127, 160)
    assert (conversation.turns, conversation.tokens_out) == (2, 33)
    assert 0 < await redis_client.ttl(day) <= 1000


async def test_sums_stay_exact_past_a_doubles_precision(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Costs past 1e15 nano-dollars add exactly, and a field past 2^53 (where a Lua number
    rounds) still adds exactly, through HINCRBY."""
    usage = usage_on(redis_client, events, Clock(DAY))
    big = 1_234_567_890_123_457  # tostring would print 1.2345678901235e+15
    near = 2**53 - 3  # the sum passes 2^53: left to HINCRBY
    past = 123_456_789_012_345_678  # 1.2e+17: no double holds it
    await usage.record(sender="ann", conversation="c", calls=[turn("hosted/m", cost=big)])
    await usage.record(sender="ann", conversation="c", calls=[turn("hosted/m", cost=big)])
    key = SENDER_KEY.format(sender="ann", day=TODAY)
    assert await redis_client.hget(key, "cost_nusd") == str(2 * big)
    await redis_client.hset(key, mapping={"cost_nusd": near, "tokens_in": past})
    await usage.record(sender="ann", conversation="c", calls=[turn("hosted/m", cost=big)])
    totals = Totals.from_hash(await redis_client.hgetall(key))
    assert totals.cost_nusd == near + big
    assert totals.tokens_in == past + 120
    assert (totals.tokens_out, totals.calls, totals.turns) == (90, 3, 3)
    conversation = await usage.conversation("c")
    assert conversation.cost_nusd == 3 * big


async def test_hashes_written_by_hincrby_add_on(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Totals an earlier version wrote field by field with HINCRBY are added to, exactly (a
    model's day, whose TTL this process's first add sets again)."""
    usage = usage_on(redis_client, events, Clock(DAY))
    key = MODEL_KEY.format(model="hosted/m", day=TODAY)
    old = {"tokens_in": 7_000_000_000_000_001, "tokens_out": 5, "cost_nusd": 9_000_000_000_000_000,
           "calls": 41, "turns": 40, "budget_notice": 1}  # fmt: skip
    for name, value in old.items():
        await redis_client.hincrby(key, name, value)
    await redis_client.expire(key, 3600)
    await usage.record(sender="ann", conversation="c", calls=[turn("hosted/m", cost=2_000)])
    found = await redis_client.hgetall(key)
    assert found == {"tokens_in": "7000000000000121", "tokens_out": "35",
                     "cost_nusd": "9000000000002000", "calls": "42", "turns": "41",
                     "budget_notice": "1"}  # fmt: skip
    assert TTL - 5 < await redis_client.ttl(key) <= TTL


async def test_a_daily_key_gets_its_ttl_once(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A sender's day gets TTL_DAYS at the day's first call, and later calls that day leave
    the TTL running from then; a model's day (plain HINCRBYs, no script to see that it is new)
    gets it at a process's first add, and again once HOT_TTL_EVERY has passed."""
    clock = Clock(DAY)
    usage = usage_on(redis_client, events, clock)
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    sender_day = SENDER_KEY.format(sender="ann", day=TODAY)
    model_day = MODEL_KEY.format(model=LOCAL, day=TODAY)
    for key in (sender_day, model_day):
        assert TTL - 5 < await redis_client.ttl(key) <= TTL
        await redis_client.expire(key, 1000)  # as if the day's first call was long ago
    clock.now += HOT_TTL_EVERY - 1
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    for key in (sender_day, model_day):
        assert 0 < await redis_client.ttl(key) <= 1000
    clock.now += 1
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    assert 0 < await redis_client.ttl(sender_day) <= 1000
    assert TTL - 5 < await redis_client.ttl(model_day) <= TTL
    [ann] = await usage.sender_days("ann", 1)
    assert (ann.calls, ann.turns, ann.tokens) == (3, 3, 450)


async def test_a_conversations_ttl_is_refreshed_once_a_day(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A conversation's TTL runs from its last call: set at its first call, left alone by
    further calls until a day of it has run, then set again; an earlier version's `ttl_day`
    field is left alone and never read as a total."""
    clock = Clock(DAY)
    usage = usage_on(redis_client, events, clock)
    key = CONVERSATION_KEY.format(conversation="c")
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    assert TTL - 5 < await redis_client.ttl(key) <= TTL
    await redis_client.hset(key, "ttl_day", "20261118")
    young = TTL - REFRESH_SECONDS + 100  # less than a day of it has run
    await redis_client.expire(key, young)
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    assert young - 5 < await redis_client.ttl(key) <= young
    await redis_client.expire(key, young - 200)  # over a day has run
    await usage.record(sender="bob", conversation="c", calls=[turn()])
    assert TTL - 5 < await redis_client.ttl(key) <= TTL
    totals = await usage.conversation("c")
    assert (totals.turns, totals.tokens) == (3, 450)
    await redis_client.persist(key)  # a key left without a TTL gets one at its next call
    await usage.record(sender="ann", conversation="c", calls=[turn()])
    assert TTL - 5 < await redis_client.ttl(key) <= TTL


async def test_the_active_index_is_trimmed_every_nth_record(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A process trims the active index to ACTIVE_MAX at its first record and every
    ACTIVE_TRIM_EVERY-th after it; in between it grows by the new conversations only, and the
    newest are the ones kept."""
    clock = Clock(DAY)
    await redis_client.zadd(ACTIVE_KEY, {f"old-{n}": n for n in range(ACTIVE_MAX + 50)})
    usage = usage_on(redis_client, events, clock)
    sizes = []
    for n in range(2 * ACTIVE_TRIM_EVERY + 1):
        clock.now += 1
        await usage.record(sender="ann", conversation=f"new-{n}", calls=[turn()])
        sizes.append(await redis_client.zcard(ACTIVE_KEY))
    assert sizes[0] == ACTIVE_MAX
    assert sizes[ACTIVE_TRIM_EVERY - 1] == ACTIVE_MAX + ACTIVE_TRIM_EVERY - 1
    assert sizes[ACTIVE_TRIM_EVERY] == ACTIVE_MAX
    assert sizes[2 * ACTIVE_TRIM_EVERY] == ACTIVE_MAX
    assert max(sizes) == ACTIVE_MAX + ACTIVE_TRIM_EVERY - 1
    newest = [c for c, _ in await usage.active(3)]
    assert newest == [f"new-{2 * ACTIVE_TRIM_EVERY - n}" for n in range(3)]
    assert await redis_client.zscore(ACTIVE_KEY, "old-0") is None


async def test_queue_record_rides_the_callers_round_trip(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """queue_record only queues: the usage is written when the caller's pipeline runs, among
    the caller's own commands, as record() would write it."""
    clock = Clock(DAY)
    usage = usage_on(redis_client, events, clock)
    calls = [turn(), turn("hosted/m", cost=900)]
    async with redis_client.pipeline(transaction=False) as pipe:
        pipe.set("turn:committed", 1)
        usage.queue_record(pipe, sender="ann", conversation="c1", calls=calls)
        pipe.get("turn:committed")
        assert not await redis_client.exists(SENDER_KEY.format(sender="ann", day=TODAY))
        replies = await pipe.execute()
    assert (replies[0], replies[-1]) == (True, "1")
    await usage.record(sender="bob", conversation="c2", calls=calls)
    queued = await usage_hashes(redis_client, "ann", "c1")
    recorded = await usage_hashes(redis_client, "bob", "c2")
    assert queued == recorded
    assert queued[0].cost_nusd == 900
    assert [c for c, _ in await usage.active(5)] == ["c2", "c1"]  # same time: by id


async def test_turns_committed_together_add_to_their_models_day_once(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Five private chats' turns on one model, committed in one group commit: a script call
    each for its sender's day and conversation, ONE set of HINCRBYs for the model's day (the
    five turns' sums) and one ZADD of the five conversations; the model's day holds what five
    records apart leave, and each conversation its own."""
    usage = usage_on(redis_client, events, Clock(DAY))
    tag = unique()
    model, apart = f"local/{tag}", f"local/apart-{tag}"
    senders = [f"p{n}-{tag}" for n in range(5)]
    calls = [[turn(model, tokens=(100 + n, 10 + n))] for n in range(5)]
    trips = coalescer_for(redis_client)  # the worker's, the one usage finds
    async with watched(redis_client, tag) as seen:
        await asyncio.gather(*(
            trips.run(functools.partial(usage.queue_record, sender=s, conversation=s, calls=c))
            for s, c in zip(senders, calls, strict=True)
        ))  # fmt: skip
    # HINCRBY: 8 a turn in its script (5 fields of the day, 3 of the conversation), 5 in all for
    # the model's day
    assert (seen.commands["EVAL"], seen.commands["HINCRBY"], seen.commands["ZADD"]) == (5, 45, 1)
    for sender, mine in zip(senders, calls, strict=True):
        await usage.record(sender=f"{sender}-apart", conversation="", calls=[
            Call(model=apart, kind="turn", tokens_in=mine[0].tokens_in,
                 tokens_out=mine[0].tokens_out, local=True)
        ])  # fmt: skip
    together, separately = [
        Totals.from_hash(await redis_client.hgetall(MODEL_KEY.format(model=m, day=TODAY)))
        for m in (model, apart)
    ]
    assert together == separately
    assert (together.calls, together.turns, together.tokens_in) == (5, 5, 510)
    assert await redis_client.ttl(MODEL_KEY.format(model=model, day=TODAY)) > TTL - 60
    totals = [await usage.conversation(s) for s in senders]
    assert [t.tokens_out for t in totals] == [10, 11, 12, 13, 14]
    assert {c for c, _ in await usage.active(10)} >= set(senders)


async def usage_hashes(redis: aioredis.Redis, sender: str, conversation: str) -> list[Totals]:
    """The sender's day and the conversation's totals, as the readers see them."""
    keys = [SENDER_KEY.format(sender=sender, day=TODAY),
            CONVERSATION_KEY.format(conversation=conversation)]  # fmt: skip
    return [Totals.from_hash(await redis.hgetall(key)) for key in keys]


async def test_a_record_that_cannot_reach_redis_does_not_raise(events: CapturedEvents) -> None:
    """With Redis unreachable, record() logs usage_not_recorded and returns: the turn's reply
    does not depend on its accounting."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    down = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        await usage_on(down, events, Clock(DAY)).record(
            sender="ann", conversation="c", calls=[turn()]
        )
    finally:
        await down.aclose()
    assert [e["conversation"] for e in events.events("usage_not_recorded")] == ["c"]

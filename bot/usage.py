"""Tokens and cost per model call, per turn, per sender, per model; daily token budgets.

Every model call (a turn's answer, a voice note's transcription, a compaction summary, a probe)
becomes a `Call`: the tokens the server reported (an estimate where it reported none, marked
estimated) priced with the model's seed `cost` (USD per million tokens). A turn's calls are
kept in this process until the turn ends, then written in one pipeline: per sender per UTC day,
per model per UTC day (every field) and per conversation (what the console shows of it:
tokens, cost, turns), each key single-slot (hash tags) so the design runs
on Redis Cluster. The turns that commit together (bot.roundtrips' group commit) add to each
model's day, a key every turn writes, once, summed.
Costs are counted in whole nano-dollars, and every field is a plain integer, so sums are exact.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.config import CATALOG_KEYS, Config, ModelCost
from bot.llm.types import Usage
from bot.logs import Logger
from bot.reads import Read
from bot.roundtrips import coalescer_for
from bot.scripts import Script

CallKind = Literal["turn", "compaction", "probe", "transcription"]
GroupBy = Literal["sender", "model", "day"]
NANO = 1_000_000_000  # nano-dollars in a dollar
CHARS_PER_TOKEN = 3  # the estimate where a server reports no usage (the compactor's default)
# A probe ("Answer with one word." / "ping", cut at the first token): about 10 tokens in, 1 out.
PROBE_USAGE = Usage(tokens_in=10, tokens_out=1, estimated=True)
# A sender's day expires TTL_DAYS after its day's first call, a model's day after about its last
# hour (HOT_TTL_EVERY), a conversation's totals after its last call (refreshed at most once a
# day): totals are kept a little over a year.
TTL_DAYS = 400
SENDER_KEY = "usage:sender:{{{sender}}}:{day}"
MODEL_KEY = "usage:model:{{{model}}}:{day}"
CONVERSATION_KEY = "usage:conversation:{{{conversation}}}"
# Every conversation with usage, scored by its last turn's time (the console lists them by last
# activity without a SCAN); written in the turn's usage pipeline, so it costs no round trip.
ACTIVE_KEY = "usage:conversations:active"
ACTIVE_MAX = 10_000  # the newest ones kept in the index
# The index is trimmed to ACTIVE_MAX at a process's first record, then every ACTIVE_TRIM_EVERY-th:
# meanwhile it holds at most ACTIVE_TRIM_EVERY - 1 more per recording process (readers take the
# newest ones), and a turn saves the ZREMRANGEBYRANK (a scan of the index's oldest end).
ACTIVE_TRIM_EVERY = 100
# A daily key every turn writes (a model's day) is added to with plain HINCRBYs, no script:
# its TTL is set at a process's first add to it, then again every HOT_TTL_EVERY seconds (so
# it runs from about the day's last hour: a day, give or take, over TTL_DAYS).
HOT_TTL_EVERY = 3600.0
HOT_TTL_KEPT = 1000  # hot keys whose last EXPIRE a process remembers
NOTIFIED = "budget_notice"  # field of the sender's day: the budget notice was sent
# A conversation's TTL, which runs from its last call, is set again once this much of it has
# run: at most one EXPIRE a day. (An earlier version kept the day of the last one in the field
# `ttl_day`; Totals ignores it.)
REFRESH_SECONDS = 86400
# What a conversation's totals keep: what the console shows of it. The daily keys keep every
# field of Totals (`bot usage` reports them by sender, model and day).
CONVERSATION_FIELDS = ("tokens_in", "tokens_out", "cost_nusd", "turns")
# `bot usage` finds the daily keys by SCAN. On Redis Cluster a SCAN covers one node: the
# reader must scan every primary (redis-py's RedisCluster.scan_iter does).
_DAILY = re.compile(r"^usage:(sender|model):\{(.*)\}:(\d{4}-\d{2}-\d{2})$")

# KEYS: totals hashes of one slot (a private chat's sender day and conversation share the
# sender's). ARGV: ttl s (0: keep none); '1' when the keys are likely new (the turn found no
# memory: TurnResult.fresh), else ''; for each key '' (a daily key) or '1' (a key whose TTL runs
# from its last call), and how many of the field pairs it takes (the first n); then field,
# increment… (CONVERSATION_FIELDS first).
# One HINCRBY per field: exact to 2^63, and the least work for Redis. Adding in Lua (an HMGET
# and an HSET a key) made fewer commands but twice the instructions (bench.rediswork: Lua's
# numbers are parsed and printed by libc's strtod and printf, which HINCRBY's C code is not).
# A key that is likely new is asked first (EXISTS): when absent, one HSET writes every field
# (the increments are the totals), instead of a HINCRBY each; when present, the adds go as
# HINCRBY all the same, one EXISTS the dearer.
# The EXPIRE only when needed: a key's when it was just created (new: a daily key's TTL runs
# from the day's first call; every add's fields are positive, so a first field's sum equal to
# its increment means a new key); else, for a key whose TTL runs from its last call, when over
# REFRESH_SECONDS (a tenth of a shorter TTL) of it have run: one TTL a call, one EXPIRE a day.
_ADD = Script(
    f"""
local ttl, likely_new, first = tonumber(ARGV[1]), ARGV[2] == '1', 2 * #KEYS + 3
local young = ttl - math.min({REFRESH_SECONDS}, math.floor(ttl / 10))  -- a TTL above: not yet
for k = 1, #KEYS do
  local key, mode, count = KEYS[k], ARGV[2 * k + 1], tonumber(ARGV[2 * k + 2])
  local last, new = first + 2 * count - 1, false
  if count > 0 and likely_new and redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(ARGV, first, last))
    new = true
  else
    for i = first, last, 2 do
      local sum = redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
      if i == first then new = sum == tonumber(ARGV[i + 1]) end
    end
  end
  if count > 0 and ttl > 0 and (new or mode ~= '' and redis.call('TTL', key) < young) then
    redis.call('EXPIRE', key, ttl)
  end
end
return 1
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One priced model call."""

    model: str
    kind: CallKind
    tokens_in: int  # every input token, cached ones included
    tokens_out: int
    cached_in: int = 0
    cost_nusd: int = 0  # nano-dollars
    estimated: bool = False
    local: bool = False

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(slots=True, kw_only=True)
class Totals:
    """Summed usage of one key or one report row (the fields of the Redis hashes)."""

    tokens_in: int = 0
    tokens_out: int = 0
    cached_in: int = 0
    cost_nusd: int = 0
    calls: int = 0
    turns: int = 0
    estimated: int = 0  # calls whose tokens are an estimate
    local_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def cost(self) -> float:
        """Dollars."""
        return self.cost_nusd / NANO

    @property
    def local_share(self) -> float:
        """The share of tokens served by local models (0..1)."""
        return self.local_tokens / self.tokens if self.tokens else 0.0

    @classmethod
    def from_hash(cls, values: dict[Any, Any]) -> Totals:
        names = {f.name for f in fields(cls)}
        found = {_text(k): int(v) for k, v in values.items() if _text(k) in names}
        return cls(**found)

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cached_in": self.cached_in,
            "cost": round(self.cost, 9),
            "calls": self.calls,
            "turns": self.turns,
            "estimated": self.estimated,
            "local_share": round(self.local_share, 4),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One row of a report: a sender, a model or a day, and its totals."""

    key: str
    totals: Totals = field(default_factory=Totals)


class Prices:
    """Each model's seed `cost`; a model is local when its provider is not one of the
    built-in hosted ones and it costs nothing."""

    def __init__(self, config: Config) -> None:
        self._costs: dict[str, ModelCost] = {}
        self._hosted_providers = set(CATALOG_KEYS)
        for pid, provider in config.providers().items():
            for spec in provider.models:
                self._costs[f"{pid}/{spec.id}"] = spec.cost

    def cost(self, model: str) -> ModelCost:
        return self._costs.get(model, ModelCost())

    def is_local(self, model: str) -> bool:
        cost = self.cost(model)
        free = not (cost.input or cost.output or cost.cache_read or cost.cache_write)
        return free and model.partition("/")[0] not in self._hosted_providers

    def call(self, model: str, usage: Usage, kind: CallKind) -> Call:
        """Price what a server reported for one call."""
        cost = self.cost(model)
        cached = min(usage.cached_in, usage.tokens_in)
        written = min(usage.cache_write, usage.tokens_in - cached)
        fresh = usage.tokens_in - cached - written
        # (USD per million tokens) * tokens = 1000 nano-dollars per unit.
        nano = (
            fresh * cost.input
            + cached * cost.cache_read
            + written * cost.cache_write
            + usage.tokens_out * cost.output
        ) * 1000
        return Call(
            model=model,
            kind=kind,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_in=cached,
            cost_nusd=round(nano),
            estimated=usage.estimated,
            local=self.is_local(model),
        )


def estimate(usage: Usage, *, prompt_chars: int, answer_chars: int) -> Usage:
    """`usage` as reported, or (the server reported none) an estimate from the text sent
    and received, marked estimated."""
    if not usage.estimated:
        return usage
    return Usage(
        tokens_in=max(1, prompt_chars // CHARS_PER_TOKEN),
        tokens_out=max(1, answer_chars // CHARS_PER_TOKEN),
        estimated=True,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# Totals' fields in the order _ADD takes them: a conversation's first.
_FIELD_ORDER = (
    *CONVERSATION_FIELDS,
    *(f.name for f in fields(Totals) if f.name not in CONVERSATION_FIELDS),
)


def _increments(calls: Iterable[Call], *, turn: bool) -> Totals:
    totals = Totals(turns=1 if turn else 0)
    for call in calls:
        totals.add(
            Totals(
                tokens_in=call.tokens_in,
                tokens_out=call.tokens_out,
                cached_in=call.cached_in,
                cost_nusd=call.cost_nusd,
                calls=1,
                estimated=1 if call.estimated else 0,
                local_tokens=call.tokens if call.local else 0,
            )
        )
    return totals


class _Shared:
    """The adds every turn makes to the same keys, summed (a `bot.roundtrips.Tally`): each
    model's day, and the active index's members (its trim, when a record asks for one). One
    turn's when its caller sends them itself; the turns' of a group commit otherwise."""

    __slots__ = ("active", "models", "trim", "usage")

    def __init__(self, usage: RedisUsage) -> None:
        self.usage = usage
        self.models: dict[str, Totals] = {}  # model day key -> its adds
        self.active: dict[str, float] = {}  # conversation -> its last turn's time
        self.trim = False

    def add_models(self, calls: list[Call], day: str, *, turn: bool) -> None:
        """Each model's share of a turn's calls; the turn counts for the model that answered."""
        answered = next((c.model for c in reversed(calls) if c.kind == "turn"), None)
        for model in dict.fromkeys(c.model for c in calls):
            mine = [c for c in calls if c.model == model]
            key = MODEL_KEY.format(model=model, day=day)
            self.models.setdefault(key, Totals()).add(
                _increments(mine, turn=turn and model == answered)
            )

    def merge(self, other: _Shared) -> None:
        for key, totals in other.models.items():
            self.models.setdefault(key, Totals()).add(totals)
        self.active.update(other.active)
        self.trim |= other.trim

    def queue(self, pipe: Pipeline) -> int:
        count = sum(self.usage._queue_hot(pipe, key, t) for key, t in self.models.items())
        if self.active:
            pipe.zadd(ACTIVE_KEY, self.active)
            count += 1
            if self.trim:
                pipe.zremrangebyrank(ACTIVE_KEY, 0, -ACTIVE_MAX - 1)
                count += 1
        return count

    def settle(self, replies: list[Any]) -> None:
        failed = next((r for r in replies if isinstance(r, BaseException)), None)
        if failed is not None:
            self.usage.log.warning(
                "usage_not_recorded",
                conversation="",
                models=sorted(self.models),
                conversations=len(self.active),
                error=str(failed),
            )


class RedisUsage:
    """Prices every model call, keeps a turn's calls until the turn ends, writes the totals."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prices: Prices,
        log: Logger,
        clock: Callable[[], float] = time.time,
        ttl_days: int = TTL_DAYS,
    ) -> None:
        self.redis = redis
        self.prices = prices
        self.log = log
        self.clock = clock
        self.ttl_seconds = ttl_days * 86400
        self._pending: dict[str, list[Call]] = {}
        self._records = 0  # this process's records with a conversation (ACTIVE_TRIM_EVERY)
        self._trips = coalescer_for(redis)  # the group commit whose flushes sum _Shared adds
        self._hot_ttl: dict[str, float] = {}  # hot daily key -> when this process set its TTL

    def day(self, ts: float | None = None) -> str:
        """The UTC day of `ts` (default: now), as YYYY-MM-DD."""
        when = self.clock() if ts is None else ts
        return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")

    def days(self, count: int) -> list[str]:
        """The last `count` UTC days, today first."""
        now = self.clock()
        return [self.day(now - 86400 * back) for back in range(count)]

    # -- recording -----------------------------------------------------------------------------

    def note(self, conversation: str, model: str, usage: Usage, kind: CallKind) -> Call:
        """Price one call and keep it for the conversation's turn (`take`); log `model_usage`
        (the metrics count cost and tokens from it)."""
        call = self.prices.call(model, usage, kind)
        self.log.info(
            "model_usage",
            conversation=conversation,
            model=model,
            kind=kind,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cached_in=call.cached_in,
            cost=round(call.cost_nusd / NANO, 9),
            estimated=call.estimated,
        )
        if conversation:
            self._pending.setdefault(conversation, []).append(call)
        return call

    def take(self, conversation: str) -> list[Call]:
        """The calls noted for this conversation since the last take (its turn's calls)."""
        return self._pending.pop(conversation, [])

    async def record(self, *, sender: str, conversation: str, calls: list[Call]) -> None:
        """Write a turn's calls (`queue_record`) in a round trip of their own. Never raises: a
        Redis failure loses these numbers, not the reply."""
        if not calls:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_record(pipe, sender=sender, conversation=conversation, calls=calls)
            await self._execute(pipe, conversation)

    def queue_record(
        self,
        pipe: Pipeline,
        *,
        sender: str,
        conversation: str,
        calls: list[Call],
        fresh: bool = False,
    ) -> None:
        """Queue, on a caller's non-transactional pipeline, the adds of a turn's calls to the
        sender's day, each model's day and the conversation, and mark the conversation active
        now (ACTIVE_KEY): a caller that already makes a round trip at the turn's end sends the
        usage in it. On a group commit's pipeline (bot.roundtrips) the adds to keys every turn
        writes (a model's day, the active index) join the other turns' and go once, summed,
        after them. Each script call's keys share a slot (a private chat's sender day and
        conversation go in one), so the pipeline may be a cluster one. The
        caller decides what a failure of these writes costs: `execute(raise_on_error=False)`
        keeps one from failing the caller's own commands. `fresh`: the turn found no memory
        (TurnResult.fresh), so the sender's day and the conversation are likely new: each one
        that is gets its fields in one HSET."""
        if not calls:
            return
        day = self.day()
        turn = any(c.kind == "turn" for c in calls)
        everything = _increments(calls, turn=turn)
        sender_key = SENDER_KEY.format(sender=sender, day=day)
        conversation_key = CONVERSATION_KEY.format(conversation=conversation)
        if sender == conversation:  # a private chat: one slot, one script call
            self._queue(pipe, {sender_key: "", conversation_key: "1"}, everything, fresh=fresh)
        else:
            self._queue(pipe, {sender_key: ""}, everything, fresh=fresh)
            self._queue(pipe, {conversation_key: "1"}, everything, fresh=fresh)
        shared = self._trips.tally(pipe, _Shared, lambda: _Shared(self))
        adds = shared or _Shared(self)
        adds.add_models(calls, day, turn=turn)
        if conversation:
            adds.active[conversation] = self.clock()
            adds.trim |= self._records % ACTIVE_TRIM_EVERY == 0
            self._records += 1
        if shared is None:  # the caller's own pipeline: no other turn's adds to join
            adds.queue(pipe)

    async def record_background(self, call: Call) -> None:
        """Add a call no person's turn made (a probe) to its model's day."""
        async with self.redis.pipeline(transaction=False) as pipe:
            adds = _Shared(self)
            adds.add_models([call], self.day(), turn=False)
            adds.queue(pipe)
            await self._execute(pipe, "")

    def _queue(
        self, pipe: Pipeline, keys: dict[str, str], totals: Totals, *, fresh: bool = False
    ) -> int:
        """Queue `_ADD` of `totals` to each key (all in one slot), mapped to '' for a daily
        key (every field; its TTL set when new) or '1' for a conversation's (CONVERSATION_FIELDS;
        its TTL runs from its last call, set again once a day has run); `fresh`: the keys are
        likely new. How many commands (0: nothing to add)."""
        added = {name: n for name in _FIELD_ORDER if (n := getattr(totals, name))}
        if not added:
            return 0
        kept = sum(1 for name in added if name in CONVERSATION_FIELDS)
        per_key = [v for mode in keys.values() for v in (mode, kept if mode else len(added))]
        pairs = [v for name, n in added.items() for v in (name, n)]
        _ADD.queue(pipe, list(keys), [self.ttl_seconds, "1" if fresh else "", *per_key, *pairs])
        return 1

    def _queue_hot(self, pipe: Pipeline, key: str, totals: Totals) -> int:
        """Queue the adds of `totals` to a daily key that every turn writes (a model's day) as
        plain HINCRBYs, a field each, with no script call around them, and its EXPIRE at this
        process's first add to it and then once every HOT_TTL_EVERY seconds (a TTL that Redis
        lost, restarted empty, comes back within that). How many commands."""
        added = [(name, n) for name in _FIELD_ORDER if (n := getattr(totals, name))]
        if not added:
            return 0
        for name, n in added:
            pipe.hincrby(key, name, n)
        now = self.clock()
        if now - self._hot_ttl.get(key, -math.inf) < HOT_TTL_EVERY:
            return len(added)
        if len(self._hot_ttl) >= HOT_TTL_KEPT:  # yesterday's and older among them
            self._hot_ttl.clear()
        self._hot_ttl[key] = now
        pipe.expire(key, self.ttl_seconds)
        return len(added) + 1

    async def _execute(self, pipe: Pipeline, conversation: str) -> None:
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self.log.warning("usage_not_recorded", conversation=conversation, error=str(exc))

    # -- budgets -------------------------------------------------------------------------------

    def read_spent(self, sender: str) -> Read[int]:
        """The sender's tokens so far today (in and out), to read with a turn's state."""
        key = SENDER_KEY.format(sender=sender, day=self.day())

        def queue(pipe: Pipeline) -> None:
            pipe.hmget(key, "tokens_in", "tokens_out")

        return Read(
            queue=queue,
            count=1,
            decode=lambda replies: sum(int(v or 0) for v in replies[0]),
        )

    async def first_notice(self, sender: str) -> bool:
        """True once per sender and UTC day: the first caller past the budget sends the notice."""
        key = SENDER_KEY.format(sender=sender, day=self.day())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(key, NOTIFIED, 1)
            pipe.expire(key, self.ttl_seconds)
            first, _ = await pipe.execute()
        return bool(first)

    # -- reading -------------------------------------------------------------------------------

    async def sender_days(self, sender: str, days: int) -> list[Totals]:
        """The sender's totals for each of the last `days` UTC days, today first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in self.days(days):
                pipe.hgetall(SENDER_KEY.format(sender=sender, day=day))
            replies = await pipe.execute()
        return [Totals.from_hash(r) for r in replies]

    async def active(self, count: int) -> list[tuple[str, float]]:
        """The `count` conversations with the newest turns: (id, time of the last turn)."""
        rows = cast(
            "list[tuple[str, float]]",
            await self.redis.zrevrange(ACTIVE_KEY, 0, count - 1, withscores=True),
        )
        return [(_text(member), float(score)) for member, score in rows]

    async def conversation(self, conversation: str) -> Totals:
        """A conversation's totals since it began."""
        found = await self.redis.hgetall(CONVERSATION_KEY.format(conversation=conversation))
        return Totals.from_hash(found)

    async def report(self, *, by: GroupBy, days: int) -> list[Row]:
        """Totals of the last `days` UTC days (today included) by sender, model or day, most
        expensive (then most tokens) first; days newest first."""
        wanted = set(self.days(days))
        kind = "sender" if by == "sender" else "model"
        keys: list[tuple[str, str, str]] = []
        async for raw in self.redis.scan_iter(match=f"usage:{kind}:*", count=1000):
            found = _DAILY.match(_text(raw))
            if found and found[3] in wanted:
                keys.append((_text(raw), found[2], found[3]))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _, _ in keys:
                pipe.hgetall(key)
            replies = await pipe.execute() if keys else []
        rows: dict[str, Totals] = {}
        for (_, who, day), reply in zip(keys, replies, strict=True):
            rows.setdefault(day if by == "day" else who, Totals()).add(Totals.from_hash(reply))
        if by == "day":
            return [Row(key=k, totals=rows[k]) for k in sorted(rows, reverse=True)]
        ranked = sorted(rows.items(), key=lambda kv: (-kv[1].cost_nusd, -kv[1].tokens, kv[0]))
        return [Row(key=k, totals=t) for k, t in ranked]

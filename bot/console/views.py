"""What each console page shows, read from Redis: the deployment as a whole, whichever process
serves the page. Ids are masked as the logs mask them; message text only where configured."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bot.console.beacon import Announcement, processes
from bot.console.parts import ConsoleParts
from bot.deadletters import DEAD_LETTERS
from bot.delivery import DUE_KEY, Entry, outbox_key
from bot.errors import BotError
from bot.intake import READY_STREAM
from bot.llm.choice import conversation_model_key
from bot.llm.types import ModelRef
from bot.logreader import event_time
from bot.logs import EVENT_STREAM, entry_events, mask_phone_numbers
from bot.reads import fetch
from bot.reminders import DUE_KEY as REMINDERS_DUE_KEY
from bot.reminders import Reminder
from bot.usage import ACTIVE_KEY, ACTIVE_MAX, CONVERSATION_KEY, Row, Totals
from bot.wakeups import GROUP

HOUR_BUCKETS = 12  # the last hour's activity in 5-minute columns
MAX_EVENTS_SCANNED = 20_000  # the last hour's events read for the overview, at most
OUTBOX_LOOKED_AT = 50  # conversations of the due set whose head is read for its age


def masked(conversation: str) -> str:
    """A conversation or sender id as the logs show it (phone numbers masked)."""
    return mask_phone_numbers(conversation)


def conversation_ref(key: str, conversation: str) -> str:
    """An opaque, stable name for a conversation in URLs (a keyed hash: the id itself, a phone
    number, never reaches a page)."""
    return hmac.new(key.encode(), conversation.encode(), hashlib.sha256).hexdigest()[:20]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRow:
    ref: str
    alias: str | None
    api: str
    breaker: str  # closed | open | half-open
    reopens_in: float
    failures: int
    local: str | None  # LM Studio: "loaded, 8192-token context" / "not loaded"; None: not local
    context_window: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity:
    """The last hour's replies and errors, in total and per 5-minute column (oldest first)."""

    replies: int = 0
    errors: int = 0
    turns: int = 0
    buckets: list[tuple[int, int]] = field(default_factory=list)  # (replies, errors)
    capped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    processes: list[Announcement]
    ready_length: int
    ready_lag: int | None
    ready_pending: int | None
    outbox_waiting: int
    oldest_reply_age: float | None  # seconds since the oldest undelivered reply was queued
    dead_letters: int
    models: list[ModelRow]
    default: str
    activity: Activity
    reminders_pending: int = 0
    reminders_next: float | None = None  # epoch seconds of the soonest due reminder


async def model_rows(parts: ConsoleParts, primary: ModelRef | None = None) -> list[ModelRow]:
    """The chain (from `primary`, else everyone's default) with breakers and LM Studio state."""
    if parts.local is not None:
        with contextlib.suppress(BotError):
            await fetch(parts.redis, parts.local.read(), what="reading LM Studio's state")
    chain = parts.registry.chain(primary or await parts.choice.default())
    states = {s.model: s for s in await parts.breaker.states([str(m.ref) for m in chain])}
    rows = []
    for info in chain:
        state = states[str(info.ref)]
        local = None
        if parts.local is not None and info.ref.provider in parts.local.providers:
            found = parts.local.state(info.ref.provider, info.ref.model)
            local = found.describe() if found is not None else "not reported"
        rows.append(
            ModelRow(
                ref=str(info.ref),
                alias=info.alias,
                api=info.api,
                breaker=state.state,
                reopens_in=state.reopens_in,
                failures=state.failures,
                local=local,
                context_window=info.context_window,
            )
        )
    return rows


async def overview(parts: ConsoleParts) -> Overview:
    """Everything the front page shows."""
    redis = parts.redis
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(READY_STREAM)
        pipe.zcard(DUE_KEY)
        pipe.zrange(DUE_KEY, 0, OUTBOX_LOOKED_AT - 1)
        pipe.xlen(DEAD_LETTERS)
        pipe.zcard(REMINDERS_DUE_KEY)
        pipe.zrange(REMINDERS_DUE_KEY, 0, 0, withscores=True)
        length, waiting, due, dead, reminders, soonest = await pipe.execute()
    lag = pending = None
    with contextlib.suppress(ResponseError):  # no group yet: no worker has started
        for group in await redis.xinfo_groups(READY_STREAM):
            if _text(group.get("name")) == GROUP:
                lag = _int(group.get("lag"))
                pending = _int(group.get("pending"))
    oldest = None
    if due:
        async with redis.pipeline(transaction=False) as pipe:
            for conversation in due:
                pipe.lindex(outbox_key(_text(conversation)), 0)
            heads = await pipe.execute()
        ats = []
        for head in heads:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if head:
                    ats.append(Entry.from_json(_text(head)).at)
        oldest = max(0.0, time.time() - min(ats) / 1000) if ats else None
    return Overview(
        processes=await processes(redis),
        ready_length=int(length),
        ready_lag=lag,
        ready_pending=pending,
        outbox_waiting=int(waiting),
        oldest_reply_age=oldest,
        dead_letters=int(dead),
        models=await model_rows(parts),
        default=str(await parts.choice.default()),
        activity=await activity(parts),
        reminders_pending=int(reminders),
        reminders_next=float(soonest[0][1]) / 1000 if soonest else None,
    )


async def activity(parts: ConsoleParts, *, now: float | None = None) -> Activity:
    """Replies (`reply_sent`), turns and errors (level error) of the last hour, from the
    event stream every process writes to, each counted at its own time."""
    now = time.time() if now is None else now
    start_ms = int((now - 3600) * 1000)
    buckets = [[0, 0] for _ in range(HOUR_BUCKETS)]
    replies = errors = turns = scanned = 0
    async with contextlib.aclosing(events_since(parts.redis, start_ms)) as events:
        async for at_ms, event in events:
            if scanned == MAX_EVENTS_SCANNED:
                break
            scanned += 1
            column = min(HOUR_BUCKETS - 1, max(0, (at_ms - start_ms) * HOUR_BUCKETS // 3_600_000))
            if event.get("event") == "reply_sent":
                replies += 1
                buckets[column][0] += 1
            elif event.get("event") == "turn_started":
                turns += 1
            if event.get("level") in ("error", "critical"):
                errors += 1
                buckets[column][1] += 1
    return Activity(
        replies=replies,
        errors=errors,
        turns=turns,
        buckets=[(r, e) for r, e in buckets],
        capped=scanned >= MAX_EVENTS_SCANNED,
    )


async def events_since(
    redis: aioredis.Redis, start_ms: int
) -> AsyncGenerator[tuple[int, dict[str, Any]]]:
    """The stream's events logged at `start_ms` or later, oldest first, each with its own time
    in ms (its entry's, where it has no `ts`). An entry's id is its flush time, after its
    events': one flushed just after `start_ms` may hold events from before, left out here.
    Pages by whole entries, so none is read twice or skipped."""
    lower = f"{start_ms}-0"
    while True:
        rows = cast(
            "list[tuple[str, dict[str, str]]]",
            await redis.xrange(EVENT_STREAM, min=lower, max="+", count=1000),
        )
        if not rows:
            return
        for entry_id, fields in rows:
            flushed_ms = int(entry_id.split("-")[0])
            for event in entry_events(fields):
                at = event_time(event)
                at_ms = flushed_ms if at is None else int(at * 1000)
                if at_ms >= start_ms:
                    yield at_ms, event
        lower = f"({rows[-1][0]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationRow:
    ref: str
    channel: str
    masked: str
    last: float
    turns: int
    tokens: int
    cost: float
    messages: int  # in memory now
    model: str


async def conversations(parts: ConsoleParts, key: str, count: int = 100) -> list[ConversationRow]:
    """The conversations with the newest turns, newest first (the usage index: no SCAN)."""
    active = await parts.usage.active(count)
    if not active:
        return []
    default = str(await parts.choice.default())
    async with parts.redis.pipeline(transaction=False) as pipe:
        for conversation, _ in active:
            pipe.hgetall(CONVERSATION_KEY.format(conversation=conversation))
            pipe.get(conversation_model_key(conversation))
            pipe.llen(parts.memory.key(conversation))
        replies = await pipe.execute()
    rows = []
    for n, (conversation, last) in enumerate(active):
        totals = Totals.from_hash(replies[3 * n])
        chosen = replies[3 * n + 1]
        rows.append(
            ConversationRow(
                ref=conversation_ref(key, conversation),
                channel=conversation.split(":", 1)[0],
                masked=masked(conversation),
                last=last,
                turns=totals.turns,
                tokens=totals.tokens,
                cost=totals.cost,
                messages=int(replies[3 * n + 2] or 0),
                model=_text(chosen) if chosen else default,
            )
        )
    return rows


async def find_conversation(parts: ConsoleParts, key: str, ref: str) -> str | None:
    """The conversation a URL's ref names, among those the index knows."""
    members = await parts.redis.zrevrange(ACTIVE_KEY, 0, ACTIVE_MAX - 1)
    for member in members:
        conversation = _text(member)
        if hmac.compare_digest(conversation_ref(key, conversation), ref):
            return conversation
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReminderRow:
    """A pending reminder as the conversation page shows it: its slot in the zone it was set
    in, its rule, and its text (shown only where the config logs message text)."""

    when: str
    zone: str
    rule: str | None
    text: str
    created: float


def reminder_rows(pending: list[Reminder]) -> list[ReminderRow]:
    """A conversation's pending reminders, soonest first, as the page shows them."""
    rows = []
    for reminder in sorted(pending, key=lambda r: r.due):
        local = datetime.fromtimestamp(reminder.due / 1000, UTC).astimezone(ZoneInfo(reminder.zone))
        rows.append(
            ReminderRow(
                when=local.strftime("%Y-%m-%d %H:%M %Z"),
                zone=reminder.zone,
                rule=reminder.rule.describe() if reminder.rule else None,
                text=reminder.text,
                created=reminder.created / 1000,
            )
        )
    return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageView:
    days: int
    by_day: list[Row]  # every day of the period, oldest first (empty days too)
    by_model: list[Row]
    by_sender: list[Row]
    total: Totals


async def usage(parts: ConsoleParts, days: int) -> UsageView:
    """The same figures as `bot usage --by day|model|sender --since {days}d`."""
    by_day = {r.key: r for r in await parts.usage.report(by="day", days=days)}
    by_model = await parts.usage.report(by="model", days=days)
    by_sender = await parts.usage.report(by="sender", days=days)
    total = Totals()
    for row in by_model:
        total.add(row.totals)
    every_day = [by_day.get(day) or Row(key=day) for day in reversed(parts.usage.days(days))]
    senders = [Row(key=masked(r.key), totals=r.totals) for r in by_sender]
    return UsageView(days=days, by_day=every_day, by_model=by_model, by_sender=senders, total=total)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None

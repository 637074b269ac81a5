"""Reminders in Redis: one hash per reminder and a per-conversation index, hash-tagged by the
conversation (`conv:{id}:reminder:<rid>`, `conv:{id}:reminders`), plus one global due index
that workers poll.

The global index (`switchboard:reminders:due`, members `rid:conversation`) is only a hint of
what to look at when: it cannot share a slot with every conversation on Redis Cluster, so it
is never read or written inside a script with a conversation's keys. What fires a reminder
exactly once is FIRE, on the conversation's slot: it fires only the slot the hash still holds,
under the conversation's lease, and in the same step queues the text in the outbox and moves
the hash to its next slot (or deletes it). An index entry left behind by a crash is claimed
again later, finds the slot already fired, and is put right.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot.delivery import CLAIM_DUE
from bot.errors import CommandError
from bot.logs import Logger
from bot.memory import conversation_key
from bot.reminders.phrases import Rule
from bot.scripts import Script

DUE_KEY = "switchboard:reminders:due"
MAX_PENDING = 50


def reminder_key(conversation: str, rid: str) -> str:
    return conversation_key(conversation, f"reminder:{rid}")


def index_key(conversation: str) -> str:
    """The conversation's pending reminders: rid → due (epoch ms)."""
    return conversation_key(conversation, "reminders")


def zone_key(sender: str) -> str:
    """The sender's time zone (an IANA name), set with /tz."""
    return f"tz:{{{sender}}}"


def due_member(conversation: str, rid: str) -> str:
    return f"{rid}:{conversation}"


def split_member(member: str) -> tuple[str, str]:
    """A due index member as (conversation, rid)."""
    rid, _, conversation = member.partition(":")
    return conversation, rid


def decode_claimed(reply: Any) -> list[tuple[str, str]]:
    """A claim's reply (due index members) as (conversation, rid) pairs."""
    return [split_member(str(m)) for m in cast("list[Any]", reply)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reminder:
    """One pending reminder: who set it where, its text, its next slot (epoch ms), its rule."""

    id: str
    channel: str
    conversation: str
    sender: str
    text: str
    due: int
    zone: str
    rule: Rule | None = None
    created: int = 0

    @property
    def due_at(self) -> datetime:
        return datetime.fromtimestamp(self.due / 1000, UTC)

    def to_fields(self) -> dict[str, str | int]:
        return {
            "id": self.id,
            "channel": self.channel,
            "conversation": self.conversation,
            "sender": self.sender,
            "text": self.text,
            "due": self.due,
            "zone": self.zone,
            "rule": self.rule.to_text() if self.rule else "",
            "created": self.created,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Reminder:
        return cls(
            id=fields["id"],
            channel=fields["channel"],
            conversation=fields["conversation"],
            sender=fields["sender"],
            text=fields["text"],
            due=int(fields["due"]),
            zone=fields["zone"],
            rule=Rule.from_text(fields["rule"]) if fields.get("rule") else None,
            created=int(fields.get("created") or 0),
        )


class Fired(StrEnum):
    """What FIRE did."""

    FIRED = "fired"  # queued in the outbox (then: the outbox length)
    STALE = "stale"  # that slot was fired already (then: the slot the hash holds now)
    GONE = "gone"  # no such reminder (fired once and done, or cancelled)
    LOST = "lost"  # the conversation's lease is not ours


# KEYS: hash, index. ARGV: limit (0 = none), due ms, rid, field, value, … Adds a reminder
# unless the conversation already has `limit` pending. 1 added, 0 refused.
ADD = Script(
    """
if tonumber(ARGV[1]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: lease, hash, index, outbox, outbox head. ARGV: token, slot ms, outbox entry JSON,
# entry id, started ms, outbox ttl s, next slot ms ('' when it does not recur), rid.
# Fires the slot the hash holds (once), queueing the entry behind the conversation's other
# replies (a new head's progress, bot.delivery's JSON string, is written whole with the outbox
# ttl and marks it as possibly started: a resumed send checks first), and moves the reminder
# on to its next slot or deletes it.
FIRE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
local due = redis.call('HGET', KEYS[2], 'due')
if not due then
  redis.call('ZREM', KEYS[3], ARGV[8])
  return {'gone'}
end
if due ~= ARGV[2] then return {'stale', due} end
local queued = redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[6])
if queued == 1 then
  local progress = cjson.encode({id = ARGV[4], sent = 0, started = tonumber(ARGV[5])})
  redis.call('SET', KEYS[5], progress, 'EX', ARGV[6])
end
if ARGV[7] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[8])
else
  redis.call('HSET', KEYS[2], 'due', ARGV[7])
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
end
return {'fired', queued}
"""
)

# KEYS: hash, index. ARGV: rid. Deletes a reminder; 1 if it was there.
DROP = Script(
    """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
)


class RedisReminders:
    """Sets, lists and cancels reminders, and finds the due ones."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        log: Logger | None = None,
        default_zone: str = "UTC",
        admins: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
        limit: int = MAX_PENDING,
    ) -> None:
        self.redis = redis
        self.log = log
        self.default_zone = default_zone
        self.admins = admins
        self.clock = clock
        self.limit = limit
        self._add = ADD.on(redis)
        self._drop = DROP.on(redis)
        self._claim = CLAIM_DUE.on(redis)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def zone(self, sender: str) -> str:
        """The sender's zone (/tz), else agents.defaults.timezone."""
        stored = await self.redis.get(zone_key(sender))
        return str(stored) if stored else self.default_zone

    async def set_zone(self, sender: str, zone: str) -> None:
        await self.redis.set(zone_key(sender), zone)

    async def add(
        self,
        *,
        channel: str,
        conversation: str,
        sender: str,
        text: str,
        due: datetime,
        zone: str,
        rule: Rule | None = None,
    ) -> Reminder:
        """Keep a reminder (CommandError past the limit of pending ones; admins have none).
        The due index entry goes first: a claim that finds no hash yet only drops the entry,
        and the slot is in the future, so no worker looks before the hash is there."""
        reminder = Reminder(
            id=uuid.uuid4().hex[:12],
            channel=channel,
            conversation=conversation,
            sender=sender,
            text=text,
            due=int(due.timestamp() * 1000),
            zone=zone,
            rule=rule,
            created=int(self.clock() * 1000),
        )
        limit = 0 if sender in self.admins else self.limit
        flat = [item for pair in reminder.to_fields().items() for item in pair]
        await self.redis.zadd(DUE_KEY, {due_member(conversation, reminder.id): reminder.due})
        keys = [reminder_key(conversation, reminder.id), index_key(conversation)]
        if not await self._add(keys=keys, args=[limit, reminder.due, reminder.id, *flat]):
            await self.redis.zrem(DUE_KEY, due_member(conversation, reminder.id))
            raise CommandError(
                f"You have {self.limit} reminders pending, the most allowed: "
                "cancel one first (/remind list, /remind cancel N)."
            )
        if self.log is not None:
            self.log.info(
                "reminder_set",
                channel=channel,
                conversation=conversation,
                id=reminder.id,
                due=reminder.due_at.isoformat(),
                zone=zone,
                recurring=rule is not None,
            )
        return reminder

    async def pending(self, conversation: str) -> list[Reminder]:
        """The conversation's reminders, soonest first."""
        rids = await self.redis.zrange(index_key(conversation), 0, -1)
        if not rids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in rids:
                pipe.hgetall(reminder_key(conversation, str(rid)))
            found = await pipe.execute()
        return [Reminder.from_fields(f) for f in found if f]

    async def get(self, conversation: str, rid: str) -> Reminder | None:
        fields = cast("dict[str, str]", await self.redis.hgetall(reminder_key(conversation, rid)))
        return Reminder.from_fields(fields) if fields else None

    async def cancel(self, conversation: str, rid: str) -> bool:
        """Delete a reminder; False if it was not pending."""
        keys = [reminder_key(conversation, rid), index_key(conversation)]
        dropped = bool(await self._drop(keys=keys, args=[rid]))
        await self.redis.zrem(DUE_KEY, due_member(conversation, rid))
        return dropped

    async def everything(self) -> list[Reminder]:
        """Every pending reminder, soonest first (for `bot reminders list`)."""
        members = await self.redis.zrange(DUE_KEY, 0, -1)
        found = [await self.get(*split_member(str(m))) for m in members]
        return sorted((r for r in found if r is not None), key=lambda r: r.due)

    async def find(self, rid: str) -> Reminder | None:
        """A pending reminder by its id alone (for `bot reminders cancel ID`)."""
        async for member, _ in self.redis.zscan_iter(DUE_KEY, match=f"{rid}:*"):
            return await self.get(*split_member(str(member)))
        return None

    async def claim_due(self, count: int, hold_ms: int) -> list[tuple[str, str]]:
        """Due reminders as (conversation, rid), up to `count`, each held back `hold_ms` so
        that one worker looks at it (and another does if that one dies)."""
        now = int(self.clock() * 1000)
        found = await self._claim(keys=[DUE_KEY], args=[now, count, now + hold_ms])
        return decode_claimed(found)

    def queue_claim_due(self, pipe: Pipeline, count: int, hold_ms: int) -> None:
        """`claim_due` as one command of a pipeline (decode its reply with decode_claimed):
        the worker sends it with the outbox's due poll, so it costs no round trip of its own."""
        now = int(self.clock() * 1000)
        CLAIM_DUE.queue(pipe, [DUE_KEY], [now, count, now + hold_ms])

    async def reindex(self, conversation: str, rid: str, due: int | None) -> None:
        """Put the due index right after a firing: the next slot, or no entry."""
        member = due_member(conversation, rid)
        if due is None:
            await self.redis.zrem(DUE_KEY, member)
        else:
            await self.redis.zadd(DUE_KEY, {member: due})

"""The outbox: replies kept in Redis until the platform took them, delivered in order.

A conversation's replies wait in `conv:{id}:outbox` (oldest first, each with its chunks); the
head's progress (chunks accepted, whether a send of the next one may have begun, the next
attempt) lives in `conv:{id}:outbox:progress`, one string: a small JSON object (see `Head`),
written whole with one SET (its expiry with it, or KEEPTTL) and read with one GET. Every write
is fenced by the conversation's lease. Versions before it kept the progress in a hash,
`conv:{id}:outbox:head`: the new name means such a hash, left by a reply in flight during an
upgrade, is never read as the string (WRONGTYPE). That reply simply has no progress under the
new name, which LOAD treats as lost progress: from its first chunk, with `started` 0 (a send
may have begun, so the platform is asked first where it can tell; a longer reply's later chunks
that the old version sent go again). The old hash is left to expire.

A retryable failure (5xx, 429, network) leaves the reply there with a backoff time in the
shared due set that every worker polls; later replies wait behind it; a reply older than
`agents.defaults.deliveryRetrySeconds` is dropped with a `reply_expired` error event; one to a
person the platform calls unreachable is dropped at once (`recipient_unreachable`). A lookup that
only avoids a duplicate never loses a reply: refused, the chunk is sent anyway (at least once).
The scripts and the flush that runs them stay together (under 500 lines): each fences
what the other assumes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot.errors import ChannelSendError, RecipientUnreachable
from bot.logs import Logger
from bot.memory import conversation_key
from bot.messages import OutboundMessage
from bot.roundtrips import coalescer_for
from bot.scripts import Script

DUE_KEY = "switchboard:outbox:due"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
UNKNOWN_START = 0  # `started` of a head whose progress was lost: since the reply was queued


class ReplySender(Protocol):
    """Anything that can deliver a whole reply on one channel (e.g. the console)."""

    async def send(self, message: OutboundMessage) -> None: ...


@runtime_checkable
class ChunkSender(Protocol):
    """A channel that splits a reply into platform messages and sends them one at a time."""

    def chunks(self, message: OutboundMessage) -> list[str]:
        """The reply as the platform messages it is sent in, in order."""
        ...

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        """One attempt at one chunk; raise ChannelSendError (`retryable`, `retry_after`)."""
        ...


@runtime_checkable
class AcceptanceCheck(Protocol):
    """A channel that can tell whether the platform already took a chunk (WhatsApp can)."""

    async def accepted(self, message: OutboundMessage, chunk: str, since: float) -> bool:
        """True if `chunk` was accepted for this conversation at or after `since` (epoch s)."""
        ...


class Step(enum.StrEnum):
    """What became of one chunk."""

    SENT = "sent"  # the platform took it (now or, as it says, before)
    DROPPED = "dropped"  # a failure that retrying cannot fix: the rest of the reply is dropped


class Tag(enum.StrEnum):
    """The first element of LOAD's and ADVANCE's replies: what the rest of the reply holds."""

    LOST = "lost"  # the lease is another worker's (or the head changed hands): nothing
    EMPTY = "empty"  # the outbox is empty (ADVANCE: then whether it was in the due set)
    HEAD = "head"  # LOAD: the head entry and its progress (JSON)
    MORE = "more"  # ADVANCE: the head has chunks left
    NEXT = "next"  # ADVANCE: the next entry, now the head, and whether it is a retry


class Flush(enum.StrEnum):
    """How a flush of a conversation's outbox ended."""

    EMPTY = "empty"  # everything delivered (or dropped with an event)
    WAITING = "waiting"  # the head waits for its next attempt (in the due set)
    LOST = "lost"  # the lease was lost: another worker carries on


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One queued reply: its id, when it was queued (epoch ms), the reply and its chunks."""

    id: str
    at: int
    reply: OutboundMessage
    chunks: list[str]

    def to_json(self) -> str:
        data = {"id": self.id, "at": self.at, "reply": self.reply.to_dict(), "chunks": self.chunks}
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        data = json.loads(text)
        return cls(
            id=data["id"],
            at=int(data["at"]),
            reply=OutboundMessage.from_dict(data["reply"]),
            chunks=list(data["chunks"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """The reply being delivered and its progress. `started` (epoch ms): a send of chunk
    `sent` may have begun then (None: not tried yet). `retrying`: the conversation is in
    the due set. `unlisted`: the platform refused a lookup for it (`reconcile_failed`), so
    its resends go without one.

    In Redis (`head_key`) the progress is a JSON object: `id` (the entry's), `sent`, and
    when set `started`, `attempts`, `next` (next_at), `retrying` (1), `unlisted` (1); a field
    not set is left out."""

    entry: Entry
    sent: int = 0
    started: int | None = None
    attempts: int = 0
    next_at: int = 0
    retrying: bool = False
    unlisted: bool = False


def outbox_key(conversation: str) -> str:
    return conversation_key(conversation, "outbox")


def head_key(conversation: str) -> str:
    """The head's progress, a JSON string (not `outbox:head`: that name held a hash)."""
    return conversation_key(conversation, "outbox:progress")


# KEYS: lease, outbox, head. ARGV: token, ttl s. Replies {'lost'}, {'empty'} or {'head', entry,
# progress JSON}. A head whose progress is missing (or another reply's: lost, expired, or left
# under the old hash name by an earlier version) gets new progress, expiring in ttl s, with
# `started` 0: a send may have begun since it was queued.
LOAD = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
local entry = redis.call('LINDEX', KEYS[2], 0)
if not entry then
  redis.call('DEL', KEYS[3])
  return {'empty'}
end
local id = cjson.decode(entry)['id']
local progress = redis.call('GET', KEYS[3])
if not progress or cjson.decode(progress)['id'] ~= id then
  progress = cjson.encode({id = id, sent = 0, started = 0})
  redis.call('SET', KEYS[3], progress, 'EX', ARGV[2])
end
return {'head', entry, progress}
"""
)

# KEYS: lease, outbox, head. ARGV: token, head id, chunks now accepted (or skipped), chunks
# in all, now ms, '1' when the next chunk is sent at once, ttl s. Records progress (its expiry
# kept); once the head is done, pops it and makes the next reply the head (`started` now if
# ARGV[6] is '1', `retrying` carried over, expiring in ttl s). Replies {'lost'}, {'more'},
# {'next', entry, retrying} or {'empty', retrying} (retrying: '1' or ''). A done head's
# progress is read and deleted in one GETDEL; if it is not the caller's head it is put back as
# it was (its expiry then ttl s again) and nothing else changes. The head is popped with the
# next reply (LPOP of two: one command when it was the last, the common case), the next pushed
# back (the outbox's expiry set again to ttl s if that emptied it).
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
local more = tonumber(ARGV[3]) < tonumber(ARGV[4])
local raw = redis.call(more and 'GET' or 'GETDEL', KEYS[3])
local head = raw and cjson.decode(raw)
if not head or head['id'] ~= ARGV[2] then
  if raw and not more then redis.call('SET', KEYS[3], raw, 'EX', ARGV[7]) end
  return {'lost'}
end
if more then
  head['sent'] = tonumber(ARGV[3])
  if ARGV[6] == '1' then head['started'] = tonumber(ARGV[5]) else head['started'] = nil end
  redis.call('SET', KEYS[3], cjson.encode(head), 'KEEPTTL')
  return {'more'}
end
local retrying = head['retrying'] and '1' or ''
local popped = redis.call('LPOP', KEYS[2], 2)  -- the head and the next, if any
local entry = popped and popped[2]
if not entry then return {'empty', retrying} end
if redis.call('LPUSH', KEYS[2], entry) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
local progress = {id = cjson.decode(entry)['id'], sent = 0}
if retrying ~= '' then progress['retrying'] = 1 end
if ARGV[6] == '1' then progress['started'] = tonumber(ARGV[5]) end
redis.call('SET', KEYS[3], cjson.encode(progress), 'EX', ARGV[7])
return {'next', entry, retrying}
"""
ADVANCE = Script(_ADVANCE)


def advance_then(then: str) -> Script:
    """ADVANCE with `then`, a Lua body, run in the same script call once ADVANCE has emptied
    the outbox: what a caller does next (a worker finishing its turn), in the call that
    records the last send. KEYS: ADVANCE's three, then `then`'s; ARGV: ADVANCE's seven, then
    `then`'s (in `then`, KEYS and ARGV are its own). `then` runs only after ADVANCE found the
    lease held by the token and left the outbox empty. Replies {ADVANCE's reply} or, after
    `then`, {ADVANCE's reply, then's reply}."""
    return Script(
        f"""
local function advance(KEYS, ARGV)
{_ADVANCE}
end
local function after(KEYS, ARGV)
{then}
end
local done = advance({{KEYS[1], KEYS[2], KEYS[3]}}, {{unpack(ARGV, 1, 7)}})
if done[1] ~= 'empty' then return {{done}} end
return {{done, after({{unpack(KEYS, 4)}}, {{unpack(ARGV, 8)}})}}
"""
    )


@dataclass(frozen=True, slots=True)
class Then:
    """What a flush runs in the ADVANCE that empties the outbox: a script made by
    `advance_then`, and its own keys and arguments."""

    script: Script
    keys: list[str]
    args: list[str | int]


# KEYS: lease, head. ARGV: token, head id, attempts, next attempt ms. Sets them and `retrying`
# in the head's progress (its expiry kept). 1, or 0 (fenced off, or not that head).
SCHEDULE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local raw = redis.call('GET', KEYS[2])
local head = raw and cjson.decode(raw)
if not head or head['id'] ~= ARGV[2] then return 0 end
head['attempts'] = tonumber(ARGV[3])
head['next'] = tonumber(ARGV[4])
head['retrying'] = 1
redis.call('SET', KEYS[2], cjson.encode(head), 'KEEPTTL')
return 1
"""
)

# KEYS: lease, head. ARGV: token, head id. Marks the head `unlisted` (its lookup was refused;
# its expiry kept). 1, or 0 (fenced off, or not that head).
UNLIST = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local raw = redis.call('GET', KEYS[2])
local head = raw and cjson.decode(raw)
if not head or head['id'] ~= ARGV[2] then return 0 end
head['unlisted'] = 1
redis.call('SET', KEYS[2], cjson.encode(head), 'KEEPTTL')
return 1
"""
)

# KEYS: lease, outbox, head, batch. ARGV: token, entry JSON, entry id, ttl s. Moves a reply
# stored in its batch by an earlier version to the outbox; a new head gets `started` 0 (it may
# have been sent), its progress replacing any left (one SET with the ttl).
ENQUEUE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HDEL', KEYS[4], 'reply') == 0 then return 1 end
if redis.call('RPUSH', KEYS[2], ARGV[2]) == 1 then
  local progress = cjson.encode({id = ARGV[3], sent = 0, started = 0})
  redis.call('SET', KEYS[3], progress, 'EX', ARGV[4])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
)

# KEYS: due. ARGV: now ms, count, claimed until ms. Due conversations, each pushed back to
# `claimed until` so that one worker takes it (and another does if that one dies).
CLAIM_DUE = Script(
    """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], member) end
return due
"""
)


class Outbox:
    """Queues replies and delivers a conversation's outbox for the worker holding its lease."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        senders: Mapping[str, ReplySender | ChunkSender],
        log: Logger,
        retry_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.senders = senders
        # What each channel can do, found once: a runtime Protocol check costs microseconds.
        self._chunkers = {n: s for n, s in senders.items() if isinstance(s, ChunkSender)}
        self._checkers = {n: s for n, s in senders.items() if isinstance(s, AcceptanceCheck)}
        self.log = log
        self.retry_ms = int(retry_seconds * 1000)
        self.ttl_seconds = int(retry_seconds) + 86400  # a safety net; expiry normally drops it
        self.clock = clock
        self._load = LOAD.on(redis)
        self._trips = coalescer_for(redis)  # ADVANCE/FINISH's round trip, shared
        self._enqueue = ENQUEUE.on(redis)
        self._claim_due = CLAIM_DUE.on(redis)
        self._unlist = UNLIST.on(redis)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def entry(self, reply: OutboundMessage) -> Entry:
        """A reply as it is queued: the chunks its channel sends it in (one when it has none)."""
        chunker = self._chunkers.get(reply.channel)
        chunks = chunker.chunks(reply) if chunker is not None else [reply.text]
        return Entry(id=uuid.uuid4().hex, at=self.now_ms(), reply=reply, chunks=chunks)

    async def enqueue_legacy(self, lease: str, batch: str, token: str, entry: Entry) -> bool:
        """Move a reply an earlier version stored in its batch to the outbox (False if the
        lease is lost)."""
        conversation = entry.reply.conversation
        keys = [lease, outbox_key(conversation), head_key(conversation), batch]
        args: list[str | int] = [token, entry.to_json(), entry.id, self.ttl_seconds]
        return bool(await self._enqueue(keys=keys, args=args))

    async def claim_due(self, count: int, hold_ms: int) -> list[str]:
        """Conversations whose next delivery attempt is due, up to `count`, held for `hold_ms`."""
        if count <= 0:
            return []
        now = self.now_ms()
        found = await self._claim_due(keys=[DUE_KEY], args=[now, count, now + hold_ms])
        return [str(member) for member in found]

    def queue_claim_due(self, pipe: Pipeline, count: int, hold_ms: int) -> None:
        """`claim_due` as one command of a pipeline (its reply: the conversations' ids), for a
        poll that shares its round trip with another."""
        now = self.now_ms()
        CLAIM_DUE.queue(pipe, [DUE_KEY], [now, count, now + hold_ms])

    async def flush(
        self,
        conversation: str,
        lease: str,
        token: str,
        *,
        fresh: Entry | None = None,
        lost: asyncio.Event | None = None,
    ) -> Flush:
        """Deliver the outbox head first until it is empty or has to wait.

        `fresh`: the reply the caller just queued at the head with a send marked started,
        so its first chunk goes out without reading the outbox first."""
        flushed, _ = await self.flush_then(conversation, lease, token, fresh=fresh, lost=lost)
        return flushed

    async def flush_then(
        self,
        conversation: str,
        lease: str,
        token: str,
        *,
        fresh: Entry | None = None,
        lost: asyncio.Event | None = None,
        then: Then | None = None,
    ) -> tuple[Flush, Any]:
        """`flush`, and `then` run by the ADVANCE that empties the outbox, in its script call:
        what the caller does next (a worker finishing its turn), saving a script call and a
        round trip. Its reply is given back (else None) when the flush ended that way."""
        keys = [lease, outbox_key(conversation), head_key(conversation)]
        head: Head | None
        if fresh is not None:
            head = Head(entry=fresh, started=fresh.at)
            continuing = True  # the started mark is ours: no send has begun yet
        else:
            loaded = cast("list[Any]", await self._load(keys=keys, args=[token, self.ttl_seconds]))
            tag = Tag(loaded[0])
            if tag is Tag.LOST:
                return Flush.LOST, None
            head = None if tag is Tag.EMPTY else self._decode_head(loaded)
            if head is None:  # a worker may have died between emptying it and leaving the set
                await self.redis.zrem(DUE_KEY, conversation)
            continuing = False
        while head is not None:
            if lost is not None and lost.is_set():
                return Flush.LOST, None
            now = self.now_ms()
            if head.next_at > now:
                return Flush.WAITING, None
            if head.attempts and now >= head.entry.at + self.retry_ms:
                self._expired(head)
                done = len(head.entry.chunks)
            else:
                outcome = await self._attempt(keys, token, head, continuing=continuing)
                if isinstance(outcome, Flush):
                    return outcome, None
                done = head.sent + 1 if outcome is Step.SENT else len(head.entry.chunks)
            step, after = await self._step(keys, token, head, done, then)
            if isinstance(step, Flush):
                return step, after if step is Flush.EMPTY else None
            head, continuing = step, True
        return Flush.EMPTY, None

    async def _attempt(
        self, keys: list[str], token: str, head: Head, *, continuing: bool
    ) -> Step | Flush:
        """Send chunk `head.sent`, unless the platform already took it (a resumed send)."""
        entry = head.entry
        reply = entry.reply
        fields = {"channel": reply.channel, "conversation": reply.conversation}
        part = f"{head.sent + 1}/{len(entry.chunks)}"
        sender = self.senders.get(reply.channel)
        if sender is None:
            error = f"no {reply.channel!r} channel is configured in this process"
            self.log.error("send_failed", **fields, error=error, retryable=False, part=part)
            return Step.DROPPED
        chunk = entry.chunks[head.sent]
        try:
            taken: bool | Flush = False
            if not continuing and head.started is not None and not head.unlisted:
                taken = await self._reconcile(keys, token, head, chunk, part)
            if taken is Flush.LOST:
                return Flush.LOST
            if taken:
                self.log.info("send_reconciled", **fields, part=part, msg_id=reply.reply_to)
            elif (chunker := self._chunkers.get(reply.channel)) is not None:
                await chunker.send_chunk(reply, chunk)
            else:
                await cast("ReplySender", sender).send(dataclasses.replace(reply, text=chunk))
        except RecipientUnreachable as exc:
            self.log.warning(
                "recipient_unreachable",
                **fields,
                msg_id=reply.reply_to,
                code=exc.code,
                error=str(exc),
                part=part,
            )
            self._reminder_failed(reply, exc)
            return Step.DROPPED
        except ChannelSendError as exc:
            if exc.retryable:
                return await self._retry(keys, token, head, exc, part)
            self.log.error("send_failed", **fields, error=str(exc), retryable=False, part=part)
            self._reminder_failed(reply, exc)
            return Step.DROPPED
        if head.sent + 1 == len(entry.chunks):
            self.log.info(
                "reply_sent",
                **fields,
                msg_id=reply.reply_to,
                reply=reply.text,
                chunks=len(entry.chunks),
            )
        return Step.SENT

    async def _reconcile(
        self,
        keys: list[str],
        token: str,
        head: Head,
        chunk: str,
        part: str,
    ) -> bool | Flush:
        """Whether the platform already took the chunk whose send may have begun (True: skip
        it). A retryable lookup failure is raised, to be retried like a send; any other is
        logged once per reply (`reconcile_failed`) and the chunk is sent anyway, as are the
        reply's later resends, without a lookup. Flush.LOST if the lease went meanwhile."""
        reply = head.entry.reply
        sender = self._checkers.get(reply.channel)
        if sender is None:
            return False
        try:
            return await sender.accepted(reply, chunk, self._since(head) / 1000)
        except ChannelSendError as exc:
            if exc.retryable:
                raise
            self.log.warning(
                "reconcile_failed",
                channel=reply.channel,
                conversation=reply.conversation,
                msg_id=reply.reply_to,
                part=part,
                status=exc.status,
                error=f"{exc}; the chunk is sent without the check (a duplicate is possible)",
            )
        marked = await self._unlist(keys=[keys[0], keys[2]], args=[token, head.entry.id])
        return False if marked else Flush.LOST

    async def _step(
        self, keys: list[str], token: str, head: Head, done: int, then: Then | None = None
    ) -> tuple[Head | Flush, Any]:
        """Record that the head's first `done` chunks are dealt with (one script call, running
        `then` if it empties the outbox), marking the next send started; the head to go on
        with, or how the flush ends, and `then`'s reply (None if it did not run)."""
        total, now = len(head.entry.chunks), self.now_ms()
        args: list[str | int] = [token, head.entry.id, done, total, now, "1", self.ttl_seconds]
        script = ADVANCE if then is None else then.script
        if then is not None:
            keys, args = keys + then.keys, args + then.args
        # One round trip with the other turns committing or finishing in this loop iteration.
        (reply,) = await self._trips.run(lambda pipe: script.queue(pipe, keys, args))
        if isinstance(reply, Exception):
            raise reply
        after = None
        if then is not None:  # {ADVANCE's reply} or {ADVANCE's reply, then's reply}
            replies = cast("list[Any]", reply)
            reply, after = replies[0], replies[1] if len(replies) > 1 else None
        tag = Tag(reply[0])
        if tag is Tag.LOST:
            return Flush.LOST, None
        if tag is Tag.MORE:
            return dataclasses.replace(head, sent=done, started=now), None
        if tag is Tag.EMPTY:
            if reply[-1]:  # it was in the due set, and nothing is left to retry
                await self.redis.zrem(DUE_KEY, head.entry.reply.conversation)
            return Flush.EMPTY, after
        return Head(entry=Entry.from_json(reply[1]), started=now, retrying=bool(reply[2])), None

    def _reminder_failed(self, reply: OutboundMessage, exc: ChannelSendError) -> None:
        """Say, besides send_failed, that a reminder (a message nobody just asked for) was
        refused; the error carries the platform's hint (WhatsApp 63016: a template)."""
        if reply.quiet_for is None:
            return
        self.log.error(
            "reminder_failed",
            channel=reply.channel,
            conversation=reply.conversation,
            quiet_for=round(reply.quiet_for),
            error=str(exc),
        )

    def _decode_head(self, loaded: list[Any]) -> Head:
        """LOAD's {'head', entry, progress JSON} reply as a Head."""
        fields: dict[str, Any] = json.loads(loaded[2])
        started = fields.get("started")
        return Head(
            entry=Entry.from_json(loaded[1]),
            sent=int(fields.get("sent", 0)),
            started=int(started) if started is not None else None,
            attempts=int(fields.get("attempts", 0)),
            next_at=int(fields.get("next", 0)),
            retrying=bool(fields.get("retrying")),
            unlisted=bool(fields.get("unlisted")),
        )

    def _expired(self, head: Head) -> None:
        """Say, as an error an operator sees, that a reply was given up on."""
        reply = head.entry.reply
        self.log.error(
            "reply_expired",
            channel=reply.channel,
            conversation=reply.conversation,
            msg_id=reply.reply_to,
            undelivered=len(head.entry.chunks) - head.sent,
            chunks=len(head.entry.chunks),
            attempts=head.attempts,
            error=f"not delivered within deliveryRetrySeconds ({self.retry_ms // 1000} s)",
        )

    def _since(self, head: Head) -> int:
        """From when a send of the head's next chunk may have begun (epoch ms)."""
        if head.started is None or head.started == UNKNOWN_START:
            return head.entry.at
        return head.started

    async def _retry(
        self, keys: list[str], token: str, head: Head, exc: ChannelSendError, part: str
    ) -> Flush:
        """Schedule the next attempt with backoff, or after the platform's Retry-After."""
        attempts = head.attempts + 1
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
        delay = exc.retry_after if exc.retry_after is not None else backoff
        now = self.now_ms()
        next_at = max(now, min(now + int(delay * 1000), head.entry.at + self.retry_ms))
        conversation = head.entry.reply.conversation
        async with self.redis.pipeline(transaction=False) as pipe:
            SCHEDULE.queue(pipe, [keys[0], keys[2]], [token, head.entry.id, attempts, next_at])
            pipe.zadd(DUE_KEY, {conversation: next_at})
            scheduled, _ = await pipe.execute()
        self.log.warning(
            "send_retry",
            channel=head.entry.reply.channel,
            conversation=conversation,
            part=part,
            attempt=attempts,
            error=str(exc),
            ms=next_at - now,
        )
        return Flush.WAITING if scheduled else Flush.LOST

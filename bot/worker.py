"""The turn runner (worker role): lease a ready conversation, run its turns, deliver replies.

A conversation is run by one worker at a time (a lease in Redis, renewed while the turn
runs). Its inbox is drained into a batch whose state moves pending → replied (the reply is in
the conversation's outbox, bot.delivery) → deleted (once the outbox was flushed), each step
fenced by the lease token, so a worker that lost its lease can change nothing and a worker
that takes over resumes where the dead one stopped: a stored reply is sent, never generated
again, and chunks the platform took are not sent again. Wake-ups come from the `ready`
stream's consumer group; entries of dead workers are reclaimed once idle for a lease period;
replies waiting to be retried come from the outbox's due set, and due reminders
(bot.reminders) from their own due index, polled in the same round trip.

Nothing wedges: whatever fails inside a turn ends in a short reply to the person, or, when
nobody can be told (the batch is unreadable, the reply cannot go out), the batch is left for the
next taker and, after MAX_ATTEMPTS takes (counted on the batch in Redis), moved to the dead
letters. A lost consumer group (Redis came back empty) is recreated, and a periodic sweep wakes
every conversation whose wake-up was lost.

One module, over 400 lines, on purpose: the Lua scripts (TAKE, FINISH, COMMIT, RENEW,
RELEASE), the lease keeper and the turn loop fence one another, and a change to one is only
safe read beside the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.agent import Prefetched, TurnResult
from bot.deadletters import MAX_ATTEMPTS, RedisDeadLetters
from bot.delivery import (
    ChunkSender,
    Entry,
    Flush,
    Outbox,
    ReplySender,
    Then,
    advance_then,
    head_key,
    outbox_key,
)
from bot.errors import ChannelSendError, TurnFenced
from bot.intake import READY_STREAM, inbox_key
from bot.llm.preview import GuardedPreview, TurnPreview
from bot.llm.types import Preview
from bot.logs import Logger
from bot.messages import InboundMessage, OutboundMessage
from bot.reads import Read, Write, execute_sharing
from bot.reminders import RedisReminders, ReminderFirer, decode_claimed
from bot.roundtrips import coalescer_for
from bot.scripts import Script, load_scripts
from bot.tools import Journal, JournalStep, RedisToolJournal, steps_in
from bot.wakeups import (
    GROUP,
    Sweeper,
    batch_key,
    ensure_group,
    group_lost,
    lease_key,
    queue_acks,
)

CRASHED = "Something went wrong with that message; please try again."
RELEASE_SECONDS = 2.0  # at most this long to give a lease up on the way out of a cancelled turn
FIRST_RETRY = 0.1  # seconds before the first retry of an unreachable Redis; doubles each time
# Redis errors worth waiting out: the server is down, restarting, loading, failing over or full.
TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    MasterDownError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,
    OSError,
)

# KEYS: lease, batch, inbox. ARGV: token, new batch id, lease ms, the batch just finished ('' on
# the first call), TAKE_MAX. The first call claims the lease (or finds another worker holding
# it); a later call deletes the finished batch (the only one stored: only the lease's holder
# writes it, and the token proves the lease was held since the claim). Then: the batch (a
# stored one, else the inbox drained into a new one, at most TAKE_MAX messages) as a flat field
# list, or {'released'} when the inbox is empty (the lease is given up), {'busy'} (another worker
# holds the lease), {'lost'} (ours expired or was taken). Every take of a stored batch counts an
# attempt on it (a new batch starts at 1). A new batch's fields are returned as written, not read
# back. With ARGV[6] '1' the caller has just found the lease held by the token, in the same
# script call: FINISH, the ADVANCE that sends a turn's reply's last chunk and finishes the turn.
_TAKE = """
local finished = ARGV[4] ~= ''
if not finished then
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then return {'busy'} end
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HINCRBY', KEYS[2], 'attempts', 1)
    return redis.call('HGETALL', KEYS[2])
  end
elseif ARGV[6] ~= '1' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'lost'}
end
-- A finished batch is deleted (the lease was ours throughout: so is the batch it finished),
-- with the lease in one DEL when the inbox is empty.
local messages = redis.call('LPOP', KEYS[3], ARGV[5])
if not messages then
  if finished then redis.call('DEL', KEYS[2], KEYS[1]) else redis.call('DEL', KEYS[1]) end
  return {'released'}
end
if finished then redis.call('DEL', KEYS[2]) end
local batch = {'id', ARGV[2], 'owner', ARGV[1], 'state', 'pending', 'attempts', '1',
  'messages', '[' .. table.concat(messages, ',') .. ']'}
redis.call('HSET', KEYS[2], unpack(batch))
return batch
"""
TAKE = Script(_TAKE)
# The ADVANCE of a reply's last chunk that, once the outbox is empty, finishes the turn as TAKE
# (bot.delivery.advance_then): one script call, the lease checked once.
FINISH = advance_then(_TAKE)
TAKE_MAX = 1000  # messages in one batch; more wait in the inbox for the next

# KEYS: lease, batch, turns, summary, base, outbox, outbox head. ARGV: token, batch id, outbox
# entry JSON ('' for no reply), ttl s, entry id, now ms, outbox ttl s, '1' when the turn found
# no memory (TurnResult.fresh) else '', turn JSON... Appends the turn to memory and queues the
# reply in the outbox, or nothing if fenced off. The memory's expiry is pushed back to ttl when
# its turns were just created or less than ttl - min(1 h, ttl/10) is left (a conversation is
# forgotten ttl after its last turn, give or take that); with new turns, a summary and base are
# looked for (to push theirs back too) unless the turn found no memory: under the lease only
# this turn could have written them, and compaction has no stored turns to fold then.
# Returns 0 (fenced off), 1 (no reply), 2 (the reply is the outbox head, its send marked started
# now: its progress, bot.delivery's JSON string, written whole with the outbox ttl), 3 or more
# (it waits behind earlier replies).
COMMIT = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local batch = redis.call('HMGET', KEYS[2], 'id', 'state')
if batch[1] ~= ARGV[2] or batch[2] ~= 'pending' then return 0 end
if #ARGV > 8 then
  local ttl = tonumber(ARGV[4])
  if redis.call('RPUSH', KEYS[3], unpack(ARGV, 9)) == #ARGV - 8 then
    redis.call('EXPIRE', KEYS[3], ttl)  -- new turns: a summary, if any, is pushed back too
    if ARGV[8] == '' and redis.call('EXISTS', KEYS[4], KEYS[5]) > 0 then
      for i = 4, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
    end
  elseif redis.call('TTL', KEYS[3]) < ttl - math.min(3600, math.floor(ttl / 10)) then
    for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
redis.call('HSET', KEYS[2], 'state', 'replied')
if ARGV[3] == '' then return 1 end
local queued = redis.call('RPUSH', KEYS[6], ARGV[3])
redis.call('EXPIRE', KEYS[6], ARGV[7])
if queued == 1 then
  local progress = cjson.encode({id = ARGV[5], sent = 0, started = tonumber(ARGV[6])})
  redis.call('SET', KEYS[7], progress, 'EX', ARGV[7])
end
return queued + 1
"""
)

# KEYS: lease. ARGV: token, ttl ms.
RENEW = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
)

# KEYS: lease. ARGV: token. Give up a lease if it is still ours.
RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


class TurnRunner(Protocol):
    """What a worker needs of the agent: one turn for a batch of messages, and whether a
    crashed turn's sender may be told."""

    async def run_turn(
        self,
        batch: Sequence[InboundMessage],
        *,
        allowed: Callable[[], None] | None = None,
        preview: Preview | None = None,
        journal: Journal | None = None,
        writes: list[Write] | None = None,
        prefetched: Prefetched | None = None,
    ) -> TurnResult: ...

    async def may_tell(self, message: InboundMessage) -> bool:
        """May this message's sender get a reply at all (not a stranger)?"""
        ...

    def prefetch(
        self, conversation: str, channel: str, sender: str, *, lease: str, token: str
    ) -> Read[Prefetched] | None:
        """A turn's first reads, to send with the TAKE claiming the conversation (None: the
        turn reads them itself)."""
        ...


class TurnMemory(Protocol):
    """What COMMIT needs of the conversation memory: its keys and how long they live."""

    @property
    def ttl_seconds(self) -> int: ...

    def keys(self, conversation: str) -> list[str]: ...


@runtime_checkable
class TypingIndicator(Protocol):
    """A channel that can show "typing…" while a turn runs, for the newest message of the
    batch, renewed every `typing_every` seconds (how long the platform shows it, less a margin)."""

    @property
    def typing_every(self) -> float: ...

    async def typing(self, message: InboundMessage) -> None: ...


@runtime_checkable
class Previewing(Protocol):
    """A channel that can show a turn's answer while it is written (the terminal; Telegram
    drafts): the preview of the turn answering `message`, the newest of its batch, or None
    where this chat gets none (a group, streaming off)."""

    def preview(self, message: InboundMessage) -> TurnPreview | None: ...


TYPING_TIMEOUT = 10.0  # seconds one typing call may take; it runs beside the turn, never before it
DUE_EVERY = 0.25  # seconds between polls of the outbox's due set
READ_BLOCK_MS = 500  # how long a read of the ready stream waits for a new entry
# Finished wake-ups are acked (and deleted) with a read at most every ACK_EVERY seconds, or
# once ACK_MAX wait: one ACK_OWNED (four commands) a period, not one a read. An entry left
# unacked costs nothing until its worker dies: then it is reclaimed after a lease, its
# conversation found with no work.
ACK_EVERY = 0.25
ACK_MAX = 256
REMINDERS_EVERY = 1.0  # seconds between polls of the reminders' due index


class BatchState(StrEnum):
    """Where a batch is: its turn not yet committed, or committed (its reply in the outbox)."""

    PENDING = "pending"
    REPLIED = "replied"


class Verdict(StrEnum):
    """What TAKE answers instead of a batch."""

    BUSY = "busy"  # another worker holds the lease
    RELEASED = "released"  # the inbox is empty: the lease is given up
    LOST = "lost"  # our lease expired or was taken


Taken = Verdict | list[str]  # a verdict, or the batch as a flat HGETALL list


def decode_take(reply: Any) -> Taken:
    """TAKE's reply as a Verdict (a one-element list), else the batch's flat field list."""
    flat = cast("list[str]", reply)
    return Verdict(flat[0]) if len(flat) == 1 else flat


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """The messages of one turn, and its reply once the turn is committed."""

    id: str
    owner: str
    state: BatchState
    messages: list[InboundMessage]
    reply: OutboundMessage | None
    attempts: int = 1  # takes so far, this one included
    steps: tuple[JournalStep, ...] = ()  # tool steps kept by earlier takes of this turn

    @classmethod
    def from_flat(cls, flat: list[str]) -> Batch:
        fields = flat_fields(flat)
        reply = fields.get("reply")
        return cls(
            id=fields["id"],
            owner=fields["owner"],
            state=BatchState(fields["state"]),
            messages=[InboundMessage.from_dict(m) for m in json.loads(fields["messages"])],
            reply=OutboundMessage.from_dict(json.loads(reply)) if reply else None,
            attempts=int(fields.get("attempts") or 1),
            steps=steps_in(fields),
        )


def flat_fields(flat: list[str]) -> dict[str, str]:
    """A flat HGETALL reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Done(NamedTuple):
    """A finished batch, and what the TAKE made by its reply's last ADVANCE answered (FINISH;
    None when none was made: the worker takes next)."""

    batch: str
    taken: Taken | None = None


class Claim(NamedTuple):
    """A first TAKE made for a turn's task: its lease token, what TAKE returned, and the
    turn's first reads made with it (None: the turn reads them)."""

    token: str
    taken: Taken
    prefetched: Prefetched | None = None


class Worker:
    """Runs conversations' turns from the ready stream, at most `max_concurrent` at once."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        agent: TurnRunner,
        memory: TurnMemory,
        senders: Mapping[str, ReplySender | ChunkSender],
        log: Logger,
        lease_seconds: float = 30,
        max_concurrent: int = 8,
        drain_seconds: float = 30,
        name: str | None = None,
        retry_seconds: float = 5,
        sweep_seconds: float | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        delivery_retry_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
        sweep_skip: tuple[str, ...] = (),
        reminders: RedisReminders | None = None,
    ) -> None:
        """`retry_seconds`: the longest wait between tries while Redis is unreachable;
        `sweep_seconds`: how often lost wake-ups are looked for (default two leases);
        `sweep_skip`: prefixes of conversations the sweep never wakes (bot.wakeups.Sweeper);
        `reminders`: fire due reminders (polled every REMINDERS_EVERY s with the outbox's due
        set, in its round trip; never inside a turn)."""
        self.redis = redis
        self.agent = agent
        self.memory = memory
        self.senders = senders
        # What each channel can do, found once: a runtime Protocol check costs microseconds.
        self._typists = {n: s for n, s in senders.items() if isinstance(s, TypingIndicator)}
        self._previewers = {n: s for n, s in senders.items() if isinstance(s, Previewing)}
        self.log = log
        self.lease_ms = int(lease_seconds * 1000)
        self.max_concurrent = max_concurrent
        self.drain_seconds = drain_seconds
        self.retry_seconds = retry_seconds
        self.sweep_seconds = sweep_seconds if sweep_seconds is not None else 2 * lease_seconds
        self.max_attempts = max_attempts
        self.deadletters = RedisDeadLetters(redis)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sweeper = Sweeper(
            redis, name=self.name, every=self.sweep_seconds, log=log, skip=sweep_skip
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self._typing_calls: set[asyncio.Task[None]] = set()  # typing calls still in flight
        self._done: list[str] = []  # ready entries of finished conversations, not yet acked
        self._ack_at = -math.inf  # loop time of the last ack sent with a read
        self.ack_every = ACK_EVERY
        self._take = TAKE.on(redis)
        self._trips = coalescer_for(redis)  # COMMIT's round trip, shared (group commit)
        self._renew = RENEW.on(redis)
        self._release = RELEASE.on(redis)
        self.outbox = Outbox(
            redis=redis,
            senders=senders,
            log=log,
            retry_seconds=delivery_retry_seconds,
            clock=clock,
        )
        self._next_due = 0.0
        self.reminders = (
            ReminderFirer(
                store=reminders,
                outbox=self.outbox,
                may_tell=agent.may_tell,
                log=log,
                lease_ms=self.lease_ms,
            )
            if reminders is not None
            else None
        )
        self._next_reminders = 0.0
        self._burst = False  # the last claim of due reminders came back full: more are due

    async def run(self, stop: asyncio.Event) -> None:
        """Take work until `stop` is set, then finish in-flight turns (up to drain_seconds).

        An unreachable Redis is waited out (backoff up to retry_seconds), a lost group is
        recreated; any other error ends the task (the process exits, its supervisor restarts
        it)."""
        if not await self._wait_for_redis(stop):
            return
        loop = asyncio.get_running_loop()
        next_reclaim = next_sweep = 0.0
        delay = FIRST_RETRY
        self.log.info("worker_started", worker=self.name, max_concurrent=self.max_concurrent)
        try:
            while not stop.is_set():
                free = self.max_concurrent - len(self.tasks)
                if free <= 0:
                    await asyncio.wait(self.tasks, timeout=1, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    if loop.time() >= next_sweep:
                        next_sweep = loop.time() + self.sweep_seconds
                        await self.sweeper.sweep()
                    entries: list[tuple[str, dict[str, str]]] = []
                    if loop.time() >= next_reclaim:
                        entries += await self._reclaim(free)
                        next_reclaim = loop.time() + self.lease_ms / 2000
                    if not entries:  # in a burst of due reminders: no wait for new entries
                        entries = await self._read(free, block=not self._burst)
                    claims = await self._claim([fields for _, fields in entries])
                    # Never starved: at least one due delivery and one due reminder per poll.
                    due, reminders = await self._claim_due(max(free - len(entries), 1))
                except TRANSIENT as exc:  # what was read is reclaimed after a lease
                    self.log.error(
                        "worker_redis_error", worker=self.name, error=str(exc), retry_in=delay
                    )
                    await _pause(stop, delay)
                    delay = min(delay * 2, self.retry_seconds)
                    continue
                except ResponseError as exc:
                    if not group_lost(exc):
                        raise
                    self.log.warning("worker_group_lost", worker=self.name, error=str(exc))
                    await self._repair()
                    continue
                delay = FIRST_RETRY
                for (entry_id, fields), claim in zip(entries, claims, strict=True):
                    self._spawn(entry_id, fields.get("conversation", ""), claim)
                for conversation in due:
                    self._spawn_due(conversation)
                for conversation, rid in reminders:
                    self._spawn_reminder(conversation, rid)
        finally:
            await self.drain()

    async def _wait_for_redis(self, stop: asyncio.Event) -> bool:
        """Create the group (and load the scripts) once Redis answers, retrying with backoff; False
        if stopped first."""
        delay = FIRST_RETRY
        while not stop.is_set():
            try:
                await ensure_group(self.redis)
                await load_scripts(self.redis)
            except TRANSIENT as exc:
                self.log.warning(
                    "redis_unavailable", worker=self.name, error=str(exc), retry_in=delay
                )
                await _pause(stop, delay)
                delay = min(delay * 2, self.retry_seconds)
                continue
            return True
        return False

    async def _repair(self) -> None:
        """Recreate the group, then wake every conversation with waiting work (their wake-ups
        went with the stream). A transient error here is retried by the run loop."""
        try:
            await ensure_group(self.redis)
            await load_scripts(self.redis)
            woken = await self.sweeper.sweep(force=True)
        except TRANSIENT as exc:
            self.log.error("worker_redis_error", worker=self.name, error=str(exc))
            return
        self.log.warning("worker_group_recreated", worker=self.name, woken=woken)

    async def drain(self) -> None:
        """Wait for in-flight turns; cancel what is left after drain_seconds (they are resumed
        by another worker once their lease expires), then ack the finished ones."""
        if self.tasks:
            self.log.info("worker_draining", worker=self.name, turns=len(self.tasks))
            _, pending = await asyncio.wait(self.tasks, timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for call in list(self._typing_calls):
            call.cancel()
        await asyncio.gather(*self._typing_calls, return_exceptions=True)
        try:
            await self._ack_done()
        except (RedisError, OSError) as exc:  # unacked entries are reclaimed, found empty
            self.log.warning("worker_redis_error", worker=self.name, error=str(exc))

    async def _read(self, count: int, *, block: bool = True) -> list[tuple[str, dict[str, str]]]:
        """New entries, up to `count` (waiting up to READ_BLOCK_MS for one, with `block`); the
        entries of finished conversations are acked (and deleted) in the same round trip, once
        ACK_EVERY has passed since the last such ack or ACK_MAX wait."""
        done = self._acks_due()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                queue_acks(pipe, self.name, done)
                pipe.xreadgroup(
                    GROUP,
                    self.name,
                    {READY_STREAM: ">"},
                    count=count,
                    block=READ_BLOCK_MS if block else None,
                )
                replies = await pipe.execute()
        except BaseException:
            self._done = done + self._done  # acked with a later read
            raise
        found = cast(  # RESP2 shape: [(stream, [(id, fields), …])]
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None", replies[-1]
        )
        return [entry for _, entries in found or [] for entry in entries]

    def _acks_due(self) -> list[str]:
        """The finished entries to ack with this read: every one waiting, once ACK_EVERY has
        passed since the last such ack or ACK_MAX wait; else none (they wait for a later read)."""
        now = asyncio.get_running_loop().time()
        if now - self._ack_at < self.ack_every and len(self._done) < ACK_MAX:
            return []
        done, self._done = self._done, []
        if done:
            self._ack_at = now
        return done

    async def _ack_done(self) -> None:
        """Ack what finished since the last read (on the way out)."""
        done, self._done = self._done, []
        if done:
            async with self.redis.pipeline(transaction=False) as pipe:
                queue_acks(pipe, self.name, done)
                await pipe.execute()

    async def _reclaim(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """Entries a dead worker left pending for longer than a lease."""
        reply = await self.redis.xautoclaim(
            READY_STREAM, GROUP, self.name, min_idle_time=self.lease_ms, count=count
        )
        claimed = [entry for entry in reply[1] if entry and entry[1]]
        for entry_id, fields in claimed:
            self.log.info("turn_reclaimed", conversation=fields.get("conversation"), entry=entry_id)
        return claimed

    async def _claim(self, entries: list[dict[str, str]]) -> list[Claim | None]:
        """The first TAKE of every conversation just read, each with its turn's first reads
        (Agent.prefetch: for a private chat, the wake-up's sender's access check and the
        turn's state), in one round trip (None where the TAKE failed: the turn's task claims
        again; a prefetch that failed is left to the turn). A read every claimed turn makes of
        the same key (the default model, a breaker) is sent once (bot.reads.execute_sharing)."""
        if not entries:
            return []
        tokens = [self._token() for _ in entries]
        reads: list[Read[Prefetched] | None] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for fields, token in zip(entries, tokens, strict=True):
                conversation = fields.get("conversation", "")
                TAKE.queue(pipe, self._take_keys(conversation), self._take_args(token, ""))
                read = self.agent.prefetch(
                    conversation,
                    fields.get("channel", ""),
                    fields.get("sender", ""),
                    lease=lease_key(conversation),
                    token=token,
                )
                if read is not None:
                    read.queue(pipe)
                reads.append(read)
            replies = await execute_sharing(pipe)  # one GET of the default model for them all
        claims: list[Claim | None] = []
        at = 0
        for token, read in zip(tokens, reads, strict=True):
            taken, at = replies[at], at + 1
            if isinstance(taken, Exception):
                claims.append(None)
                at += read.count if read is not None else 0
                continue
            prefetched = None
            if read is not None:
                mine, at = replies[at : at + read.count], at + read.count
                if not any(isinstance(r, Exception) for r in mine):
                    with contextlib.suppress(Exception):  # unreadable: the turn meets it itself
                        prefetched = read.decode(mine)
            claims.append(Claim(token, decode_take(taken), prefetched))
        return claims

    def _spawn(self, entry_id: str, conversation: str, claim: Claim | None = None) -> None:
        task = asyncio.create_task(self._guarded(entry_id, conversation, claim))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, entry_id: str, conversation: str, claim: Claim | None) -> None:
        try:
            if await self.process(conversation, entry_id, claim):
                self._done.append(entry_id)  # acked with a read (ACK_EVERY)
        except Exception as exc:
            # A turn's task: Redis failed between turns (each turn is guarded in _attempt, and
            # a batch that keeps failing ends in the dead letters). The entry stays unacked and
            # is reclaimed after a lease; the sweep wakes the conversation if that is lost too.
            self.log.error(
                "turn_crashed",
                conversation=conversation,
                worker=self.name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    async def process(
        self, conversation: str, entry_id: str | None = None, claim: Claim | None = None
    ) -> bool:
        """Run the conversation's turns while its inbox has messages; True when done with it.

        `claim`: the first TAKE, when the caller made it already."""
        if not conversation:
            return True
        prefetched = None
        if claim is None:
            token = self._token()
            taken = await self._take_batch(conversation, token, finished="")
        else:
            token, taken, prefetched = claim
        if taken is Verdict.BUSY or taken is Verdict.RELEASED:
            return True  # another worker has it and will see the inbox before it lets go
        lost = asyncio.Event()
        done = asyncio.Event()
        renewer = asyncio.create_task(
            self._keep_lease(conversation, token, entry_id, lost=lost, done=done)
        )
        interrupted = False
        try:
            while not isinstance(taken, Verdict) and not lost.is_set():
                finished = await self._attempt(conversation, token, taken, prefetched)
                prefetched = None  # read for the first batch only
                if finished is None:
                    return False  # left for the next taker: the entry stays pending
                after = finished.taken
                if after is None:
                    after = await self._take_batch(conversation, token, finished=finished.batch)
                taken = after
                if taken is Verdict.RELEASED:
                    return True
            self.log.warning("lease_lost", conversation=conversation, worker=self.name)
            return False  # the batch is left for the next taker (reclaimed after a lease)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            done.set()  # not cancel(): a cancel inside the Redis client can be swallowed
            await renewer
            if interrupted:
                await self._give_up(conversation, token)

    async def _give_up(self, conversation: str, token: str) -> None:
        """A turn cancelled mid-way (Ctrl-C in `bot chat`): release the lease if it is still
        ours, so the next taker resumes the stored batch now instead of after the lease."""
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                await self._release(keys=[lease_key(conversation)], args=[token])
        except (RedisError, OSError, TimeoutError):
            return  # the lease ends by itself
        self.log.info("lease_released", conversation=conversation, worker=self.name)

    async def _attempt(
        self,
        conversation: str,
        token: str,
        taken: list[str],
        prefetched: Prefetched | None = None,
    ) -> Done | None:
        """Run one taken batch whatever fails inside it. Done once it is finished (answered,
        apologised for, or dead-lettered); None when it is left for the next taker (the lease
        was lost, or it failed where nobody could be told). `prefetched`: the turn's first
        reads, made with the claim."""
        fields = flat_fields(taken)
        batch_id, attempts = fields.get("id", ""), int(fields.get("attempts") or 1)
        if attempts > self.max_attempts:  # earlier takes died without a word (a killed process)
            await self._dead_letter(conversation, fields, "the worker died during every attempt")
            return Done(batch_id)
        try:
            ran = await self._run_batch(conversation, token, Batch.from_flat(taken), prefetched)
            if ran is not False:
                return Done(batch_id, None if ran is True else ran)
            self.log.warning("lease_lost", conversation=conversation, worker=self.name)
            return None
        except TurnFenced:  # another worker has the turn now: it finishes it
            self.log.warning("lease_lost", conversation=conversation, worker=self.name)
            return None
        except Exception as exc:  # a whole turn: it ends in a reply or a dead letter
            error = f"{type(exc).__name__}: {exc}"
            self.log.error(
                "turn_crashed",
                conversation=conversation,
                worker=self.name,
                attempt=attempts,
                error=error,
                exc_info=exc,
            )
        if await self._apologise(conversation, token, fields, error):
            return Done(batch_id)
        if attempts >= self.max_attempts:
            await self._dead_letter(conversation, fields, error)
            return Done(batch_id)
        await self._release(keys=[lease_key(conversation)], args=[token])
        self.log.warning("turn_left", conversation=conversation, attempt=attempts)
        return None

    async def _apologise(
        self, conversation: str, token: str, fields: dict[str, str], error: str
    ) -> bool:
        """Finish a crashed turn with a short reply instead of the answer, remembering nothing
        (`error` travels as the reply's failure, which only the console shows), or with no
        reply when the sender is not let in (a stranger is never told); False when that is not
        possible (unreadable batch, a stored reply that did not go out, a lost lease, a failing
        channel, Redis not answering who the sender is)."""
        if fields.get("state") != BatchState.PENDING:
            return False
        try:
            batch = Batch.from_flat(flat_list(fields))
            last = batch.messages[-1]
            if not await self.agent.may_tell(last):  # a stranger is never told anything
                self.log.warning(
                    "apology_withheld",
                    conversation=conversation,
                    reason="the sender is not let in by the channel's dmPolicy",
                )
                return True
            reply = OutboundMessage(
                channel=last.channel,
                conversation=last.conversation,
                text=CRASHED,
                reply_to=last.platform_id,
                failure=f"the turn crashed: {error}",
            )
            entry = self.outbox.entry(reply)
            committed = await self._commit_turn(
                conversation, token, batch, TurnResult(reply=reply), entry
            )
            if not committed:
                return False
            # Stored in the outbox: it is delivered from there, in order, whatever happens next.
            await self._flush(conversation, token, entry if committed <= 2 else None)
        except Exception as exc:  # part of a crashed turn: it is left, then dead-lettered
            self.log.error(
                "apology_failed",
                conversation=conversation,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            return False
        return True

    async def _dead_letter(self, conversation: str, fields: dict[str, str], error: str) -> None:
        """Keep a batch that keeps failing for an operator (`bot dead-letters`); the caller then
        finishes it, so the conversation's next messages are answered."""
        letter = await self.deadletters.add(
            conversation=conversation,
            batch=fields.get("id", ""),
            attempts=int(fields.get("attempts") or 1),
            error=error,
            messages=fields.get("messages", ""),
        )
        self.log.error(
            "dead_lettered", conversation=conversation, worker=self.name, id=letter, error=error
        )

    async def _take_batch(self, conversation: str, token: str, *, finished: str) -> Taken:
        """One TAKE: claim the lease (finished == "") or delete the finished batch, then the
        next batch or a verdict (busy, released, lost)."""
        keys, args = self._take_keys(conversation), self._take_args(token, finished)
        return decode_take(await self._take(keys=keys, args=args))

    def _token(self) -> str:
        """A lease token: this worker, and which claim."""
        return f"{self.name}:{uuid.uuid4().hex[:8]}"

    @staticmethod
    def _take_keys(conversation: str) -> list[str]:
        return [lease_key(conversation), batch_key(conversation), inbox_key(conversation)]

    def _take_args(self, token: str, finished: str, *, checked: bool = False) -> list[str | int]:
        return [token, uuid.uuid4().hex, self.lease_ms, finished, TAKE_MAX, "1" if checked else ""]

    async def _run_batch(
        self, conversation: str, token: str, batch: Batch, prefetched: Prefetched | None = None
    ) -> bool | Taken:
        """Run (or resume) one batch and deliver its reply; False if the lease was lost, else
        what the TAKE finishing it answered (made by the reply's last ADVANCE: FINISH), or True
        when it is still to be made."""
        if batch.owner != token:
            self.log.warning(
                "turn_resumed", conversation=conversation, worker=self.name, state=batch.state
            )
        entry = None
        if batch.state is BatchState.PENDING:
            last = batch.messages[-1]
            journal = RedisToolJournal(
                self.redis, conversation=conversation, token=token, batch_id=batch.id,
                steps=batch.steps,
            )  # fmt: skip
            writes: list[Write] = []  # the turn's usage: sent with COMMIT, in its round trip
            async with self._typing(last) as allowed, self._preview(last) as preview:
                result = await self.agent.run_turn(
                    batch.messages, allowed=allowed, preview=preview, journal=journal,
                    writes=writes, prefetched=prefetched,
                )  # fmt: skip
            entry = self.outbox.entry(result.reply) if result.reply else None
            if entry is not None and not entry.chunks:
                entry = None  # nothing to send (an empty reply)
            committed = await self._commit_turn(conversation, token, batch, result, entry, writes)
            if not committed:
                return False
            if entry is None:
                return True
            if committed > 2:
                entry = None  # it waits behind earlier replies: flush from the head
        elif batch.reply is not None:  # stored in its batch by an earlier version
            legacy = self.outbox.entry(batch.reply)
            keys = lease_key(conversation), batch_key(conversation)
            if not await self.outbox.enqueue_legacy(*keys, token, legacy):
                return False
        return await self._flush(conversation, token, entry, finished=batch.id)

    @contextlib.asynccontextmanager
    async def _typing(self, message: InboundMessage) -> AsyncIterator[Callable[[], None]]:
        """A callback that turns the person's "typing…" indicator on (where there is one) until
        the turn ends. The agent calls it once access is granted: strangers never see it.

        Each call runs in the background with a bounded time and is left to finish when the
        turn ends (it may carry a read receipt), so the indicator never delays the reply; the
        first failure of a turn is a warning, the others debug."""
        sender = self._typists.get(message.channel)
        loops: list[asyncio.Task[None]] = []
        warned = False

        def start() -> None:
            if sender is not None and not loops:
                loops.append(asyncio.create_task(keep_typing(sender)))

        async def show(sender: TypingIndicator) -> None:
            nonlocal warned
            try:
                async with asyncio.timeout(TYPING_TIMEOUT):
                    await sender.typing(message)
            except (ChannelSendError, TimeoutError) as exc:
                level = self.log.debug if warned else self.log.warning
                warned = True
                error = str(exc) or f"no answer within {TYPING_TIMEOUT:g} s"
                level(
                    "typing_failed",
                    channel=message.channel,
                    conversation=message.conversation,
                    error=error,
                )

        async def keep_typing(sender: TypingIndicator) -> None:
            while True:
                call = asyncio.create_task(show(sender))
                self._typing_calls.add(call)
                call.add_done_callback(self._typing_calls.discard)
                await asyncio.sleep(sender.typing_every)

        try:
            yield start
        finally:
            for task in loops:
                task.cancel()  # no more renewals; a call in flight finishes on its own
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @contextlib.asynccontextmanager
    async def _preview(self, message: InboundMessage) -> AsyncIterator[Preview | None]:
        """The channel's preview of this turn (None when it offers none), guarded so that its
        failures are logged and never fail the turn, and closed when the turn ends."""
        sender = self._previewers.get(message.channel)
        try:
            sink = sender.preview(message) if sender is not None else None
        except Exception as exc:  # noqa: BLE001 - a best-effort preview never fails the turn
            error = f"{type(exc).__name__}: {exc}"
            where = {"channel": message.channel, "conversation": message.conversation}
            self.log.warning("preview_failed", **where, call="preview", error=error)
            sink = None
        if sink is None:
            yield None
            return
        guarded = GuardedPreview(
            sink, log=self.log, channel=message.channel, conversation=message.conversation
        )
        try:
            yield guarded
        finally:
            await guarded.close()

    async def _commit_turn(
        self,
        conversation: str,
        token: str,
        batch: Batch,
        result: TurnResult,
        entry: Entry | None,
        writes: Sequence[Write] = (),
    ) -> int:
        """Remember the turn and queue its reply in one script, `writes` (the turn's usage)
        in the same round trip; COMMIT's verdict. A failed write is logged, never the turn's
        failure: the reply is what matters."""
        turns = [json.dumps(t.to_dict(), ensure_ascii=False) for t in result.remember]
        args: list[Any] = [
            token,
            batch.id,
            entry.to_json() if entry else "",
            self.memory.ttl_seconds,
            entry.id if entry else "",
            entry.at if entry else 0,
            self.outbox.ttl_seconds,
            "1" if result.fresh else "",
            *turns,
        ]
        keys = [
            lease_key(conversation),
            batch_key(conversation),
            *self.memory.keys(conversation),
            outbox_key(conversation),
            head_key(conversation),
        ]

        def queue(pipe: Pipeline) -> None:
            COMMIT.queue(pipe, keys, args)
            for write in writes:
                write(pipe)

        # One round trip with the other turns committing or finishing in this loop iteration.
        committed, *rest = await self._trips.run(queue)
        if isinstance(committed, BaseException):
            raise committed
        failed = next((r for r in rest if isinstance(r, BaseException)), None)
        if failed is not None:
            self.log.warning("usage_not_recorded", conversation=conversation, error=str(failed))
        return int(committed)

    async def _flush(
        self, conversation: str, token: str, fresh: Entry | None, *, finished: str = ""
    ) -> bool | Taken:
        """Deliver the conversation's outbox (a reply that must wait stays there, in the due
        set); False if the lease was lost. `finished`: the batch this flush finishes, taken
        (TAKE) by the ADVANCE that empties the outbox, in its script call (FINISH): what that
        answered (True when it did not happen: the caller takes)."""
        lease = lease_key(conversation)
        if not finished:
            return await self.outbox.flush(conversation, lease, token, fresh=fresh) != Flush.LOST
        then = Then(
            FINISH,
            self._take_keys(conversation),
            self._take_args(token, finished, checked=True),
        )
        flushed, taken = await self.outbox.flush_then(
            conversation, lease, token, fresh=fresh, then=then
        )
        if flushed is Flush.LOST:
            return False
        return True if taken is None else decode_take(taken)

    async def _claim_due(self, count: int) -> tuple[list[str], list[tuple[str, str]]]:
        """Conversations whose reply is due for another attempt (polled every DUE_EVERY s) and,
        every REMINDERS_EVERY s, due reminders, in the same round trip. The run loop asks for
        at least one of each, so retries never starve behind new turns: one due delivery may
        run beyond max_concurrent."""
        now = time.monotonic()
        if (now < self._next_due and not self._burst) or count <= 0:
            return [], []
        self._next_due = now + DUE_EVERY
        hold_ms = min(self.lease_ms, 5000)
        if self.reminders is None or now < self._next_reminders:
            return await self.outbox.claim_due(count, hold_ms=hold_ms), []
        async with self.redis.pipeline(transaction=False) as pipe:
            self.outbox.queue_claim_due(pipe, count, hold_ms)
            self.reminders.queue_claim(pipe, count)
            due, reminders = await pipe.execute()
        claimed = decode_claimed(reminders)
        # A full claim: more are due (a burst), so claim again as soon as a task slot is free,
        # without waiting on the ready stream, until a claim comes back short.
        self._burst = len(claimed) >= count
        self._next_reminders = now if self._burst else now + REMINDERS_EVERY
        return [str(member) for member in due], claimed

    def _spawn_reminder(self, conversation: str, rid: str) -> None:
        task = asyncio.create_task(self._fire_reminder(conversation, rid))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fire_reminder(self, conversation: str, rid: str) -> None:
        """Fire one claimed reminder; a failure leaves it claimed, so it is tried again once
        the claim lapses (a lease later)."""
        assert self.reminders is not None
        try:
            await self.reminders.fire(conversation, rid)
        except Exception as exc:  # noqa: BLE001 - a background task: log it; due again later
            self.log.error(
                "reminder_failed",
                conversation=conversation,
                id=rid,
                worker=self.name,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _spawn_due(self, conversation: str) -> None:
        task = asyncio.create_task(self._deliver_due(conversation))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver_due(self, conversation: str) -> None:
        """Take the conversation's lease, flush its outbox, then run any turn waiting (as a
        turn's worker would before letting go). Busy: its holder flushes, or it is due again."""
        token = self._token()
        try:
            if not await self.redis.set(lease_key(conversation), token, nx=True, px=self.lease_ms):
                return
            lost, done = asyncio.Event(), asyncio.Event()
            renewer = asyncio.create_task(
                self._keep_lease(conversation, token, None, lost=lost, done=done)
            )
            try:
                flushed = await self.outbox.flush(
                    conversation, lease_key(conversation), token, lost=lost
                )
            finally:
                done.set()
                await renewer
            if flushed is Flush.LOST:
                return
            taken = await self._take_batch(conversation, token, finished="-")
            if taken is not Verdict.RELEASED and taken is not Verdict.LOST:
                await self.process(conversation, None, Claim(token, taken))
        except Exception as exc:  # noqa: BLE001 - a background task: log it; due again later
            self.log.error(
                "delivery_crashed",
                conversation=conversation,
                worker=self.name,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _keep_lease(
        self,
        conversation: str,
        token: str,
        entry_id: str | None,
        *,
        lost: asyncio.Event,
        done: asyncio.Event,
    ) -> None:
        """Renew the lease every third of its life and keep the ready entry from looking idle,
        until the turn is `done`; set `lost` if another worker holds the lease now."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_ms / 3000):
                    await done.wait()
            if done.is_set():
                return
            try:
                held = await self._renew(
                    keys=[lease_key(conversation)], args=[token, self.lease_ms]
                )
                if entry_id is not None:
                    await self.redis.xclaim(
                        READY_STREAM,
                        GROUP,
                        self.name,
                        min_idle_time=0,
                        message_ids=[entry_id],
                        justid=True,
                    )
            except (RedisError, OSError) as exc:
                self.log.warning("lease_renew_failed", conversation=conversation, error=str(exc))
                continue
            if not held:
                lost.set()
                return


def flat_list(fields: dict[str, str]) -> list[str]:
    """A dict as a flat HGETALL reply."""
    return [item for pair in fields.items() for item in pair]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()

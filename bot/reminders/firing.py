"""Firing due reminders through the outbox: claim one from the due index, take its
conversation's lease, and let FIRE queue the text as a reply (once per slot), then wake the
outbox's due set so a worker delivers it in order with the conversation's other replies.

The text never reaches a model. A reminder fired more than `late_after` seconds after its slot
says so ("(late: due 18:00)"); a recurring one then moves to its next slot after now, so slots
missed while every worker was down fire once, together, not once each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from redis.asyncio.client import Pipeline

from bot.delivery import DUE_KEY as OUTBOX_DUE_KEY
from bot.delivery import Outbox, head_key, outbox_key
from bot.logs import Logger
from bot.memory import RedisMemory
from bot.messages import InboundMessage, OutboundMessage, Turn
from bot.reminders.store import FIRE, Fired, RedisReminders, Reminder, index_key, reminder_key
from bot.scripts import Script
from bot.wakeups import lease_key

LATE_AFTER = 300.0  # seconds after its slot from which a reminder is marked late
HEARD_TURNS = 4  # the newest remembered turns searched for the person's last message

# KEYS: lease. ARGV: token. Give the lease up if it is still ours.
RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


class ReminderFirer:
    """Fires due reminders for a worker: `claim` polls the due index, `fire` fires one."""

    def __init__(
        self,
        *,
        store: RedisReminders,
        outbox: Outbox,
        may_tell: Callable[[InboundMessage], Awaitable[bool]],
        log: Logger,
        lease_ms: int,
        late_after: float = LATE_AFTER,
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.outbox = outbox
        self.may_tell = may_tell
        self.log = log
        self.lease_ms = lease_ms
        self.late_after_ms = int(late_after * 1000)
        self._fire = FIRE.on(store.redis)
        self._release = RELEASE.on(store.redis)

    def now_ms(self) -> int:
        return int(self.store.clock() * 1000)

    async def claim(self, count: int) -> list[tuple[str, str]]:
        """Due reminders (conversation, rid), each held for a lease so one worker fires it."""
        return await self.store.claim_due(count, hold_ms=self.lease_ms)

    def queue_claim(self, pipe: Pipeline, count: int) -> None:
        """`claim` as one command of a pipeline; decode its reply with `decode_claimed`."""
        self.store.queue_claim_due(pipe, count, hold_ms=self.lease_ms)

    async def fire(self, conversation: str, rid: str) -> Fired | None:
        """Fire one claimed reminder; None when its conversation is busy (it is looked at
        again at the next poll, and its text then queues behind the turn's reply)."""
        lease, token = lease_key(conversation), f"reminder:{uuid.uuid4().hex[:12]}"
        if not await self.redis.set(lease, token, nx=True, px=self.lease_ms):
            await self.store.reindex(conversation, rid, self.now_ms())  # due at the next poll
            return None
        try:
            reminder = await self.store.get(conversation, rid)
            if reminder is None:  # fired once and done, or cancelled (a crashed firer may
                verdict, next_due = Fired.GONE, None  # have queued it: it is woken below)
            elif not await self._admitted(reminder):
                await self.store.cancel(conversation, rid)
                self.log.warning(
                    "reminder_failed",
                    channel=reminder.channel,
                    conversation=conversation,
                    id=rid,
                    error="the sender is no longer let in by the access policy: dropped",
                )
                return Fired.GONE
            else:
                verdict, next_due = await self._fire_slot(lease, token, reminder)
        finally:
            await self._release(keys=[lease], args=[token])
        if verdict is not Fired.LOST:  # whatever a crashed firer queued is delivered too
            await self.redis.zadd(OUTBOX_DUE_KEY, {conversation: self.now_ms()})
        await self.store.reindex(conversation, rid, next_due)
        return verdict

    async def _fire_slot(
        self, lease: str, token: str, reminder: Reminder
    ) -> tuple[Fired, int | None]:
        """One FIRE for the reminder's current slot; its verdict and the due index's next
        entry for it (None: none)."""
        now = self.now_ms()
        if reminder.due > now:  # fired already: this is its next slot
            return Fired.STALE, reminder.due
        conversation, rid, slot = reminder.conversation, reminder.id, reminder.due
        late = now - slot > self.late_after_ms
        next_due = self._next_slot(reminder, now)
        text = f"⏰ Reminder: {reminder.text}"
        if late:
            text += f" (late: due {_local(reminder, slot)})"
        quiet_for = (now - await self._last_heard(reminder)) / 1000
        entry = self.outbox.entry(
            OutboundMessage(
                channel=reminder.channel,
                conversation=conversation,
                text=text,
                quiet_for=quiet_for,
            )
        )
        keys = [
            lease,
            reminder_key(conversation, rid),
            index_key(conversation),
            outbox_key(conversation),
            head_key(conversation),
        ]
        args: list[str | int] = [
            token,
            slot,
            entry.to_json(),
            entry.id,
            entry.at,
            self.outbox.ttl_seconds,
            next_due if next_due is not None else "",
            rid,
        ]
        reply = cast("list[Any]", await self._fire(keys=keys, args=args))
        verdict = Fired(reply[0])
        if verdict is Fired.FIRED:
            self.log.info(
                "reminder_fired",
                channel=reminder.channel,
                conversation=conversation,
                id=rid,
                late=late,
                ms=now - slot,
                recurring=reminder.rule is not None,
            )
            return verdict, next_due
        if verdict is Fired.STALE:
            return verdict, int(reply[1])
        if verdict is Fired.LOST:
            return verdict, now
        return verdict, None

    @staticmethod
    def _next_slot(reminder: Reminder, now: int) -> int | None:
        """A recurring reminder's next slot from its rule: the first after both the slot just
        fired and now (slots missed while nobody ran are not fired one by one)."""
        if reminder.rule is None:
            return None
        after = datetime.fromtimestamp(max(reminder.due, now) / 1000, UTC)
        return int(reminder.rule.next_after(after, ZoneInfo(reminder.zone)).timestamp() * 1000)

    async def _last_heard(self, reminder: Reminder) -> int:
        """When the person last wrote here (epoch ms), as far as Redis knows: their newest
        remembered message, or the /remind itself (commands are not remembered)."""
        recent = await self.redis.lrange(RedisMemory.key(reminder.conversation), -HEARD_TURNS, -1)
        turns = [Turn.from_dict(json.loads(raw)) for raw in recent]
        return max([reminder.created, *(int(t.ts * 1000) for t in turns if t.role == "user")])

    async def _admitted(self, reminder: Reminder) -> bool:
        """Is the person who set it still let in (a stranger now gets nothing)?"""
        probe = InboundMessage(
            channel=reminder.channel,
            conversation=reminder.conversation,
            sender=reminder.sender,
            text="",
            platform_id=f"reminder:{reminder.id}",
            ts=self.store.clock(),
        )
        return await self.may_tell(probe)


def _local(reminder: Reminder, slot_ms: int) -> str:
    """A slot as the person reads it: HH:MM in their zone."""
    zone = ZoneInfo(reminder.zone)
    at = datetime.fromtimestamp(slot_ms / 1000, UTC).astimezone(zone)
    return at.strftime("%H:%M")

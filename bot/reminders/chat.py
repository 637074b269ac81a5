"""What `/remind` and `/tz` answer: setting, listing and cancelling reminders in the person's
time zone (the handlers in bot.commands are one line each and call these)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from bot.errors import CommandError
from bot.messages import InboundMessage
from bot.reminders.phrases import ACCEPTED, Rule, parse_reminder, zone_named
from bot.reminders.store import Reminder

WINDOW = timedelta(hours=24)  # WhatsApp's customer-service window after the person's message
WINDOW_HINT = (
    " WhatsApp may refuse it: a message more than 24 h after your last one needs a template "
    "(channels.whatsapp.reminderTemplateSid), and none is set, so write to me before then."
)


class ReminderBook(Protocol):
    """What the chat commands need of the reminders' store (bot.reminders.RedisReminders)."""

    def now(self) -> datetime: ...

    async def zone(self, sender: str) -> str: ...

    async def set_zone(self, sender: str, zone: str) -> None: ...

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
    ) -> Reminder: ...

    async def pending(self, conversation: str) -> list[Reminder]: ...

    async def cancel(self, conversation: str, rid: str) -> bool: ...


async def remind(
    book: ReminderBook, message: InboundMessage, args: str, *, window_hint: bool = False
) -> str:
    """`/remind …`: set one, `list`, or `cancel N`. `window_hint`: warn that a WhatsApp
    reminder outside the 24-hour window may be refused (no template is configured)."""
    words = args.split()
    if not words:
        raise CommandError(ACCEPTED)
    zone_name = await book.zone(message.sender)
    zone = ZoneInfo(zone_name)
    if words[0].lower() == "list" and len(words) == 1:
        return _listing(await book.pending(message.conversation), zone, zone_name)
    if words[0].lower() == "cancel" and len(words) == 2:
        return await _cancel(book, message.conversation, words[1])
    now = book.now()
    schedule = parse_reminder(args, now=now, zone=zone)
    reminder = await book.add(
        channel=message.channel,
        conversation=message.conversation,
        sender=message.sender,
        text=schedule.text,
        due=schedule.due,
        zone=zone_name,
        rule=schedule.rule,
    )
    when = local_when(reminder, zone)
    reply = f"OK: {when} ({zone_name}) I will remind you: {schedule.text}"
    if window_hint and (schedule.rule is not None or schedule.due - now > WINDOW):
        reply += WINDOW_HINT
    return reply


async def timezone(book: ReminderBook, message: InboundMessage, args: str) -> str:
    """`/tz` shows the sender's zone; `/tz Europe/Berlin` sets it."""
    if not args:
        return f"Your time zone: {await book.zone(message.sender)}. Change it with /tz Area/City."
    zone = zone_named(args.strip())
    await book.set_zone(message.sender, zone.key)
    local = book.now().astimezone(zone).strftime("%H:%M")
    return f"Your time zone is now {zone.key} (it is {local} there)."


def _listing(pending: list[Reminder], zone: ZoneInfo, zone_name: str) -> str:
    if not pending:
        return "No reminders pending. Set one with /remind in 2h call mom."
    lines = [f"Your reminders ({zone_name}):"]
    lines += [f"{n}. {local_when(r, zone)}: {r.text}" for n, r in enumerate(pending, 1)]
    lines.append("Cancel one with /remind cancel N.")
    return "\n".join(lines)


async def _cancel(book: ReminderBook, conversation: str, number: str) -> str:
    pending = await book.pending(conversation)
    if not number.isdigit() or not 1 <= int(number) <= len(pending):
        raise CommandError(
            f"No reminder number {number}: /remind list shows {len(pending)} pending."
        )
    reminder = pending[int(number) - 1]
    if not await book.cancel(conversation, reminder.id):
        raise CommandError("That reminder has just fired or been cancelled.")
    return f"Cancelled: {reminder.text}"


def local_when(reminder: Reminder, zone: ZoneInfo) -> str:
    """A reminder's next slot as the person reads it, with its rule when it recurs."""
    local = reminder.due_at.astimezone(zone).strftime("%a %d %b %Y %H:%M")
    return f"{local}, {reminder.rule.describe()}" if reminder.rule else local

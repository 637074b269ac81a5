"""The built-in tool `builtin.remind`: a model sets a reminder for the person it talks with, as
`/remind` would (same store, zone, limit and WhatsApp window warning), from an ISO 8601 time
with offset or a recurrence, and is told what was scheduled in the person's zone."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.errors import CommandError
from bot.reminders.chat import WINDOW, WINDOW_HINT, ReminderBook, local_when
from bot.reminders.phrases import parse_reminder
from bot.tools.types import CallOutcome, ListedTool

ACCEPTED = (
    'Accepted: {"time": "2026-12-08T09:00:00+01:00", "text": "…"} (ISO 8601 with a UTC '
    'offset, in the future) or {"every": "day at 09:00" or "monday at 10:00", "text": "…"} '
    "(in the person's time zone)."
)
LISTED = ListedTool(
    name="remind",
    description=(
        "Set a reminder for the person you are talking with: at the time given, the text is "
        "sent to them in this conversation (it is not sent to a model). Give either `time` "
        "(once) or `every` (recurring), and `text`. The answer says what was scheduled in the "
        "person's time zone."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "time": {
                "type": "string",
                "description": "When, once: ISO 8601 with a UTC offset, e.g. "
                "2026-12-08T09:00:00+01:00",
            },
            "every": {
                "type": "string",
                "description": "When, recurring, in the person's time zone: `day at 09:00` or "
                "a weekday, e.g. `monday at 10:00`",
            },
            "text": {"type": "string", "description": "What to remind them of"},
        },
        "required": ["text"],
        "additionalProperties": False,
    },
)


class RemindTool:
    """`builtin.remind` over the reminders' store (bot.reminders.RedisReminders)."""

    listed = LISTED

    def __init__(
        self,
        book: ReminderBook,
        *,
        channels: frozenset[str] | None = None,
        window_hint: frozenset[str] = frozenset(),
    ) -> None:
        """`channels`: those a reminder can be sent on later (None: any); `window_hint`: those
        whose reminders may be refused outside a window (as for `/remind`)."""
        self.book = book
        self.channels = channels
        self.window_hint = window_hint

    async def call(
        self, arguments: Mapping[str, Any], *, conversation: str, sender: str, channel: str
    ) -> CallOutcome:
        """Schedule the reminder; an error outcome saying what is accepted otherwise."""
        if not sender or (self.channels is not None and channel not in self.channels):
            return CallOutcome(text="reminders cannot be set in this conversation", is_error=True)
        try:
            return CallOutcome(
                text=await self._schedule(arguments, conversation, sender, channel),
                is_error=False,
            )
        except CommandError as exc:
            return CallOutcome(text=str(exc), is_error=True)

    async def _schedule(
        self, arguments: Mapping[str, Any], conversation: str, sender: str, channel: str
    ) -> str:
        text, at, every = (arguments.get(k) for k in ("text", "time", "every"))
        if not isinstance(text, str) or not text.strip():
            raise CommandError(f"`text` is missing: say what to remind them of. {ACCEPTED}")
        if (at is None) == (every is None) or not isinstance(at or every, str):
            raise CommandError(f"Give either `time` or `every` (one of them). {ACCEPTED}")
        zone_name = await self.book.zone(sender)
        zone = ZoneInfo(zone_name)
        now = self.book.now()
        if isinstance(every, str):
            phrase = every.strip().removeprefix("every ").strip()
            try:
                schedule = parse_reminder(f"every {phrase} {text.strip()}", now=now, zone=zone)
            except CommandError:
                schedule = None
            if schedule is None or schedule.rule is None:
                raise CommandError(f"`every` was not a recurrence I know. {ACCEPTED}")
            due, rule = schedule.due, schedule.rule
        else:
            due, rule = _instant(str(at), now), None
        reminder = await self.book.add(
            channel=channel,
            conversation=conversation,
            sender=sender,
            text=text.strip(),
            due=due,
            zone=zone_name,
            rule=rule,
        )
        reply = f"scheduled for {local_when(reminder, zone)} ({zone_name}): {reminder.text}"
        if channel in self.window_hint and (rule is not None or due - now > WINDOW):
            reply += WINDOW_HINT
        return reply


def _instant(text: str, now: datetime) -> datetime:
    """An ISO 8601 time with an offset, in the future; CommandError saying what is accepted."""
    try:
        due = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"`time` {text!r} is not ISO 8601. {ACCEPTED}") from None
    if due.tzinfo is None or due.utcoffset() is None:
        raise CommandError(f"`time` {text!r} has no UTC offset. {ACCEPTED}")
    if due <= now:
        raise CommandError(f"`time` {text!r} is in the past. {ACCEPTED}")
    return due

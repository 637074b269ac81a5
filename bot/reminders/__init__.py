"""Reminders: `/remind` phrases parsed in the person's zone, kept in Redis (a due index plus one
hash each, hash-tagged by conversation) and fired exactly once by any worker through the outbox."""

from bot.reminders.firing import LATE_AFTER, ReminderFirer
from bot.reminders.phrases import ACCEPTED, Rule, Schedule, parse_reminder, zone_named
from bot.reminders.store import (
    DUE_KEY,
    MAX_PENDING,
    Fired,
    RedisReminders,
    Reminder,
    decode_claimed,
)
from bot.reminders.tool import RemindTool

__all__ = [
    "ACCEPTED",
    "DUE_KEY",
    "LATE_AFTER",
    "MAX_PENDING",
    "Fired",
    "RedisReminders",
    "RemindTool",
    "Reminder",
    "ReminderFirer",
    "Rule",
    "Schedule",
    "decode_claimed",
    "parse_reminder",
    "zone_named",
]

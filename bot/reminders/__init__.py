"""Reminders: `/remind` phrases parsed in the person's zone, kept in Redis (a due index plus one
hash each, hash-tagged by conversation) and fired exactly once by any worker through the outbox."""

from bot.reminders.phrases import ACCEPTED, Rule, Schedule, parse_reminder, zone_named

__all__ = ["ACCEPTED", "Rule", "Schedule", "parse_reminder", "zone_named"]

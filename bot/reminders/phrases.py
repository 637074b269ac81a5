"""When a reminder is due: `/remind` phrases read in the person's time zone, and the rule of a
recurring one ("every day at 09:00", "every monday at 10:00") that gives its next slot.

One-off phrases go to `dateparser` (relative times, weekdays, dates in several forms), read as
wall-clock time in the person's zone and only then placed on the timeline by `zoneinfo`, so a
date across a DST change keeps its local hour; "in 2h" is a duration from now, not a wall time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dateparser

from bot.errors import CommandError

ACCEPTED = (
    "I understand: /remind in 2h TEXT, /remind at 18:00 TEXT, /remind tomorrow at 9 TEXT, "
    "/remind on 24 Dec 18:00 TEXT, /remind every day at 09:00 TEXT, "
    "/remind every monday at 10:00 TEXT, /remind list, /remind cancel N."
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EVERY = re.compile(
    r"^every\s+(?P<day>day|" + "|".join(WEEKDAYS) + r")\s+at\s+(?P<h>\d{1,2})(?::(?P<m>\d{2}))?"
    r"\s*(?P<ampm>[ap]m)?\s+(?P<text>.+)$",
    re.IGNORECASE | re.DOTALL,
)
# The time part of a one-off phrase: "in …", "at …", "tomorrow …", "on …", then the text.
_WHEN = re.compile(
    r"^(?P<when>(?:in\s+\d+\s*[a-z]+(?:,?\s*(?:and\s+)?\d+\s*[a-z]+)?)"
    r"|(?:(?:on\s+)?(?:today|tomorrow|" + "|".join(WEEKDAYS) + r"|\d{1,2}\s+[a-z]{3,9}\.?"
    r"(?:\s+\d{4})?|[a-z]{3,9}\.?\s+\d{1,2}(?:\s+\d{4})?)?\s*(?:at\s+)?"
    r"\d{1,2}(?::\d{2})?\s*(?:[ap]m)?))\s+(?P<text>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_BARE_HOUR = re.compile(r"\bat\s+(\d{1,2})(?![\d:]|\s*[ap]m)", re.IGNORECASE)
_DURATION = re.compile(r"^in\s+", re.IGNORECASE)


def zone_named(name: str) -> ZoneInfo:
    """An IANA zone by name; CommandError saying what is accepted otherwise."""
    try:
        if "/" not in name and name.upper() != "UTC":
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CommandError(
            f"Unknown time zone {name!r}: use an IANA name such as Europe/Berlin, "
            "America/New_York or UTC."
        ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A recurring reminder's slots: every day (weekday None) or one weekday, at a local time."""

    hour: int
    minute: int
    weekday: int | None = None  # 0 = Monday

    def next_after(self, instant: datetime, zone: ZoneInfo) -> datetime:
        """The first slot strictly after `instant`, as a UTC time (local wall time kept)."""
        local = instant.astimezone(zone)
        day = local.date()
        for offset in range(9):
            candidate_day = day + timedelta(days=offset)
            if self.weekday is not None and candidate_day.weekday() != self.weekday:
                continue
            wall = datetime.combine(candidate_day, time(self.hour, self.minute), tzinfo=zone)
            slot = _existing(wall).astimezone(UTC)
            if slot > instant:
                return slot
        raise AssertionError("a daily or weekly rule has a slot within 8 days")

    def to_text(self) -> str:
        return f"{self.weekday if self.weekday is not None else ''}@{self.hour}:{self.minute:02d}"

    @classmethod
    def from_text(cls, text: str) -> Rule:
        day, _, at = text.partition("@")
        hour, minute = at.split(":")
        return cls(hour=int(hour), minute=int(minute), weekday=int(day) if day else None)

    def describe(self) -> str:
        day = "day" if self.weekday is None else WEEKDAYS[self.weekday].capitalize()
        return f"every {day} at {self.hour:02d}:{self.minute:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A parsed `/remind`: its first slot (UTC), its rule if it recurs, and its text."""

    due: datetime
    text: str
    rule: Rule | None = None


def parse_reminder(phrase: str, *, now: datetime, zone: ZoneInfo) -> Schedule:
    """The schedule a `/remind` phrase asks for, read at `now` in `zone`; CommandError (one
    line saying what is accepted) for an unreadable phrase or a time in the past."""
    phrase = phrase.strip()
    every = _EVERY.match(phrase)
    if every:
        hour = _hour(int(every["h"]), every["ampm"])
        minute = int(every["m"] or 0)
        if hour > 23 or minute > 59:
            raise CommandError(f"That time does not exist. {ACCEPTED}")
        day = every["day"].lower()
        rule = Rule(hour=hour, minute=minute, weekday=None if day == "day" else WEEKDAYS.index(day))
        return Schedule(due=rule.next_after(now, zone), text=every["text"].strip(), rule=rule)
    found = _WHEN.match(phrase)
    if not found:
        try:
            parse_when(phrase, now=now, zone=zone)
        except CommandError:
            raise CommandError(f"I could not tell when. {ACCEPTED}") from None
        raise CommandError(f"What should I remind you of? Put it after the time. {ACCEPTED}")
    due = parse_when(found["when"], now=now, zone=zone)
    return Schedule(due=due, text=found["text"].strip())


def parse_when(when: str, *, now: datetime, zone: ZoneInfo) -> datetime:
    """One instant (UTC) from a time phrase such as "in 2h" or "tomorrow at 9", read at `now`
    in `zone`. Wall-clock phrases are placed with zoneinfo (DST-correct); durations are added to
    `now` itself."""
    local_now = now.astimezone(zone).replace(tzinfo=None)
    text = _BARE_HOUR.sub(lambda m: f"at {m.group(1)}:00", when.strip())
    text = re.sub(r"^on\s+", "", text, flags=re.IGNORECASE)
    parsed = dateparser.parse(
        text,
        languages=["en"],
        settings={
            "PREFER_DATES_FROM": "future",
            "RELATIVE_BASE": local_now,
            "RETURN_AS_TIMEZONE_AWARE": False,
            "PREFER_DAY_OF_MONTH": "first",
        },
    )
    if parsed is None:
        raise CommandError(f"I could not tell when {when!r} is. {ACCEPTED}")
    if _DURATION.match(text):
        due: datetime = now.astimezone(UTC) + (parsed - local_now)
    else:
        due = _existing(parsed.replace(tzinfo=zone)).astimezone(UTC)
    if due <= now:
        raise CommandError(f"That time is in the past. {ACCEPTED}")
    return due


def _hour(hour: int, ampm: str | None) -> int:
    if ampm is None:
        return hour
    return hour % 12 + (12 if ampm.lower() == "pm" else 0)


def _existing(wall: datetime) -> datetime:
    """A local wall time that exists: one skipped by a DST change moves on by the gap."""
    utc = wall.astimezone(UTC)
    back = utc.astimezone(wall.tzinfo)
    if back.replace(tzinfo=None) != wall.replace(tzinfo=None):
        return back  # 02:30 on a spring-forward night is 03:30
    return wall

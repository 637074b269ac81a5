"""Reminders: phrases read in the person's zone (DST included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.errors import CommandError
from bot.reminders import Rule, parse_reminder

BERLIN = ZoneInfo("Europe/Berlin")
SENDER = "whatsapp:+14155238886"
PERSON = "whatsapp:+15551234567"
# Saturday 28 March 2026, 20:00 in Berlin (CET, +01:00); clocks go forward that night.
SATURDAY_EVENING = datetime(2026, 3, 28, 20, 0, tzinfo=BERLIN)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("phrase", "due", "text"),
    [
        ("in 2h call mom", berlin(2026, 3, 28, 22, 0), "call mom"),
        ("in 90 minutes tea", berlin(2026, 3, 28, 21, 30), "tea"),
        ("at 18:00 pick up", berlin(2026, 3, 29, 18, 0), "pick up"),  # 18:00 passed: tomorrow
        ("at 21:15 news", berlin(2026, 3, 28, 21, 15), "news"),
        ("tomorrow at 9 water the plants", berlin(2026, 3, 29, 9, 0), "water the plants"),
        ("tomorrow at 9:30am run", berlin(2026, 3, 29, 9, 30), "run"),
        ("on 24 Dec 18:00 presents", berlin(2026, 12, 24, 18, 0), "presents"),
        ("every day at 09:00 stand-up", berlin(2026, 3, 29, 9, 0), "stand-up"),
        ("every monday at 10:00 weekly", berlin(2026, 3, 30, 10, 0), "weekly"),
    ],
)
def test_each_phrase_lands_at_its_instant_in_the_persons_zone(
    phrase: str, due: datetime, text: str
) -> None:
    """Every /remind form is read as wall-clock time in Berlin, across the DST change too."""
    schedule = parse_reminder(phrase, now=SATURDAY_EVENING, zone=BERLIN)
    assert schedule.due == due.astimezone(UTC)
    assert schedule.text == text


def test_in_2h_across_the_dst_change_is_two_real_hours() -> None:
    """A duration is counted on the timeline: 01:30 + 2h on the spring-forward night is 04:30."""
    now = berlin(2026, 3, 29, 1, 30)
    schedule = parse_reminder("in 2h tea", now=now, zone=BERLIN)
    assert schedule.due - now.astimezone(UTC) == timedelta(hours=2)
    assert schedule.due.astimezone(BERLIN).hour == 4


def test_every_day_at_nine_stays_nine_local_across_the_march_change() -> None:
    """A daily 09:00 in Berlin is 08:00 UTC before the change and 07:00 UTC after it."""
    rule = parse_reminder("every day at 09:00 pills", now=SATURDAY_EVENING, zone=BERLIN).rule
    assert rule == Rule(hour=9, minute=0)
    slot = berlin(2026, 3, 27, 9, 0).astimezone(UTC)
    slots = []
    for _ in range(4):
        slot = rule.next_after(slot, BERLIN)
        slots.append(slot)
    assert [s.astimezone(BERLIN).hour for s in slots] == [9, 9, 9, 9]
    assert [s.hour for s in slots] == [8, 7, 7, 7]


@pytest.mark.parametrize(
    ("phrase", "start"),
    [
        ("on 24 Dec 2025 18:00 too late", "That time is in the past."),
        ("sometime soonish", "I could not tell when."),
        ("every day at 25:00 nope", "That time does not exist."),
    ],
)
def test_past_and_unreadable_phrases_say_what_is_accepted(phrase: str, start: str) -> None:
    """A time in the past or a phrase without a time is one line listing the accepted forms."""
    with pytest.raises(CommandError) as caught:
        parse_reminder(phrase, now=SATURDAY_EVENING, zone=BERLIN)
    assert str(caught.value).startswith(start)
    assert "/remind in 2h TEXT" in str(caught.value)
    assert "\n" not in str(caught.value)

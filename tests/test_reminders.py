"""Reminders on real Redis: phrases read in the person's zone (DST included), /remind list and
cancel, /tz, the per-sender limit, and firing through the outbox to fake Twilio exactly once:
two workers at once, a gateway that was down over the due time, a daily one across slots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from bot.app import App, open_app
from bot.config import parse_config
from bot.delivery import Outbox, outbox_key
from bot.errors import CommandError
from bot.messages import InboundMessage
from bot.reminders import (
    DUE_KEY,
    MAX_PENDING,
    Fired,
    RedisReminders,
    ReminderFirer,
    Rule,
    decode_claimed,
    parse_reminder,
)
from bot.settings import Settings
from bot.worker import Worker
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, echo
from tests.fakes.twilio_server import FakeTwilio, outside_window
from tests.helpers import (
    Clock,
    bot_env,
    gateway_config_text,
    inbound,
    run_bot,
    run_turn,
    twilio_settings,
)

BERLIN = ZoneInfo("Europe/Berlin")
SENDER = "whatsapp:+14155238886"
PERSON = "whatsapp:+15551234567"
# Saturday 28 March 2026, 20:00 in Berlin (CET, +01:00); clocks go forward that night.
SATURDAY_EVENING = datetime(2026, 3, 28, 20, 0, tzinfo=BERLIN)
START = SATURDAY_EVENING.astimezone(UTC)  # for arithmetic in real hours (Berlin's is wall time)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("phrase", "due", "text"),
    [
        ("in 2h call mom", berlin(2026, 3, 28, 22, 0), "call mom"),
        ("in 90 minutes tea", berlin(2026, 3, 28, 21, 30), "tea"),
        ("in 2h30m tea", berlin(2026, 3, 28, 22, 30), "tea"),
        ("friday at 8:30 dentist", berlin(2026, 4, 3, 8, 30), "dentist"),
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
        ("at 18:00", "What should I remind you of?"),
    ],
)
def test_past_and_unreadable_phrases_say_what_is_accepted(phrase: str, start: str) -> None:
    """A time in the past or a phrase without a time is one line listing the accepted forms."""
    with pytest.raises(CommandError) as caught:
        parse_reminder(phrase, now=SATURDAY_EVENING, zone=BERLIN)
    assert str(caught.value).startswith(start)
    assert "/remind in 2h TEXT" in str(caught.value)
    assert "\n" not in str(caught.value)


@dataclass
class Rig:
    """A gateway with WhatsApp pointed at fake Twilio, a reminders store and workers on a
    settable clock."""

    app: App
    twilio: FakeTwilio
    model: FakeOpenAI
    redis: aioredis.Redis
    events: CapturedEvents
    clock: Clock
    store: RedisReminders

    def worker(self) -> Worker:
        return Worker(
            redis=self.app.redis.client,
            agent=self.app.agent,
            memory=self.app.memory,
            senders=self.app.senders,
            log=self.app.log,
            clock=self.clock,
            reminders=self.store,
        )

    def firer(self) -> ReminderFirer:
        outbox = Outbox(
            redis=self.redis, senders=self.app.senders, log=self.app.log, clock=self.clock
        )
        return ReminderFirer(
            store=self.store,
            outbox=outbox,
            may_tell=self.app.agent.may_tell,
            log=self.app.log,
            lease_ms=30000,
        )

    async def add(self, text: str, due: datetime, rule: Rule | None = None) -> str:
        reminder = await self.store.add(
            channel="whatsapp",
            conversation=PERSON,
            sender=PERSON,
            text=text,
            due=due,
            zone="Europe/Berlin",
            rule=rule,
        )
        return reminder.id

    def bodies(self) -> list[str]:
        return [m.body or "" for m in self.twilio.messages]

    async def until(self, condition: Callable[[], bool], within: float = 15) -> None:
        """Poll until `condition` holds (workers poll the due index once a second)."""
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - polling a condition with a deadline
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(rig: Rig, count: int = 1) -> AsyncIterator[list[Worker]]:
    """`count` workers polling until the block ends."""
    stop = asyncio.Event()
    workers = [rig.worker() for _ in range(count)]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        yield workers
    finally:
        stop.set()
        await asyncio.gather(*tasks)


TEMPLATE = "HX0123456789abcdef0123456789abcdef"


@contextlib.asynccontextmanager
async def open_rig(
    redis_url: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    events: CapturedEvents,
    *,
    template: str | None = None,
) -> AsyncIterator[Rig]:
    """A rig whose WhatsApp channel has `reminderTemplateSid: template` when given."""
    whatsapp = (
        f'dmPolicy: "open", reminderTemplateSid: "{template}"' if template else ('dmPolicy: "open"')
    )
    async with FakeOpenAI(models=["local-model"], default=echo) as model, FakeTwilio() as twilio:
        text = gateway_config_text(model.base_url).rstrip().rstrip("}")
        text += f"""channels: {{ whatsapp: {{ {whatsapp} }}, telegram: {{ enabled: false }} }},
            commands: {{ admins: ["console:tester"] }} }}"""
        config = parse_config(text, source="test.json5", env={})
        settings = Settings(
            redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None,
            **twilio_settings(twilio, SENDER),
        )  # type: ignore[call-arg]  # fmt: skip
        clock = Clock(SATURDAY_EVENING.timestamp())
        async with open_app(settings, config, events.log) as app:
            store = RedisReminders(app.redis.client, log=app.log, default_zone="UTC", clock=clock)
            yield Rig(app, twilio, model, redis_client, events, clock, store)


@pytest.fixture
async def rig(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, events: CapturedEvents
) -> AsyncIterator[Rig]:
    async with open_rig(redis_url, redis_client, tmp_path, events) as rig:
        yield rig


async def test_outside_the_window_a_reminder_goes_as_the_content_template(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, events: CapturedEvents
) -> None:
    """A person silent for more than 24 h gets the reminder as the Content Template, the text
    as variable 1; within the window it goes as plain text."""
    async with open_rig(redis_url, redis_client, tmp_path, events, template=TEMPLATE) as rig:
        await rig.add("soon", START + timedelta(hours=2))
        await rig.add("call mom", START + timedelta(hours=30))
        async with running(rig):
            rig.clock.now += 2 * 3600
            await rig.until(lambda: len(rig.twilio.messages) == 1)
            rig.clock.now += 28 * 3600
            await rig.until(lambda: len(rig.twilio.messages) == 2)
    plain, templated = rig.twilio.messages
    assert (plain.body, plain.content_sid) == ("⏰ Reminder: soon", None)
    assert templated.content_sid == TEMPLATE
    assert json.loads(templated.content_variables or "") == {"1": "⏰ Reminder: call mom"}
    assert not templated.body


async def test_without_a_template_a_refused_reminder_is_logged_with_the_hint(rig: Rig) -> None:
    """Twilio's 63016 for a reminder outside the window is a reminder_failed event that names
    the setting that fixes it."""
    await rig.add("call mom", START + timedelta(hours=30))
    rig.twilio.script(outside_window())
    async with running(rig):
        rig.clock.now += 30 * 3600
        await rig.until(lambda: bool(rig.events.events("reminder_failed")))
    [failed] = rig.events.events("reminder_failed")
    assert "63016" in failed["error"]
    assert "reminderTemplateSid" in failed["error"]
    assert failed["quiet_for"] == 30 * 3600
    assert not rig.twilio.messages


async def test_a_due_reminder_arrives_through_the_outbox_on_whatsapp(rig: Rig) -> None:
    """Once its time comes, the text goes to the person as a WhatsApp message, not to a model."""
    await rig.add("call mom", START + timedelta(hours=2))
    async with running(rig):
        rig.clock.now += 2 * 3600
        await rig.until(lambda: bool(rig.twilio.messages))
    assert rig.bodies() == ["⏰ Reminder: call mom"]
    assert rig.twilio.messages[0].to == PERSON
    assert rig.model.requests == []  # the text never reaches a model
    assert await rig.store.pending(PERSON) == []
    assert not await rig.redis.zcard(DUE_KEY)
    fired = rig.events.events("reminder_fired")
    assert [(e["late"], e["recurring"]) for e in fired] == [(False, False)]


async def test_a_reminder_due_during_a_turn_goes_out_after_that_turns_reply(rig: Rig) -> None:
    """A reminder that comes due while the conversation's turn runs waits for the lease and
    queues behind the turn's reply."""
    rig.model.script(Reply(text="the answer", delay=0.5))
    await rig.add("tea", START + timedelta(minutes=1))
    async with running(rig):
        await rig.app.intake.accept(
            InboundMessage(
                channel="whatsapp",
                conversation=PERSON,
                sender=PERSON,
                text="a question",
                platform_id="q1",
                ts=time.time(),
            )
        )
        await rig.until(lambda: bool(rig.model.requests))  # the turn holds the lease now
        rig.clock.now += 60
        await rig.until(lambda: len(rig.twilio.messages) == 2)
    assert rig.bodies() == ["the answer", "⏰ Reminder: tea"]


async def test_two_workers_polling_at_once_fire_a_due_reminder_once(rig: Rig) -> None:
    """Two workers that both go for the same due reminder queue its text once."""
    rid = await rig.add("once", START + timedelta(minutes=1))
    rig.clock.now += 60
    first, second = rig.firer(), rig.firer()
    claims = await asyncio.gather(first.claim(10), second.claim(10))
    assert sorted(len(c) for c in claims) == [0, 1]  # the claim goes to one of them
    verdicts = await asyncio.gather(first.fire(PERSON, rid), second.fire(PERSON, rid))
    assert sorted(str(v) for v in verdicts) in (["fired", "gone"], ["None", "fired"])
    assert len(await rig.redis.lrange(outbox_key(PERSON), 0, -1)) == 1


async def test_a_claim_left_by_a_crashed_firer_does_not_fire_the_slot_again(rig: Rig) -> None:
    """A daily reminder fired by a worker that died before it fixed the due index is found
    again, seen as fired for that slot, and only its index entry is put right."""
    due = START + timedelta(minutes=1)
    rid = await rig.add("pills", due, Rule(hour=20, minute=1))
    rig.clock.now += 60
    firer = rig.firer()
    assert await firer.fire(PERSON, rid) is Fired.FIRED
    await rig.redis.zadd(DUE_KEY, {f"{rid}:{PERSON}": int(due.timestamp() * 1000)})  # the crash
    assert await firer.fire(PERSON, rid) is Fired.STALE
    assert len(await rig.redis.lrange(outbox_key(PERSON), 0, -1)) == 1
    nxt = await rig.redis.zscore(DUE_KEY, f"{rid}:{PERSON}")
    assert nxt == (due.astimezone(BERLIN) + timedelta(days=1)).timestamp() * 1000  # 20:01 local


async def test_down_over_the_due_time_fires_once_late_then_resumes_daily(rig: Rig) -> None:
    """Workers down for three days: the daily 09:00 fires once, marked late, then on time at
    its next slot."""
    schedule = parse_reminder("every day at 09:00 pills", now=SATURDAY_EVENING, zone=BERLIN)
    await rig.add(schedule.text, schedule.due, schedule.rule)
    rig.clock.now = berlin(2026, 4, 1, 12, 0).timestamp()  # nobody ran from Sunday to Wednesday
    async with running(rig):
        await rig.until(lambda: len(rig.twilio.messages) == 1)
        [pending] = await rig.store.pending(PERSON)
        assert pending.due_at == berlin(2026, 4, 2, 9, 0).astimezone(UTC)
        rig.clock.now = berlin(2026, 4, 2, 9, 0, 20).timestamp()
        await rig.until(lambda: len(rig.twilio.messages) == 2)
    assert rig.bodies() == ["⏰ Reminder: pills (late: due 09:00)", "⏰ Reminder: pills"]
    [pending] = await rig.store.pending(PERSON)
    assert pending.due_at == berlin(2026, 4, 3, 9, 0).astimezone(UTC)


async def test_a_reminder_of_a_sender_no_longer_let_in_is_dropped(rig: Rig) -> None:
    """When the access policy no longer admits the sender, the reminder is dropped, not sent."""
    rid = await rig.store.add(
        channel="telegram",
        conversation="telegram:42",
        sender="telegram:42",
        text="secret",
        due=START + timedelta(minutes=1),
        zone="UTC",
    )
    rig.clock.now += 120
    assert await rig.firer().fire("telegram:42", rid.id) is Fired.GONE
    assert await rig.store.pending("telegram:42") == []
    assert not await rig.redis.exists(outbox_key("telegram:42"))
    assert rig.events.events("reminder_failed")


async def test_fifty_pending_per_sender_admins_exempt(rig: Rig) -> None:
    """The 51st pending reminder is refused with a way out; an admin has no limit."""
    due = START + timedelta(days=1)
    for _ in range(MAX_PENDING):
        await rig.add("x", due)
    with pytest.raises(CommandError, match="cancel one first"):
        await rig.add("one too many", due)
    assert await rig.redis.zcard(DUE_KEY) == MAX_PENDING
    admin = RedisReminders(rig.redis, admins=frozenset({PERSON}), clock=rig.clock)
    await admin.add(
        channel="whatsapp", conversation=PERSON, sender=PERSON, text="y", due=due, zone="UTC"
    )
    assert len(await rig.store.pending(PERSON)) == MAX_PENDING + 1


async def test_remind_list_and_cancel_in_the_persons_zone(rig: Rig) -> None:
    """/tz sets the zone /whoami shows; /remind sets, lists (numbered, local) and cancels."""

    async def say(text: str, n: int) -> str:
        message = inbound(text, n=n, conversation=PERSON, channel="whatsapp")
        [reply] = await run_turn(rig.app, message)
        return reply.text

    assert "time zone UTC" in await say("/whoami", 1)
    assert "Unknown time zone 'Mars/Base'" in await say("/tz Mars/Base", 2)
    assert "Europe/Berlin" in await say("/tz Europe/Berlin", 3)
    assert "time zone Europe/Berlin" in await say("/whoami", 4)
    assert "call mom" in await say("/remind on 24 Dec 2099 18:00 call mom", 5)
    assert "stand-up" in await say("/remind every monday at 10:00 stand-up", 6)
    listing = await say("/remind list", 7)
    lines = listing.splitlines()
    assert lines[0] == "Your reminders (Europe/Berlin):"
    assert lines[1].startswith("1. Mon ")
    assert lines[1].endswith("10:00, every Monday at 10:00: stand-up")
    assert lines[2] == "2. Thu 24 Dec 2099 18:00: call mom"
    assert await say("/remind cancel 2", 8) == "Cancelled: call mom"
    assert "No reminder number 5" in await say("/remind cancel 5", 9)
    assert "I could not tell when" in await say("/remind whenever", 10)
    assert "2099" not in await say("/remind list", 11)
    set_events = rig.events.events("reminder_set")
    assert [e["recurring"] for e in set_events] == [False, True]
    assert set_events[0]["due"] == "2099-12-24T17:00:00+00:00"


async def test_the_terminal_cannot_set_reminders(rig: Rig) -> None:
    """`bot chat`'s terminal may be closed when a reminder fires: /remind says where it works."""
    [reply] = await run_turn(rig.app, inbound("/remind in 2h tea"))
    assert reply.text.startswith("Reminders are not available here: set them on WhatsApp")
    assert not await rig.redis.zcard(DUE_KEY)


async def test_setting_a_whatsapp_reminder_beyond_a_day_warns_without_a_template(
    rig: Rig,
) -> None:
    """Without reminderTemplateSid, a WhatsApp reminder more than 24 h away says it may not
    arrive; one within the day does not."""
    message = InboundMessage(
        channel="whatsapp",
        conversation=PERSON,
        sender=PERSON,
        text="/remind in 2h tea",
        platform_id="w1",
        ts=time.time(),
    )
    [soon] = await run_turn(rig.app, message)
    assert "WhatsApp may refuse it" not in soon.text
    later = InboundMessage(
        **{**message.to_dict(), "text": "/remind in 30h tea", "platform_id": "w2"}
    )
    [far] = await run_turn(rig.app, later)
    assert "WhatsApp may refuse it" in far.text


async def test_bot_reminders_lists_and_cancels_for_an_operator(
    rig: Rig, redis_url: str, tmp_path: Path
) -> None:
    """`bot reminders list [--json]` shows every pending one without its text; `cancel ID`
    removes it; an unknown ID exits 1."""
    rid = await rig.add("secret plan", START + timedelta(hours=2), Rule(hour=22, minute=0))
    env = bot_env(tmp_path, REDIS_URL=redis_url)
    listed = await run_bot("reminders", "list", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.err
    assert listed.out.startswith(f"{rid}  2026-03-28 22:00 Europe/Berlin  {PERSON}")
    assert "every day at 22:00" in listed.out
    assert "secret" not in listed.out
    as_json = await run_bot("reminders", "list", "--json", env=env, cwd=tmp_path)
    row = json.loads(as_json.out)
    assert (row["id"], row["due"], row["chars"]) == (rid, "2026-03-28T21:00:00+00:00", 11)
    cancelled = await run_bot("reminders", "cancel", rid, env=env, cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    assert await rig.store.pending(PERSON) == []
    again = await run_bot("reminders", "cancel", rid, env=env, cwd=tmp_path)
    assert again.code == 1
    assert "no pending reminder" in again.err


async def test_reminders_fire_on_redis_cluster(
    cluster_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Every script touches one conversation's slot: set, list, fire and cancel work on a
    3-node cluster, for conversations spread over its nodes."""
    clock = Clock(START.timestamp())
    store = RedisReminders(cluster_client, clock=clock)
    outbox = Outbox(redis=cluster_client, senders={}, log=events.log, clock=clock)

    async def everyone(message: InboundMessage) -> bool:
        return True

    firer = ReminderFirer(
        store=store, outbox=outbox, may_tell=everyone, log=events.log, lease_ms=30000
    )
    people = [f"telegram:{n}" for n in range(6)]
    for person in people:
        await store.add(
            channel="telegram",
            conversation=person,
            sender=person,
            text=f"hi {person}",
            due=START + timedelta(minutes=1),
            zone="UTC",
        )
    await store.cancel(people[0], (await store.pending(people[0]))[0].id)
    clock.now += 60
    async with cluster_client.pipeline(transaction=False) as pipe:  # as a worker polls both
        outbox.queue_claim_due(pipe, 10, 5000)
        firer.queue_claim(pipe, 10)
        nothing_due, found = await pipe.execute()
    assert nothing_due == []
    claimed = decode_claimed(found)
    assert sorted(c for c, _ in claimed) == people[1:]
    verdicts = [await firer.fire(c, rid) for c, rid in claimed]
    assert verdicts == [Fired.FIRED] * 5
    for person in people[1:]:
        [entry] = await cluster_client.lrange(outbox_key(person), 0, -1)
        assert f"hi {person}" in entry
    assert not await cluster_client.zcard(DUE_KEY)

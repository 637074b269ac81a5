"""The outbox on real Redis against fake Twilio and Telegram: retries with backoff, order,
chunks never repeated after a crash, non-retryable failures, expiry, takeover by any worker,
lookups Twilio refuses, unreachable recipients and Twilio API keys; the head's progress as one
JSON string, and a hash an earlier version left under its old name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.app import App, open_app
from bot.config import parse_config
from bot.delivery import ADVANCE, DUE_KEY, LOAD, ChunkSender, head_key, outbox_key
from bot.memory import conversation_key
from bot.messages import InboundMessage, OutboundMessage
from bot.settings import Settings
from bot.worker import Worker, lease_key
from channels.whatsapp import TwilioMediaFetcher
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, echo
from tests.fakes.telegram_server import (
    FakeTelegram,
    TgReply,
    bot_blocked,
    chat_not_found,
    user_deactivated,
)
from tests.fakes.telegram_server import too_many_requests as telegram_429
from tests.fakes.twilio_server import (
    RECIPIENT_ERRORS,
    ApiKey,
    FakeTwilio,
    TwilioReply,
    forbidden,
    method_not_allowed,
    new_api_key,
    outside_window,
    server_error,
    too_many_requests,
    unreachable,
)
from tests.helpers import Clock, eventually, gateway_config_text, running_worker, twilio_settings

SENDER = "whatsapp:+14155238886"
PERSON = "whatsapp:+15551234567"
OTHER = "whatsapp:+15557654321"


@dataclass
class Rig:
    """A gateway's parts with WhatsApp and Telegram pointed at fakes, and a clock for workers."""

    app: App
    twilio: FakeTwilio
    telegram: FakeTelegram
    model: FakeOpenAI
    redis: aioredis.Redis
    events: CapturedEvents
    clock: Clock
    sequence: int = 0
    hold_ms: int = 5000  # how long the last worker made claims the due set (Worker._claim_due)

    def worker(self, *, retry_seconds: float = 3600, lease_seconds: float = 30) -> Worker:
        self.hold_ms = min(int(lease_seconds * 1000), 5000)
        return Worker(
            redis=self.app.redis.client,
            agent=self.app.agent,
            memory=self.app.memory,
            senders=self.app.senders,
            log=self.app.log,
            lease_seconds=lease_seconds,
            delivery_retry_seconds=retry_seconds,
            clock=self.clock,
        )

    async def say(self, text: str, conversation: str = PERSON) -> None:
        """A message from the person, stored as the web role stores it."""
        self.sequence += 1
        await self.app.intake.accept(
            InboundMessage(
                channel=conversation.split(":")[0],
                conversation=conversation,
                sender=conversation,
                text=text,
                platform_id=f"p{self.sequence}",
                ts=time.time(),
                meta={"chat_type": "private"},
            )
        )

    def bodies(self) -> list[str]:
        return [m.body or "" for m in self.twilio.messages]

    async def drive(self, condition: Callable[[], bool], within: float = 15) -> None:
        """Until `condition` holds: move the clock to the next due attempt, let workers run.

        A score of now + the claim hold is a worker's claim, not a due attempt (it is about to
        try, and will schedule the next one): the clock waits for it instead of jumping."""
        async with asyncio.timeout(within):
            while not condition():
                due = await self.redis.zrange(DUE_KEY, 0, 0, withscores=True)
                claimed = int(self.clock.now * 1000) + self.hold_ms
                if due and int(due[0][1]) != claimed:
                    self.clock.now = max(self.clock.now, due[0][1] / 1000)
                await asyncio.sleep(0.01)

    async def until(self, check: Callable[[], Awaitable[bool]], within: float = 10) -> None:
        """Poll a Redis condition until it holds; fail if `within` seconds pass first."""
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 - polling a condition with a deadline
                await asyncio.sleep(0.01)

    async def due(self) -> bool:
        """Whether the person's conversation waits in the due set."""
        return await self.redis.zscore(DUE_KEY, PERSON) is not None

    async def outbox(self, conversation: str = PERSON) -> list[str]:
        return list(await self.redis.lrange(outbox_key(conversation), 0, -1))

    async def outbox_holds(self, count: int) -> bool:
        return len(await self.outbox()) >= count

    async def settled(self) -> bool:
        """The person's outbox is empty and nothing is due (the worker records a send after
        the platform took it, so a test waits for this before reading Redis)."""
        return not await self.outbox() and not await self.redis.zcard(DUE_KEY)


async def lease_gone(redis: aioredis.Redis) -> bool:
    """Whether the person's conversation lease has run out."""
    return not await redis.exists(lease_key(PERSON))


@contextlib.asynccontextmanager
async def open_rig(
    redis_url: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    events: CapturedEvents,
    *,
    api_key: ApiKey | None = None,
) -> AsyncIterator[Rig]:
    """A rig whose Twilio REST calls use `api_key` when given (the fake accepts it), else
    the account SID and auth token."""
    keys: dict[str, Any] = {}
    if api_key is not None:
        keys = {"twilio_api_key_sid": api_key.sid, "twilio_api_key_secret": api_key.secret}
    async with (
        FakeOpenAI(models=["local-model"], default=echo) as model,
        FakeTwilio(api_keys=(api_key,) if api_key else ()) as twilio,
        FakeTelegram() as telegram,
    ):
        text = gateway_config_text(model.base_url).rstrip().rstrip("}")
        text += """channels: {
            whatsapp: { dmPolicy: "open", textChunkLimit: 20 },
            telegram: { dmPolicy: "open", mode: "polling" },
        } }"""
        config = parse_config(text, source="test.json5", env={})
        settings = Settings(
            redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None,
            **twilio_settings(twilio, SENDER),
            telegram_bot_token=telegram.token, telegram_api_base_url=telegram.base_url,
            **keys,
        )  # type: ignore[call-arg]  # fmt: skip
        async with open_app(settings, config, events.log) as app:
            yield Rig(app, twilio, telegram, model, redis_client, events, Clock())


@pytest.fixture
async def rig(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, events: CapturedEvents
) -> AsyncIterator[Rig]:
    async with open_rig(redis_url, redis_client, tmp_path, events) as rig:
        yield rig


@pytest.fixture
async def running(rig: Rig) -> AsyncIterator[Worker]:
    """One worker taking turns and due deliveries until the test ends."""
    worker = rig.worker()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    yield worker
    stop.set()
    await task


async def test_5xx_then_ok_is_delivered_once_after_backoff(rig: Rig, running: Worker) -> None:
    """Three 503s: the reply waits in Redis and is retried after 1, 2 and 4 s, then sent once."""
    rig.twilio.script(server_error(503), server_error(503), server_error(503))
    await rig.say("hello")
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    await rig.until(rig.settled)
    assert rig.bodies() == ["echo:hello"]
    assert [e["ms"] for e in rig.events.events("send_retry")] == [1000, 2000, 4000]
    assert not rig.events.events("send_failed")
    assert await rig.outbox() == []
    assert await rig.redis.zcard(DUE_KEY) == 0


async def test_retry_after_of_a_429_is_honoured(rig: Rig, running: Worker) -> None:
    """Twilio's Retry-After (7 s) sets the next attempt, not the default backoff."""
    rig.twilio.script(too_many_requests(retry_after=7))
    started = rig.clock.now
    await rig.say("hello")
    await rig.until(rig.due)
    assert await rig.redis.zscore(DUE_KEY, PERSON) == pytest.approx((started + 7) * 1000, abs=5)
    assert rig.twilio.messages == []
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    assert rig.bodies() == ["echo:hello"]


async def test_telegram_429_is_retried_after_retry_after(rig: Rig, running: Worker) -> None:
    """A Telegram 429 with retry_after 3 is retried 3 s later, from the outbox, once."""
    rig.telegram.script("sendMessage", telegram_429(retry_after=3))
    await rig.say("hi there", conversation="telegram:42")
    await rig.drive(lambda: len(rig.telegram.sent) == 1)
    assert [s["text"] for s in rig.telegram.sent] == ["echo:hi there"]
    assert [e["ms"] for e in rig.events.events("send_retry")] == [3000]


async def test_non_retryable_is_logged_once_and_the_next_reply_goes_out(
    rig: Rig, running: Worker
) -> None:
    """A 63016 is not retried: one send_failed with the code and hint; the next reply is sent."""
    rig.twilio.script(outside_window())
    await rig.say("first")
    await rig.drive(lambda: bool(rig.events.events("send_failed")))
    await rig.say("second")
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    [failed] = rig.events.events("send_failed")
    assert "63016" in failed["error"]
    assert "24-hour window" in failed["error"]
    assert failed["retryable"] is False
    assert rig.bodies() == ["echo:second"]
    assert len([r for r in rig.twilio.requests if r.method == "POST"]) == 2


async def test_a_reply_that_cannot_be_delivered_expires_with_an_error_event(rig: Rig) -> None:
    """After deliveryRetrySeconds of failures the reply is dropped with `reply_expired`."""
    worker = rig.worker(retry_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    rig.twilio.outage(3600)
    queued_ms = int(rig.clock.now * 1000)  # the clock moves only to due attempts from here
    await rig.say("a long sentence that becomes two chunks")
    await rig.drive(lambda: bool(rig.events.events("reply_expired")))
    await rig.until(rig.settled)
    stop.set()
    await task
    [expired] = rig.events.events("reply_expired")
    assert expired["level"] == "error"
    assert expired["undelivered"] == expired["chunks"] == 3
    # given up at the deadline (30 s), not at the backoff step past it (1+2+4+8+16 = 31 s)
    assert round(rig.clock.now * 1000) - queued_ms == 30_000
    assert await rig.outbox() == []
    assert await rig.redis.zcard(DUE_KEY) == 0
    assert rig.twilio.messages == []


async def test_a_later_reply_waits_behind_an_undelivered_one(rig: Rig, running: Worker) -> None:
    """While the first reply waits for Twilio, the second is stored behind it; then both go
    out in order."""
    rig.twilio.outage(3600)
    await rig.say("one")
    await rig.until(rig.due)
    await rig.say("two")
    await rig.until(lambda: rig.outbox_holds(2))
    assert rig.twilio.messages == []
    rig.twilio.outage(0)
    await rig.drive(lambda: len(rig.twilio.messages) == 2)
    assert rig.bodies() == ["echo:one", "echo:two"]


async def test_a_resumed_send_repeats_no_chunk_the_platform_took(rig: Rig) -> None:
    """A worker dies while Twilio takes chunk 2 of 3: another worker reconciles with Twilio's
    Messages list and sends only chunk 3."""
    rig.model.script(Reply(text="alpha alpha alpha. beta beta beta. gamma gamma."))
    rig.twilio.script(TwilioReply(), TwilioReply(delay=0.3))  # chunk 2 is slow to answer
    first = rig.worker(lease_seconds=0.5)
    await rig.say("talk")
    turn = asyncio.create_task(first.process(PERSON))
    await eventually(lambda: len([r for r in rig.twilio.requests if r.method == "POST"]) >= 2)
    turn.cancel()  # the first worker is gone mid-send; its lease runs out
    await asyncio.gather(turn, return_exceptions=True)
    await rig.twilio.wait_for_messages(2)  # Twilio took chunk 2 all the same
    await rig.until(lambda: lease_gone(rig.redis))
    progress = json.loads(await rig.redis.get(head_key(PERSON)))  # one string, as the first left it
    assert progress["sent"] == 1
    assert progress["started"] > 0  # chunk 2's send had begun: the next worker looks it up
    assert await rig.redis.ttl(head_key(PERSON)) > 0  # updates keep the expiry it was made with

    second = rig.worker(lease_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    await rig.drive(lambda: len(rig.twilio.messages) >= 3)
    stop.set()
    await task
    assert rig.bodies() == ["alpha alpha alpha.", "beta beta beta.", "gamma gamma."]
    assert len(rig.events.events("send_reconciled")) == 1
    assert await rig.outbox() == []
    assert await rig.redis.exists(head_key(PERSON)) == 0


async def test_another_worker_delivers_after_the_first_one_stopped(rig: Rig) -> None:
    """A reply left waiting by a worker that has stopped is delivered by a new one."""
    first = rig.worker()
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    rig.twilio.script(server_error(500))
    await rig.say("hello")
    await rig.until(rig.due)
    stop.set()
    await task
    assert rig.twilio.messages == []

    second = rig.worker()
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    stop.set()
    await task
    assert rig.bodies() == ["echo:hello"]
    assert len(rig.model.requests_to("/responses")) == 1


async def test_a_head_hash_left_by_an_earlier_version_is_not_read(rig: Rig) -> None:
    """An upgrade while a reply was in flight: it is in the outbox, the earlier version's
    progress for it a hash under the old name `…:outbox:head` (its send begun), and Twilio took
    it. The progress now lives under another name, so that hash is never read (a GET of it would
    fail, WRONGTYPE). When the person writes again, the old reply has no progress: it counts as
    possibly sent, is looked up and found, not sent again, and the new reply follows it. The
    hash is left alone to expire."""
    reply = OutboundMessage(channel="whatsapp", conversation=PERSON, text="hi there", reply_to="p0")
    entry = rig.worker().outbox.entry(reply)
    old_head = conversation_key(PERSON, "outbox:head")
    await rig.redis.hset(old_head, mapping={"id": entry.id, "sent": 0, "started": entry.at})
    await rig.redis.expire(old_head, 3600)
    await rig.redis.rpush(outbox_key(PERSON), entry.to_json())
    sender = rig.app.senders["whatsapp"]
    assert isinstance(sender, ChunkSender)
    await sender.send_chunk(reply, entry.chunks[0])  # the earlier version's send: taken
    async with working(rig):
        await rig.say("again")
        await rig.until(rig.settled)
    assert rig.bodies() == ["hi there", "echo:again"]
    assert len(rig.events.events("send_reconciled")) == 1
    assert len(twilio_calls(rig, "GET")) == 1
    assert await rig.redis.exists(head_key(PERSON)) == 0
    assert await rig.redis.type(old_head) == "hash"
    assert 0 < await rig.redis.ttl(old_head) <= 3600


async def test_advance_is_fenced_by_the_lease_and_the_head_id(rig: Rig) -> None:
    """ADVANCE by a worker without the lease, or for a reply that is not the head, changes
    nothing: the reply stays queued, its progress as it was, expiring; the right call pops it
    and deletes the progress."""
    reply = OutboundMessage(channel="whatsapp", conversation=PERSON, text="hi", reply_to="p1")
    entry = rig.worker().outbox.entry(reply)
    keys = [lease_key(PERSON), outbox_key(PERSON), head_key(PERSON)]
    await rig.redis.set(keys[0], "ours")
    await rig.redis.rpush(keys[1], entry.to_json())
    tag, _, progress = await LOAD.on(rig.redis)(keys=keys, args=["ours", 600])
    assert tag == "head"
    assert json.loads(progress) == {"id": entry.id, "sent": 0, "started": 0}
    advance = ADVANCE.on(rig.redis)
    for token, head in (("theirs", entry.id), ("ours", "another")):
        assert await advance(keys=keys, args=[token, head, 1, 1, 5, "1", 600]) == ["lost"]
        assert await rig.outbox() == [entry.to_json()]
        assert await rig.redis.get(keys[2]) == progress
        assert 0 < await rig.redis.ttl(keys[2]) <= 600
    assert await advance(keys=keys, args=["ours", entry.id, 1, 1, 5, "1", 600]) == ["empty", ""]
    assert await rig.outbox() == []
    assert await rig.redis.exists(keys[2]) == 0


async def test_advance_makes_the_next_reply_the_head_and_keeps_the_outbox_expiring(
    rig: Rig,
) -> None:
    """The ADVANCE of a done head pops it and its next together and puts the next back as the
    new head, with fresh progress: behind a third reply the outbox keeps its expiry; when the
    next was the last one the outbox expires ttl s from now, never not at all."""
    replies = [
        OutboundMessage(channel="whatsapp", conversation=PERSON, text=t, reply_to=f"p{n}")
        for n, t in enumerate(["one", "two", "three"])
    ]
    entries = [rig.worker().outbox.entry(r) for r in replies]
    keys = [lease_key(PERSON), outbox_key(PERSON), head_key(PERSON)]
    await rig.redis.set(keys[0], "ours")
    await rig.redis.rpush(keys[1], *[e.to_json() for e in entries])
    await rig.redis.expire(keys[1], 900)
    advance = ADVANCE.on(rig.redis)
    for n, left in ((0, 2), (1, 1)):
        await LOAD.on(rig.redis)(keys=keys, args=["ours", 600])
        done = await advance(keys=keys, args=["ours", entries[n].id, 1, 1, 5, "", 600])
        assert done == ["next", entries[n + 1].to_json(), ""]
        assert await rig.outbox() == [e.to_json() for e in entries[n + 1 :]]
        assert len(await rig.outbox()) == left
        progress = json.loads(await rig.redis.get(keys[2]))
        assert progress == {"id": entries[n + 1].id, "sent": 0}
        ttl = await rig.redis.ttl(keys[1])
        assert (600 < ttl <= 900) if left == 2 else (0 < ttl <= 600)
    assert await advance(keys=keys, args=["ours", entries[2].id, 1, 1, 5, "", 600]) == [
        "empty",
        "",
    ]
    assert await rig.redis.exists(keys[1], keys[2]) == 0


def working(rig: Rig) -> contextlib.AbstractAsyncContextManager[Worker]:
    """One worker taking turns and due deliveries inside the block."""
    return running_worker(rig.worker())


def twilio_calls(rig: Rig, method: str) -> list[str]:
    """The auth user of each Messages request of `method` (POST: create, GET: list)."""
    return [r.user or "" for r in rig.twilio.requests if r.method == method]


# -- a lookup Twilio refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("refusal", "hint"),
    [(forbidden(), '"Messages: read"'), (method_not_allowed(), "only POST")],
    ids=["403-restricted-key", "405-proxy"],
)
async def test_a_refused_lookup_sends_the_chunk_anyway_and_says_so_once(
    rig: Rig, running: Worker, refusal: TwilioReply, hint: str
) -> None:
    """Twilio's list answers 403 (or 405) and the first two sends 503: the reply is still
    delivered once, with one `reconcile_failed` (status, hint) and no lookup after it."""
    rig.twilio.refuse_list(refusal)
    rig.twilio.script(server_error(503), server_error(503))
    await rig.say("hello")
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    await rig.until(rig.settled)
    assert rig.bodies() == ["echo:hello"]
    [failed] = rig.events.events("reconcile_failed")
    assert failed["status"] == refusal.status
    assert hint in failed["error"]
    assert failed["level"] == "warning"
    assert not rig.events.events("send_failed")
    assert len(twilio_calls(rig, "POST")) == 3
    assert len(twilio_calls(rig, "GET")) == 1  # the reply's later resends skip the lookup
    assert [e["attempt"] for e in rig.events.events("send_retry")] == [1, 2]


async def test_a_lookup_that_fails_retryably_is_retried_not_skipped(
    rig: Rig, running: Worker
) -> None:
    """A 503 from the list is retried like a send: nothing is sent blind while it lasts,
    and once the list answers the reply goes out once."""
    rig.twilio.refuse_list(server_error(503))
    rig.twilio.script(server_error(503))
    await rig.say("hello")
    await rig.drive(lambda: len(rig.events.events("send_retry")) >= 3)
    assert len(twilio_calls(rig, "POST")) == 1  # only the first send: the lookups wait
    rig.twilio.refuse_list(None)
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    await rig.until(rig.settled)
    assert rig.bodies() == ["echo:hello"]
    assert not rig.events.events("reconcile_failed")
    assert not rig.events.events("send_failed")


# -- recipients that cannot be reached -------------------------------------------------------


@pytest.mark.parametrize("code", sorted(RECIPIENT_ERRORS))
async def test_an_unreachable_whatsapp_recipient_is_dropped_at_once(
    rig: Rig, running: Worker, code: int
) -> None:
    """Twilio's invalid-recipient error: one attempt, `recipient_unreachable` with the code
    and the masked number; replies to others and the person's later ones still go out."""
    rig.twilio.refuse_recipient(PERSON, unreachable(code))
    await rig.say("first")
    await rig.say("hi", conversation=OTHER)
    await rig.drive(lambda: bool(rig.events.events("recipient_unreachable")))
    await rig.drive(lambda: len(rig.twilio.messages) == 1)
    [dropped] = rig.events.events("recipient_unreachable")
    assert dropped["code"] == code
    assert dropped["conversation"] == "whatsapp:+1555•••4567"
    assert str(code) in dropped["error"]
    assert not rig.events.events("send_retry")
    assert not rig.events.events("send_failed")
    rig.twilio.refuse_recipient(PERSON, None)  # e.g. they sent START again
    await rig.say("second")
    await rig.drive(lambda: len(rig.twilio.messages) == 2)
    await rig.until(rig.settled)
    assert [(m.to, m.body) for m in rig.twilio.messages] == [
        (OTHER, "echo:hi"),
        (PERSON, "echo:second"),
    ]
    posts = [r.form["To"] for r in rig.twilio.requests if r.method == "POST"]
    assert posts.count(PERSON) == 2  # one refused attempt, one delivery


@pytest.mark.parametrize(
    ("refusal", "code"),
    [(bot_blocked(), 403), (user_deactivated(), 403), (chat_not_found(), 400)],
    ids=["blocked", "deactivated", "chat-not-found"],
)
async def test_a_telegram_chat_that_refuses_the_bot_is_dropped_at_once(
    rig: Rig, running: Worker, refusal: TgReply, code: int
) -> None:
    """A blocked bot, a deleted account or an unknown chat: one sendMessage, a
    `recipient_unreachable` event, and other chats (and that chat's later replies) go on."""
    rig.telegram.refuse_chat(42, refusal)
    await rig.say("first", conversation="telegram:42")
    await rig.say("hi", conversation="telegram:43")
    await rig.drive(lambda: bool(rig.events.events("recipient_unreachable")))
    await rig.drive(lambda: len(rig.telegram.sent) == 1)
    [dropped] = rig.events.events("recipient_unreachable")
    assert dropped["code"] == code
    assert dropped["conversation"] == "telegram:42"
    assert refusal.description is not None
    assert refusal.description in dropped["error"]
    assert not rig.events.events("send_retry")
    assert not rig.events.events("send_failed")
    rig.telegram.refuse_chat(42, None)  # unblocked
    await rig.say("second", conversation="telegram:42")
    await rig.drive(lambda: len(rig.telegram.sent) == 2)
    assert [(m["chat_id"], m["text"]) for m in rig.telegram.sent] == [
        (43, "echo:hi"),
        (42, "echo:second"),
    ]
    calls = rig.telegram.calls_to("sendMessage")
    assert [str(c.params["chat_id"]) for c in calls].count("42") == 2  # refused once, then sent


# -- Twilio REST credentials: API keys -------------------------------------------------------


async def test_with_an_api_key_every_rest_call_authenticates_as_the_key(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, events: CapturedEvents
) -> None:
    """TWILIO_API_KEY_SID/SECRET set: the send and the list lookup go out with the key's
    SID as the Basic auth user, under the account's URLs."""
    key = new_api_key()
    async with open_rig(redis_url, redis_client, tmp_path, events, api_key=key) as rig:
        rig.twilio.script(server_error(503))  # so that the retry reconciles with the list
        async with working(rig):
            await rig.say("hello")
            await rig.drive(lambda: len(rig.twilio.messages) == 1)
            await rig.until(rig.settled)
        assert rig.bodies() == ["echo:hello"]
        assert twilio_calls(rig, "POST") == [key.sid, key.sid]
        assert twilio_calls(rig, "GET") == [key.sid]
        assert {r.path.split("/")[3] for r in rig.twilio.requests} == {rig.twilio.account_sid}
        assert not rig.events.events("reconcile_failed")


async def test_a_restricted_key_without_messages_read_still_delivers(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, events: CapturedEvents
) -> None:
    """A key that may create but not list messages: a resend after a 503 is delivered, with
    one `reconcile_failed` naming the permission it lacks."""
    key = new_api_key(list_messages=False)
    async with open_rig(redis_url, redis_client, tmp_path, events, api_key=key) as rig:
        rig.twilio.script(server_error(503))
        async with working(rig):
            await rig.say("hello")
            await rig.drive(lambda: len(rig.twilio.messages) == 1)
            await rig.until(rig.settled)
        assert rig.bodies() == ["echo:hello"]
        [failed] = rig.events.events("reconcile_failed")
        assert failed["status"] == 403
        assert '"Messages: read"' in failed["error"]
        assert key.secret not in events.text


async def test_media_is_fetched_with_the_api_key_and_never_sent_to_the_cdn(
    tmp_path: Path,
) -> None:
    """With an API key, an attachment's Media resource is fetched with the key's Basic auth
    (the account's own token unused); the CDN it redirects to gets no credentials."""
    key = new_api_key()
    async with FakeTwilio(api_keys=(key,)) as twilio, aiohttp.ClientSession() as http:
        settings = Settings(
            _env_file=None, twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token, twilio_api_base_url=twilio.base_url,
            twilio_api_key_sid=key.sid, twilio_api_key_secret=key.secret,
        )  # type: ignore[call-arg]  # fmt: skip
        url = twilio.add_media("image/png", b"\x89PNG picture")
        message = InboundMessage(
            channel="whatsapp", conversation=PERSON, sender=PERSON, text="", platform_id="MM1",
            ts=time.time(), media=(url,), meta={"type0": "image/png"},
        )  # fmt: skip
        fetcher = TwilioMediaFetcher(settings=settings, http=http)
        attachment = await fetcher.fetch_media(message, 0, max_bytes=1024)
    assert attachment.data == b"\x89PNG picture"
    resource, cdn = twilio.media_hits
    assert resource.auth == (key.sid, key.secret)
    assert cdn.authorization is None

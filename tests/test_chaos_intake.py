"""Redis outages at intake, with real processes: every webhook is acked and nothing is lost.

A `bot serve` runs against a redis-server this test starts, stops and starts again; WhatsApp
webhooks sent meanwhile are kept in the local spool and answered once Redis is back. Telegram
polling keeps its offset until an update is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.config import parse_config
from bot.intake import RedisIntake, inbox_key
from bot.poller import Poller
from bot.settings import Settings
from channels.telegram import TelegramChannel
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, closed_port
from tests.fakes.telegram_server import FakeTelegram, private_text_update
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import RedisProcess, dead_redis, eventually, gateway_config_text, whatsapp_env

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
SENDER = "whatsapp:+14155238886"
SIDS = itertools.count(1)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="noted")) as fake:
        yield fake


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A Redis of this test's own, append-only: a restart keeps what it had."""
    server = RedisProcess(tmp_path / "redis", persistent=True)
    await server.start()
    yield server
    await server.stop()


class Served:
    """A running `bot serve` and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, url: str) -> None:
        self.proc = proc
        self.out = out
        self.url = url

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.out.read_text().splitlines()
        found = [json.loads(x) for x in lines if x.startswith("{")]
        return [e for e in found if e.get("event") == name]


@pytest.fixture
async def served(
    tmp_path: Path, model: FakeOpenAI, twilio: FakeTwilio, redis_server: RedisProcess
) -> AsyncIterator[Served]:
    """`bot serve` (web and worker in one process) on the test's redis-server, ready."""
    port = closed_port()
    config = tmp_path / "bot.json5"
    text = gateway_config_text(model.base_url).rstrip().rstrip("}")
    config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
    env = whatsapp_env(tmp_path, twilio, redis_url=redis_server.url, config=config, port=port)
    out = tmp_path / "bot.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve",
            env=env, cwd=tmp_path, stdout=sink, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    served = Served(proc, out, f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:  # until it listens and Redis answers it
                try:
                    async with http.get(f"{served.url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        yield served
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


def burst() -> list[tuple[str, str, str]]:
    """Four messages from each of two people, interleaved: (conversation, sid, text)."""
    sent = []
    for n in range(1, 5):
        for who, tag in ((ADA, "a"), (BOB, "b")):
            sent.append((who, f"SM{next(SIDS):032x}", f"{tag}{n}"))
    return sent


async def post_all(served: Served, twilio: FakeTwilio, sent: list[tuple[str, str, str]]) -> None:
    """Post each message as Twilio would (signed), one after another; all must get 200."""
    url = f"{served.url}/webhooks/whatsapp"
    async with aiohttp.ClientSession() as http:
        for who, sid, text in sent:
            fields = whatsapp_inbound(from_=who, body=text, sid=sid, to=SENDER)
            body, headers = signed_form(twilio.auth_token, url, fields)
            async with http.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()


def answered(model: FakeOpenAI) -> dict[str, list[str]]:
    """The messages the model was asked about, per person, in the order of its turns."""
    seen: dict[str, list[str]] = {"a": [], "b": []}
    for request in model.requests_to("/responses"):
        if request.json is not None:
            texts = request.turn_texts[-1].split("\n")
            seen[texts[0][0]].extend(texts)
    return seen


async def test_webhooks_during_a_redis_outage_are_acked_and_answered_once_in_order(
    served: Served, redis_server: RedisProcess, model: FakeOpenAI, twilio: FakeTwilio,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Redis stops; eight signed WhatsApp webhooks for two people all get 200 and wait in the
    spool; Redis comes back with its data: every message is answered exactly once, in order
    per conversation."""
    await redis_server.stop()
    await post_all(served, twilio, burst())
    assert served.events("message_spooled")
    assert any(p.stat().st_size for p in (tmp_path / "var" / "spool").glob("*.jsonl"))
    await redis_server.start()
    want = {"a": ["a1", "a2", "a3", "a4"], "b": ["b1", "b2", "b3", "b4"]}
    await eventually(lambda: answered(model) == want and len(twilio.messages) == turns(model), 30)
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/metrics") as response:
        metrics = await response.text()
    assert 'switchboard_messages_spooled_total{channel="whatsapp"} 8.0' in metrics
    assert "switchboard_spool_drained_total 8.0" in metrics
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    assert answered(model) == want  # nothing answered twice, even after the drain
    replies = {who: sum(m.to == who for m in twilio.messages) for who in (ADA, BOB)}
    assert replies == {ADA: turns(model, "a"), BOB: turns(model, "b")}
    [drained] = served.events("spool_drained")
    assert drained["count"] == 8
    assert not list((tmp_path / "var" / "spool").iterdir())  # emptied, and removed at exit


def turns(model: FakeOpenAI, tag: str = "") -> int:
    return sum(
        1
        for r in model.requests_to("/responses")
        if r.json is not None and r.turn_texts[-1].startswith(tag)
    )


async def test_an_empty_redis_after_the_outage_gets_every_spooled_message_in_order(
    served: Served, redis_server: RedisProcess, twilio: FakeTwilio
) -> None:
    """Redis comes back empty (its data lost): the spooled messages are stored into it, each
    once and in arrival order per conversation."""
    await redis_server.stop()
    sent = burst()
    await post_all(served, twilio, sent)
    redis_server.wipe()
    await redis_server.start()
    ids = [sid for _, sid, _ in sent]
    await eventually(lambda: len(served.events("message_received")) >= len(ids), 30)
    assert [e["msg_id"] for e in served.events("message_received")] == ids
    assert not served.events("message_duplicate")
    # A worker that repairs the empty Redis (its consumer group) then answers them; that
    # repair is not the spool's, so this test stops at "stored, once, in order".


async def test_polling_moves_the_offset_only_after_the_update_is_stored(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Telegram polling while intake's Redis is down: the update is fetched again and the
    offset stays; once intake stores it, the offset moves past it."""
    dead = dead_redis()
    async with FakeTelegram() as telegram, aiohttp.ClientSession() as http:
        settings = Settings(
            telegram_bot_token=telegram.token,
            telegram_api_base_url=telegram.base_url,
            _env_file=None,  # type: ignore[call-arg]
        )
        config = parse_config(
            '{ channels: { telegram: { dmPolicy: "open", mode: "polling" } } }',
            source="test.json5",
            env={},
        ).channels.telegram
        source = TelegramChannel(settings=settings, config=config, http=http, log=events.log)
        telegram.push_update(private_text_update(chat_id=9, text="keep me", update_id=500))

        async def poll(intake: RedisIntake, until: Callable[[], Awaitable[bool]]) -> None:
            stop = asyncio.Event()
            poller = Poller(
                redis=redis_client, intake=intake, source=source, log=events.log,
                poll_seconds=0.2, retry_seconds=0.05,
            )  # fmt: skip
            task = asyncio.create_task(poller.run(stop))
            async with asyncio.timeout(10):
                while not await until():  # noqa: ASYNC110 - polling a condition with a deadline
                    await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10)

        async def failed_twice() -> bool:
            return len(events.events("poll_failed")) >= 2

        async def offset_moved() -> bool:
            return await redis_client.get("poller:{telegram}:offset") is not None

        await poll(RedisIntake(dead, log=events.log), failed_twice)
        assert await redis_client.get("poller:{telegram}:offset") is None
        assert len(telegram.calls_to("getUpdates")) >= 2  # fetched again, not skipped
        await poll(RedisIntake(redis_client, log=events.log), offset_moved)
    await dead.aclose()
    stored = await redis_client.lrange(inbox_key("telegram:9"), 0, -1)
    assert [json.loads(m)["text"] for m in stored] == ["keep me"]
    assert await redis_client.get("poller:{telegram}:offset") == "501"

"""Overload: a web process past its in-flight limit says so in /readyz first, then sheds
(WhatsApp into the spool, Telegram 503) and counts the sheds in /metrics."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import test_utils

from bot.config import TelegramConfig, WhatsAppConfig
from bot.logs import EventHub, make_logger
from bot.messages import InboundMessage
from bot.metrics import Metrics
from bot.settings import Settings
from bot.spool import SpillIntake, Spool
from bot.web import Intake, make_web_app
from channels.telegram import TelegramChannel
from channels.whatsapp import WhatsAppChannel
from tests.fakes.telegram_server import private_text_update
from tests.fakes.twilio_server import signed_form, whatsapp_inbound
from tests.helpers import eventually

PUBLIC = "https://bot.example.com"
TOKEN = "test-token"
SECRET = "webhook-secret"


@dataclass
class GatedIntake:
    """An intake whose accepts wait until the test opens the gate: webhooks held in flight."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    taken: list[InboundMessage] = field(default_factory=list)

    async def accept(self, message: InboundMessage) -> bool:
        self.waiting += 1
        await self.gate.wait()
        self.taken.append(message)
        return True


@dataclass
class Served:
    client: test_utils.TestClient  # type: ignore[type-arg]
    metrics: Metrics


@asynccontextmanager
async def served(
    redis: aioredis.Redis, intake: Intake, spill: Intake | None, limit: int
) -> AsyncIterator[Served]:
    """The web app with a WhatsApp and a Telegram channel and `limit` webhooks in flight."""
    metrics, hub = Metrics(), EventHub()
    hub.add(metrics.observe)
    log = make_logger(stream=io.StringIO(), as_json=True, hub=hub)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, twilio_auth_token=TOKEN, telegram_bot_token="1:x",
        telegram_webhook_secret=SECRET,
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        channels = [
            WhatsAppChannel(settings=settings, config=WhatsAppConfig(), log=log),
            TelegramChannel(settings=settings, config=TelegramConfig(), http=http, log=log),
        ]

        async def metrics_body() -> bytes:
            return metrics.render()

        app = make_web_app(
            redis=redis, intake=intake, channels=channels, public_url=PUBLIC,
            metrics_body=metrics_body, log=log, max_inflight=limit, spill=spill,
        )  # fmt: skip
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            yield Served(client, metrics)


async def whatsapp(client: test_utils.TestClient, n: int) -> aiohttp.ClientResponse:  # type: ignore[type-arg]
    url = f"{PUBLIC}/webhooks/whatsapp"
    fields = whatsapp_inbound(from_=f"whatsapp:+1555000{n:04d}", body=f"hello {n}")
    body, headers = signed_form(TOKEN, url, fields)
    return await client.post("/webhooks/whatsapp", data=body, headers=headers)


async def telegram(client: test_utils.TestClient) -> aiohttp.ClientResponse:  # type: ignore[type-arg]
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    update = private_text_update(chat_id=7, user_id=7, update_id=1)
    return await client.post("/webhooks/telegram", json=update, headers=headers)


async def ready(client: test_utils.TestClient) -> tuple[int, dict[str, object]]:  # type: ignore[type-arg]
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_readyz_turns_busy_at_high_water_and_past_the_limit_webhooks_are_shed(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """With 5 slots, /readyz is 200 at 3 in flight and 503 busy at 4 (80 %); at 5 a WhatsApp
    webhook still gets its 200 from the fsync'd spool and a Telegram one a 503 with
    Retry-After; /metrics counts both sheds; once the slots drain /readyz is 200 again."""
    intake = GatedIntake()
    spool = Spool(tmp_path / "spool", log=make_logger(stream=io.StringIO()))
    spill = SpillIntake(spool, log=make_logger(stream=io.StringIO()), reason="busy")
    async with served(redis_client, intake, spill, limit=5) as app:
        held = [asyncio.create_task(whatsapp(app.client, n)) for n in range(3)]
        await eventually(lambda: intake.waiting == 3, within=5)
        status, body = await ready(app.client)
        assert (status, body["checks"]) == (200, {"load": "ok", "redis": "ok"})

        held.append(asyncio.create_task(whatsapp(app.client, 3)))
        await eventually(lambda: intake.waiting == 4, within=5)
        status, body = await ready(app.client)
        assert (status, body["checks"]) == (503, {"load": "busy", "redis": "ok"})
        assert body["inflight"] == {"now": 4, "busy_at": 4, "limit": 5}

        held.append(asyncio.create_task(whatsapp(app.client, 4)))
        await eventually(lambda: intake.waiting == 5, within=5)
        spilled = await whatsapp(app.client, 5)
        assert spilled.status == 200
        assert spool.pending  # kept on disk for the drainer, not lost
        shed = await telegram(app.client)
        assert (shed.status, shed.headers["Retry-After"]) == (503, "1")
        text = await (await app.client.get("/metrics")).text()
        assert 'switchboard_webhooks_shed_total{channel="whatsapp"} 1.0' in text
        assert 'switchboard_webhooks_shed_total{channel="telegram"} 1.0' in text

        intake.gate.set()
        assert [(await task).status for task in held] == [200] * 5
        status, body = await ready(app.client)
        assert (status, body["checks"]) == (200, {"load": "ok", "redis": "ok"})
        assert (await telegram(app.client)).status == 200
    assert len(intake.taken) == 6
    spool.close()


async def test_whatsapp_gets_503_only_when_the_spool_path_is_full_too(
    redis_client: aioredis.Redis,
) -> None:
    """With 2 slots held and 2 WhatsApp webhooks on their way into a (held) spool, the next
    WhatsApp webhook is answered 503 and counted as shed."""
    intake, spill = GatedIntake(), GatedIntake()
    async with served(redis_client, intake, spill, limit=2) as app:
        held = [asyncio.create_task(whatsapp(app.client, n)) for n in range(2)]
        await eventually(lambda: intake.waiting == 2, within=5)
        held += [asyncio.create_task(whatsapp(app.client, n)) for n in range(2, 4)]
        await eventually(lambda: spill.waiting == 2, within=5)
        assert (await whatsapp(app.client, 4)).status == 503
        text = await (await app.client.get("/metrics")).text()
        assert 'switchboard_webhooks_shed_total{channel="whatsapp"} 3.0' in text
        intake.gate.set()
        spill.gate.set()
        assert [(await task).status for task in held] == [200] * 4
    assert (len(intake.taken), len(spill.taken)) == (2, 2)

"""A gateway with its operator console on a real local port, seeded with what the pages show:
the browser tests drive it, and `python -m bench.screenshots` photographs it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import test_utils

from bot.app import App, open_app
from bot.config import parse_config
from bot.console import ProcessBeacon, console_token
from bot.deadletters import RedisDeadLetters
from bot.errors import Severity
from bot.logs import EventHub, make_logger
from bot.messages import InboundMessage
from bot.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingSender, gateway_config_text

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ALICE, BOB = "whatsapp:+15551234567", "whatsapp:+15559876543"
STRANGER = "telegram:+15550001111"


def find_chromium() -> str | None:
    """Debian's chromium (or another Chrome on PATH); None where there is none."""
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Site:
    """The running console: its base URL, the sign-in URL, the gateway's parts, the replies
    its worker sent on WhatsApp and the events it logged."""

    app: App
    base: str
    sign_in: str
    sent: RecordingSender
    out: io.StringIO
    config: Path
    redis_url: str

    def events(self, name: str) -> list[dict[str, object]]:
        lines = [json.loads(x) for x in self.out.getvalue().splitlines() if x.startswith("{")]
        return [e for e in lines if e.get("event") == name]

    async def say(self, conversation: str, text: str) -> None:
        """A message arrives (intake: `message_received`) and the worker answers it."""
        await self.app.intake.accept(message(conversation, text))


def message(conversation: str, text: str) -> InboundMessage:
    return InboundMessage(
        channel=conversation.split(":", 1)[0],
        conversation=conversation,
        sender=conversation,
        text=text,
        platform_id=f"{conversation}-{time.time_ns()}",
        ts=time.time(),
    )


@contextlib.asynccontextmanager
async def console_site(redis_url: str, folder: Path) -> AsyncIterator[Site]:
    """A gateway on two fake models (WhatsApp open, Telegram pairing), a running worker that
    replies through a recorder, its beacon, and the console on a free local port."""
    async with (
        FakeOpenAI(models=["local-model"], default=Reply(text="Hello from the local model")) as a,
        FakeOpenAI(models=["backup-model"], default=Reply(text="Hello from the backup")) as b,
    ):
        sections = (
            'channels: { whatsapp: { dmPolicy: "open" }, telegram: { dmPolicy: "pairing" } },'
        )
        text = gateway_config_text(a.base_url, b.base_url, sections=sections)
        config_path = folder / "bot.json5"
        config_path.write_text(text)
        config = parse_config(text, source=str(config_path), env={})
        settings = Settings(  # type: ignore[call-arg]
            redis_url=redis_url,
            bot_data_dir=str(folder / "var"),
            twilio_auth_token="TWILIO-SECRET-auth-0123456789",
            _env_file=None,
        )
        out, hub = io.StringIO(), EventHub()
        log = make_logger(
            level="debug", stream=out, as_json=True, secrets=settings.secrets(), hub=hub
        )
        async with open_app(settings, config, log, hub, tools=False) as app:
            await app.redis.client.flushdb()
            stop = asyncio.Event()
            sent = RecordingSender()
            beacon = ProcessBeacon(app.redis.client, role="all", version="0.1.0", log=log)
            tasks = [
                asyncio.create_task(app.worker({"whatsapp": sent}).run(stop)),
                asyncio.create_task(beacon.run(stop)),
            ]
            server = test_utils.TestServer(app.console_app(), host="127.0.0.1")
            await server.start_server()
            try:
                base = f"http://127.0.0.1:{server.port}"
                token = await console_token(app.redis.client, settings)
                yield Site(
                    app=app,
                    base=base,
                    sign_in=f"{base}/login?token={token}",
                    sent=sent,
                    out=out,
                    config=config_path,
                    redis_url=redis_url,
                )
            finally:
                await server.close()
                stop.set()
                await asyncio.gather(*tasks)
                await app.redis.client.flushdb()


async def seed(site: Site) -> None:
    """What a deployment has after a while: two conversations, a dead letter, a pairing
    request, an open breaker, events."""
    sent = len(site.sent.sent)
    await site.say(ALICE, "What's the weather like?")
    await site.say(BOB, "Summarise my notes")
    async with asyncio.timeout(20):
        while len(site.sent.sent) < sent + 2:  # noqa: ASYNC110 - polling with a deadline
            await asyncio.sleep(0.02)
    body = json.dumps([message(ALICE, "this one kept failing").to_dict()])
    await RedisDeadLetters(site.app.redis.client).add(
        conversation=ALICE, batch="b1", attempts=3, error="ModelUnavailable: every model failed",
        messages=body,
    )  # fmt: skip
    await site.app.access.pair(message(STRANGER, "hello?"))
    await site.app.breaker.failure("backup/backup-model", severity=Severity.DOWN, probe=False)

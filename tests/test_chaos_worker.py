"""Chaos around real `bot serve` processes: a bad command, Redis down at start, Redis restarted
empty, a lost wake-up, a background task that dies. Real Redis servers started by the test,
fake Telegram and model servers at the HTTP boundary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.intake import READY_STREAM, inbox_key
from bot.messages import InboundMessage
from tests.fakes.openai_server import FakeOpenAI, closed_port, echo
from tests.fakes.telegram_server import FakeTelegram, private_text_update
from tests.helpers import RedisProcess, bot_env, gateway_config_text

SECRET = "chaos-secret"
ADMIN_CHAT = 1001
ROOT = Path(__file__).resolve().parent.parent


async def until(check: Callable[[], Any], what: str, within: float = 20) -> None:
    """Poll an async (or plain) condition until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    """A Redis of this test's own (not started yet), on a short socket path."""
    folder = Path(tempfile.mkdtemp(prefix="chaos-redis-"))
    server = RedisProcess(folder, persistent=False)
    yield server
    await server.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=echo) as fake:
        yield fake


class Gateway:
    """A `bot serve` process (role all) answering Telegram webhooks."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.update_ids = iter(range(1, 10_000))

    async def status(self, path: str) -> int | None:
        try:
            async with aiohttp.ClientSession() as http, http.get(self.base + path) as response:
                return response.status
        except aiohttp.ClientError:
            return None

    async def post(self, text: str) -> None:
        """Post an update from the admin's chat until the gateway takes it (2xx), as Telegram
        retries a webhook that failed."""
        update = private_text_update(
            chat_id=ADMIN_CHAT, user_id=ADMIN_CHAT, text=text, update_id=next(self.update_ids)
        )
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

        async def taken() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"{self.base}/webhooks/telegram", json=update, headers=headers) as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await until(taken, f"the webhook for {text!r} to be taken")

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [e for e in map(json.loads, lines) if e.get("event") == name]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, redis_url: str, model: FakeOpenAI, telegram: FakeTelegram, *, wait: bool = True
) -> AsyncIterator[Gateway]:
    """Start `bot serve` (lease 1 s, so sweeps and backoff are quick) and stop it on exit."""
    config = gateway_config_text(model.base_url, lease_seconds=1).rstrip().rstrip("}")
    config += f"""
      channels: {{ telegram: {{ dmPolicy: "open", mode: "webhook" }} }},
      commands: {{ admins: ["telegram:{ADMIN_CHAT}"] }},
    }}"""
    (tmp_path / "bot.json5").write_text(config)
    port = closed_port()
    env = bot_env(
        tmp_path,
        BOT_CONFIG=str(tmp_path / "bot.json5"),
        BOT_PORT=str(port),
        BOT_PUBLIC_URL="https://bot.example.com",
        REDIS_URL=redis_url,
        TELEGRAM_BOT_TOKEN=telegram.token,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        TELEGRAM_API_BASE_URL=telegram.base_url,
        PYTHONPATH=str(ROOT),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gateway = Gateway(proc, port, tmp_path / "var" / "log" / "bot.jsonl")
    try:
        if wait:
            await until(lambda: _healthy(gateway), "the gateway to serve /healthz")
        yield gateway
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _healthy(gateway: Gateway) -> bool:
    assert gateway.proc.returncode is None, "the gateway exited"
    return await gateway.status("/healthz") == 200


def texts(telegram: FakeTelegram) -> list[str]:
    return [m["text"] for m in telegram.sent]


async def test_a_malformed_admin_command_gets_a_reply_and_the_next_message_is_answered(
    tmp_path: Path,
    redis_server: RedisProcess,
    model: FakeOpenAI,
    telegram: FakeTelegram,
) -> None:
    """`/model openrouter/` from an admin is answered (not retried forever), and the next
    message of that conversation reaches the model."""
    await redis_server.start()
    async with serving(tmp_path, redis_server.url, model, telegram) as gateway:
        await gateway.post("/model openrouter/")
        await until(lambda: len(telegram.sent) == 1, "a reply to the command")
        await gateway.post("hello after")
        await until(lambda: len(telegram.sent) == 2, "the next answer")
        assert texts(telegram)[1] == "echo:hello after"
        assert gateway.proc.returncode is None


async def test_redis_down_at_start_then_up_is_served(
    tmp_path: Path,
    redis_server: RedisProcess,
    model: FakeOpenAI,
    telegram: FakeTelegram,
) -> None:
    """Started while Redis is down, the gateway stays up with /readyz 503, retrying; once
    Redis answers, /readyz is 200 and a webhook is answered."""
    async with serving(tmp_path, redis_server.url, model, telegram) as gateway:
        assert await gateway.status("/readyz") == 503
        await until(lambda: gateway.events("redis_unavailable"), "a retry to be logged")
        assert gateway.proc.returncode is None
        await redis_server.start()
        await until(lambda: _ready(gateway), "/readyz to answer 200")
        await gateway.post("are you up?")
        await until(lambda: len(telegram.sent) == 1, "the answer")
        assert texts(telegram) == ["echo:are you up?"]


async def _ready(gateway: Gateway) -> bool:
    return await gateway.status("/readyz") == 200


async def test_redis_restarted_empty_is_repaired_and_lost_wakeups_are_swept(
    tmp_path: Path,
    redis_server: RedisProcess,
    model: FakeOpenAI,
    telegram: FakeTelegram,
) -> None:
    """Redis killed and restarted empty under a running gateway: the group is recreated and
    the next message answered; a message whose wake-up was lost is answered by the sweep."""
    await redis_server.start()
    async with serving(tmp_path, redis_server.url, model, telegram) as gateway:
        await gateway.post("before")
        await until(lambda: len(telegram.sent) == 1, "the first answer")
        await redis_server.kill()
        await redis_server.start()  # same socket, no data: no stream, no group
        await gateway.post("after")
        await until(lambda: len(telegram.sent) == 2, "the answer after the restart")
        assert gateway.events("worker_group_recreated")

        lost = InboundMessage(
            channel="telegram", conversation="telegram:2002", sender="telegram:2002",
            text="nobody woke me", platform_id="lost-1", ts=time.time(),
            meta={"chat_type": "private"},
        )  # fmt: skip
        client = redis_server.client()
        try:  # what intake leaves if its wake-up never reached the stream
            await client.rpush(inbox_key(lost.conversation), json.dumps(lost.to_dict()))
        finally:
            await client.aclose()
        await until(lambda: len(telegram.sent) == 3, "the swept message's answer")
    assert texts(telegram) == ["echo:before", "echo:after", "echo:nobody woke me"]
    assert telegram.sent[2]["chat_id"] == 2002


async def test_a_background_task_that_dies_exits_the_process_non_zero(
    tmp_path: Path,
    redis_server: RedisProcess,
    model: FakeOpenAI,
    telegram: FakeTelegram,
) -> None:
    """A worker that cannot run (the ready stream's key holds a string) ends its task: the
    process logs task_failed and exits 1 so its supervisor restarts it."""
    await redis_server.start()
    client = redis_server.client()
    try:
        await client.set(READY_STREAM, "not a stream")
    finally:
        await client.aclose()
    async with serving(tmp_path, redis_server.url, model, telegram, wait=False) as gateway:
        assert await asyncio.wait_for(gateway.proc.wait(), 20) == 1
        (failed,) = gateway.events("task_failed")
        assert failed["task"] == "worker"
        assert "WRONGTYPE" in failed["error"]

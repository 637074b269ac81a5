"""Reminders and SIGKILL: a worker process killed at some point of firing a reminder (claimed,
queued in the outbox, or being sent) leaves it to the next worker, and it arrives once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bot.delivery import outbox_key
from bot.reminders import DUE_KEY, RedisReminders
from tests.fakes.openai_server import FakeOpenAI, echo
from tests.helpers import gateway_config_text

ROOT = Path(__file__).resolve().parent.parent
KILL_POINTS = ("claimed", "queued", "sending")


class Sink:
    """The platform stand-in: takes reminders, says which it took, and can hold a send so the
    test kills the worker while it is in flight."""

    def __init__(self) -> None:
        self.taken: list[dict[str, str]] = []
        self.sending = asyncio.Event()
        self.url = ""

    async def send(self, request: web.Request) -> web.Response:
        self.taken.append(await request.json())
        self.sending.set()
        await asyncio.sleep(0)  # the test may kill the sender before it reads the answer
        return web.Response(status=204)

    async def accepted(self, request: web.Request) -> web.Response:
        found = any(
            t["conversation"] == request.query["conversation"]
            and t["text"] == request.query["text"]
            for t in self.taken
        )
        return web.json_response({"accepted": found})


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    found = Sink()
    app = web.Application()
    app.router.add_post("/send", found.send)
    app.router.add_get("/accepted", found.accepted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


async def start(config: Path, redis_url: str, sink: Sink, name: str) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ["PATH"],
        "BOT_CONFIG": str(config),
        "REDIS_URL": redis_url,
        "SINK_URL": sink.url,
        "WORKER_NAME": name,
        "BOT_DATA_DIR": str(config.parent / "var"),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.procs.reminder_worker", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def reached(redis: aioredis.Redis, sink: Sink, point: str, member: str, conv: str) -> bool:
    """Whether the first worker got as far as `point` with the reminder."""
    if point == "sending":
        return sink.sending.is_set()
    if point == "queued":
        return bool(await redis.llen(outbox_key(conv))) or sink.sending.is_set()
    score = await redis.zscore(DUE_KEY, member)
    return score is None or score > time.time() * 1000 or sink.sending.is_set()


async def settled(redis: aioredis.Redis, sink: Sink, member: str, conv: str) -> bool:
    """Whether the reminder was taken and nothing of it is left: outbox empty, not due."""
    if not sink.taken or await redis.llen(outbox_key(conv)):
        return False
    return await redis.zscore(DUE_KEY, member) is None


@pytest.mark.serial
@pytest.mark.parametrize("run", range(len(KILL_POINTS)))  # one per kill point (looped 10x apart)
async def test_a_worker_killed_while_firing_leaves_one_reminder(
    run: int, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, sink: Sink
) -> None:
    """SIGKILL when the reminder is claimed, queued or being sent: the next worker delivers
    it, once."""
    point = KILL_POINTS[run % len(KILL_POINTS)]
    person = f"test:person{run}"
    async with FakeOpenAI(models=["local-model"], default=echo) as model:
        config = tmp_path / "bot.json5"
        text = gateway_config_text(model.base_url, lease_seconds=1).rstrip().rstrip("}")
        config.write_text(text + f'commands: {{ admins: ["{person}"] }} }}')
        first = await start(config, redis_url, sink, "first")
        try:
            store = RedisReminders(redis_client)
            reminder = await store.add(
                channel="test",
                conversation=person,
                sender=person,
                text=f"stretch {run}",
                due=datetime.now(UTC),
                zone="UTC",
            )
            member = f"{reminder.id}:{person}"
            async with asyncio.timeout(30):
                while not await reached(redis_client, sink, point, member, person):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        finally:
            first.kill()
            await first.wait()
        second = await start(config, redis_url, sink, "second")
        try:
            async with asyncio.timeout(30):
                while not await settled(redis_client, sink, member, person):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            second.terminate()
            await second.wait()
    assert [t["text"] for t in sink.taken] == [f"⏰ Reminder: stretch {run}"]

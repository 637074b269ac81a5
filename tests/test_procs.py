"""`bot serve --procs N`: N processes on one port, a dead child restarted, SIGTERM stops all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fakes.openai_server import FakeOpenAI, closed_port
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import eventually, gateway_config_text, whatsapp_env


class Parent:
    """A `bot serve --procs 2` parent whose output (its events and its children's) is kept."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, url: str) -> None:
        self.proc = proc
        self.out = out
        self.url = url

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.out.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in found if e.get("event") == name]


@pytest.fixture
async def parent(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[Parent, FakeTwilio]]:
    async with FakeOpenAI(models=["local-model"]) as model, FakeTwilio() as twilio:
        port = closed_port()
        config = tmp_path / "bot.json5"
        text = gateway_config_text(model.base_url).rstrip().rstrip("}")
        config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
        env = whatsapp_env(tmp_path, twilio, redis_url=redis_url, config=config, port=port)
        out = tmp_path / "serve.out"
        with out.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve", "--procs", "2",
                env=env, cwd=tmp_path, stdout=sink, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        running = Parent(proc, out, f"http://127.0.0.1:{port}/webhooks/whatsapp")
        try:
            yield running, twilio
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def post(twilio: FakeTwilio, url: str, who: str, text: str) -> None:
    """One signed webhook on a fresh connection (so the kernel picks a child each time)."""
    body, headers = signed_form(twilio.auth_token, url, whatsapp_inbound(from_=who, body=text))
    async with asyncio.timeout(30):
        while True:
            try:
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                    s.post(url, data=body, headers=headers) as response,
                ):
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)  # a child is (re)starting


async def test_two_processes_share_the_port_and_a_dead_one_comes_back(
    parent: tuple[Parent, FakeTwilio],
) -> None:
    """Two children take webhooks on one port and every message is answered; a SIGKILLed
    child is restarted and the gateway keeps answering; SIGTERM stops both, exit 0."""
    running, twilio = parent
    await eventually(lambda: len(running.events("server_started")) == 3, within=30)
    people = [f"whatsapp:+1555000{n:04d}" for n in range(16)]
    for who in people:
        await post(twilio, running.url, who, "hello")
    async with asyncio.timeout(30):
        await twilio.wait_for_messages(len(people))
    takers = {e["proc"] for e in running.events("message_received")}
    assert len(takers) == 2, takers
    [victim, *_] = [int(str(e["pid"])) for e in running.events("child_started")]
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: len(running.events("server_started")) == 4, within=30)
    assert len(running.events("child_started")) == 3
    [exited] = running.events("child_exited")
    assert exited["code"] == -signal.SIGKILL
    for who in people[:4]:
        await post(twilio, running.url, who, "still there?")
    async with asyncio.timeout(30):
        await twilio.wait_for_messages(len(people) + 4)
    running.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(running.proc.wait(), 60) == 0
    assert len(running.events("child_stopped")) == 2
    assert {e["code"] for e in running.events("child_stopped")} == {0}

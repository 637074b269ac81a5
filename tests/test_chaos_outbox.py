"""Chaos for the outbox with a real `bot serve` process, real Redis and fakes at the HTTP
boundary: a Twilio outage longer than any in-process retry, also with a Messages list that
refuses every lookup (a restricted API key, a proxy that serves only POST). (The SIGKILL chaos
test, with an instant model, is in test_worker.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fakes.openai_server import FakeOpenAI, closed_port, echo
from tests.fakes.twilio_server import (
    FakeTwilio,
    new_api_key,
    signed_form,
    whatsapp_inbound,
)
from tests.helpers import gateway_config_text, whatsapp_env

ROOT = Path(__file__).resolve().parent.parent
PERSON = "whatsapp:+15551234567"


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=echo) as fake:
        yield fake


@pytest.mark.parametrize(
    "lookup", ["readable", "restricted-key"], ids=lambda lookup: f"list-{lookup}"
)
async def test_a_reply_due_during_a_12_s_twilio_outage_arrives_once_after_it(
    model: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path, lookup: str
) -> None:
    """Twilio answers 503 to every send for 12 s from the moment a message arrives: with the
    default retry settings the person gets the reply after Twilio recovers, exactly once when
    the Messages list answers; when it refuses every lookup (a restricted API key without
    "Messages: read", whose REST calls all go out as the key while the auth token verifies
    the webhook) it still arrives, with one `reconcile_failed`. (A proxy's 405 takes the same
    path: tests/test_delivery.py covers it in-process.)"""
    port = closed_port()
    config = tmp_path / "bot.json5"
    text = gateway_config_text(model.base_url).rstrip().rstrip("}")
    config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
    log = tmp_path / "serve.log"
    key = new_api_key(list_messages=False)
    extra = {}
    if lookup == "restricted-key":
        extra = {"TWILIO_API_KEY_SID": key.sid, "TWILIO_API_KEY_SECRET": key.secret}
    async with FakeTwilio(api_keys=(key,)) as twilio:
        env = whatsapp_env(tmp_path, twilio, redis_url=redis_url, config=config, port=port, **extra)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve", env=env, cwd=ROOT,
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                while True:  # until the process serves
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
                twilio.outage(12)
                recovered = time.monotonic() + 12
                body, headers = signed_form(
                    twilio.auth_token, url, whatsapp_inbound(from_=PERSON, body="are you up?")
                )
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 200
            async with asyncio.timeout(40):
                [sent] = await twilio.wait_for_messages(1)
            await asyncio.sleep(1.0)  # room for a wrong second copy to show up
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert [m.body for m in twilio.messages] == ["echo:are you up?"]
    assert sent.to == PERSON
    assert sent.at >= recovered
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "send_failed" not in names
    assert names.count("send_retry") >= 3
    assert names.count("reply_sent") == 1
    lookups = [r for r in twilio.requests if r.method == "GET"]
    assert lookups  # the resends did ask the list
    assert names.count("reconcile_failed") == (0 if lookup == "readable" else 1)
    user = key.sid if lookup == "restricted-key" else twilio.account_sid
    assert {r.user for r in twilio.requests} == {user}

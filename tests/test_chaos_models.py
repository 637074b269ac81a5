"""Chaos: a hung LM Studio under the seed's config and default timeouts, through a real gateway.

A real `bot serve` process, real Redis, and fakes at the HTTP boundary only: LM Studio that
accepts requests and never answers (a model stuck loading), Anthropic's OpenAI-compatible
endpoint, and Twilio. Nothing is tuned for the test: no timeout is set anywhere.
"""

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

from tests.fakes.openai_server import FakeOpenAI, Reply, closed_port
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import seed_config_text, whatsapp_env

PERSON = "whatsapp:+15551234567"


@pytest.fixture
async def gateway(
    tmp_path: Path, data_dir: Path, redis_url: str
) -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI, FakeTwilio, str]]:
    """`bot serve` with a hung LM Studio, a working hosted fallback and Twilio; yields the
    fakes and the webhook URL."""
    async with (
        FakeOpenAI(models=["minimax-m2.1-gs32"], default=Reply(hang=True)) as lmstudio,
        FakeOpenAI(
            models=["claude-sonnet-4-5", "claude-opus-4-5"], default=Reply(text="hosted answer")
        ) as anthropic,
        FakeTwilio() as twilio,
    ):
        port = closed_port()
        config = tmp_path / "bot.json5"
        config.write_text(
            seed_config_text(
                data_dir, lmstudio_url=lmstudio.base_url, hosted_url=anthropic.base_url,
                channels='whatsapp: { dmPolicy: "open" }',
            )
        )  # fmt: skip
        env = whatsapp_env(
            tmp_path,
            twilio,
            redis_url=redis_url,
            config=config,
            port=port,
            ANTHROPIC_API_KEY="sk-ant-test",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield lmstudio, anthropic, twilio, f"http://127.0.0.1:{port}/webhooks/whatsapp"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            events = [json.loads(line) for line in out.decode().splitlines() if line[:1] == "{"]
            print("\n".join(f"{e['event']} {e.get('error', '')}" for e in events))


async def post(http: aiohttp.ClientSession, twilio: FakeTwilio, url: str, text: str) -> None:
    """Post a signed WhatsApp webhook, retrying while the gateway is still starting."""
    body, headers = signed_form(twilio.auth_token, url, whatsapp_inbound(from_=PERSON, body=text))
    async with asyncio.timeout(30):
        while True:
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)


async def test_a_hung_lm_studio_hands_over_to_the_hosted_fallback_in_time(
    gateway: tuple[FakeOpenAI, FakeOpenAI, FakeTwilio, str],
) -> None:
    """With the seed's local-first config and no timeout set, a hung LM Studio costs the first
    message under a minute before the hosted fallback answers; the next message is answered
    within 5 s without a request to LM Studio (its breaker is open)."""
    lmstudio, anthropic, twilio, url = gateway
    async with aiohttp.ClientSession() as http:
        await post(http, twilio, url, "hello")  # waits for the gateway to listen
        started = time.monotonic()
        async with asyncio.timeout(90):
            [first] = await twilio.wait_for_messages(1)
        first_s = time.monotonic() - started
        started = time.monotonic()
        await post(http, twilio, url, "are you there?")
        async with asyncio.timeout(60):
            second = (await twilio.wait_for_messages(2))[1]
        second_s = time.monotonic() - started
    print(f"first answer after {first_s:.1f} s, second after {second_s:.2f} s")
    assert (first.body, second.body) == ("hosted answer", "hosted answer")
    assert first.to == second.to == PERSON
    assert first_s < 60
    assert second_s < 5
    assert len(lmstudio.requests_to("/responses")) == 1
    assert len(anthropic.requests_to("/chat/completions")) == 2

"""A private chat's turn reads what it starts with (access check, model choice, history,
breakers) in the round trip that claims the conversation: the rate token is spent there only
when the claim succeeds, and the turn itself makes no read of its own before the model."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.access import rate_key
from bot.app import App, open_app
from bot.intake import READY_STREAM
from bot.settings import Settings
from bot.wakeups import lease_key
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import (
    RecordingSender,
    eventually,
    gateway_config,
    inbound,
    make_worker,
    monitored,
    running_worker,
)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="hi")) as fake:
        yield fake


@pytest.fixture
async def app(
    model: FakeOpenAI, redis_url: str, tmp_path: Path, events: CapturedEvents
) -> AsyncIterator[App]:
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, gateway_config(model.base_url), events.log) as running:
        yield running


def rate_calls(lines: list[dict[str, Any]], conversation: str) -> Counter[str]:
    """The top-level commands naming the conversation's rate bucket, by whether they also
    name its lease (RATE sent with the claim, conditional on it) or not (on its own)."""
    seen: Counter[str] = Counter()
    for line in lines:
        if line.get("client_type") != "lua" and rate_key(conversation) in line["command"]:
            with_lease = lease_key(conversation) in line["command"]
            seen["rate with the claim" if with_lease else "rate on its own"] += 1
    return seen


async def test_a_private_chat_spends_its_rate_token_with_the_claim(
    app: App, redis_client: aioredis.Redis
) -> None:
    """Three turns of a private chat: each spends one rate token, in the claim's round trip
    (RATE names the lease it is conditional on), and none spends another on its own."""
    conversation = f"test:+1555{uuid.uuid4().int % 10**7:07d}"
    sender = RecordingSender()
    async with running_worker(make_worker(app, sender)), monitored(redis_client) as lines:
        for n in range(1, 4):
            message = inbound(f"m{n}", conversation=conversation, n=n, channel="test")
            assert message.sender == conversation  # a private chat
            await app.intake.accept(message)
            await eventually(lambda n=n: len(sender.sent) == n)  # type: ignore[misc]
            # The turn has let go of the conversation: the next message wakes a new claim
            # (sent sooner, it would be taken by this turn's FINISH instead).
            async with asyncio.timeout(20):
                while await redis_client.exists(lease_key(conversation)):  # noqa: ASYNC110 - bounded
                    await asyncio.sleep(0.01)
    assert [m.text for m in sender.sent] == ["hi"] * 3
    assert rate_calls(lines, conversation) == Counter({"rate with the claim": 3})
    bucket = await redis_client.get(rate_key(conversation))  # "tokens at-ms[ told]"
    tokens = float(bucket.split()[0]) if bucket else 0.0
    capacity = app.access.rate_per_minute
    assert capacity - 3 <= tokens < capacity - 2.5  # three spent (a little refilled meanwhile)


async def test_a_claim_that_finds_the_lease_held_spends_no_rate_token(
    app: App, redis_client: aioredis.Redis
) -> None:
    """Another worker holds the conversation: the claim comes back busy, its wake-up is done
    with, and the sender's rate bucket is untouched (the holder spends it when it takes the
    message)."""
    conversation = f"test:+1555{uuid.uuid4().int % 10**7:07d}"
    await redis_client.set(lease_key(conversation), "another-worker:1", px=60_000)
    sender = RecordingSender()
    async with running_worker(make_worker(app, sender)):
        await app.intake.accept(inbound("hello", conversation=conversation, channel="test"))
        async with asyncio.timeout(20):  # the wake-up acked and deleted: the claim was made
            while await redis_client.xlen(READY_STREAM):  # noqa: ASYNC110 - a deadline bounds it
                await asyncio.sleep(0.01)
    assert sender.sent == []
    assert await redis_client.exists(rate_key(conversation)) == 0

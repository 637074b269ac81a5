"""Dead letters: a batch that keeps failing is kept for an operator, who can list, retry or
drop it with `bot dead-letters`; the conversation's next messages are answered meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.app import App, open_app
from bot.deadletters import DEAD_LETTERS, MAX_ATTEMPTS, RedisDeadLetters
from bot.intake import READY_STREAM
from bot.settings import Settings
from bot.worker import GROUP, Worker, batch_key
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import bot_env, eventually, gateway_config, inbound, run_bot
from tests.test_worker import RecordingSender, echo


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=echo()) as fake:
        yield fake


@pytest.fixture
async def app(
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[App]:
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, gateway_config(model.base_url), events.log) as running:
        yield running


async def run_worker(app: App, sender: RecordingSender) -> tuple[asyncio.Event, asyncio.Task[None]]:
    worker = Worker(
        redis=app.redis.client, agent=app.agent, memory=app.memory, senders={"test": sender},
        log=app.log, lease_seconds=0.3,
    )  # fmt: skip
    stop = asyncio.Event()
    return stop, asyncio.create_task(worker.run(stop))


async def leave_batch(redis: aioredis.Redis, conversation: str, **fields: str) -> None:
    """A stored batch of `conversation` with its wake-up on the stream, nobody holding it."""
    await redis.xgroup_create(READY_STREAM, GROUP, id="0", mkstream=True)
    await redis.hset(
        batch_key(conversation),
        mapping={"id": "b1", "owner": "gone:token", "state": "pending", **fields},
    )
    await redis.xadd(READY_STREAM, {"conversation": conversation})


async def test_a_batch_that_keeps_crashing_is_dead_lettered_and_the_next_message_answered(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """An unreadable batch (nobody can be told) is tried MAX_ATTEMPTS times, then kept as a
    dead letter; the conversation's next message gets its answer."""
    conversation = "test:corrupt"
    await leave_batch(redis_client, conversation, messages="{not json")
    sender = RecordingSender()
    stop, task = await run_worker(app, sender)
    letters = RedisDeadLetters(redis_client)

    async def dead() -> int:
        return len(await letters.list())

    async with asyncio.timeout(20):
        while not await dead():  # noqa: ASYNC110 - polling Redis with a deadline
            await asyncio.sleep(0.02)
    await app.intake.accept(inbound("still there?", conversation=conversation, channel="test"))
    await eventually(lambda: len(sender.sent) == 1)
    stop.set()
    await task
    (letter,) = await letters.list()
    assert (letter.conversation, letter.attempts, letter.messages) == (
        conversation,
        MAX_ATTEMPTS,
        "{not json",
    )
    assert "JSONDecodeError" in letter.error
    assert len(events.events("turn_crashed")) == MAX_ATTEMPTS
    assert [e["id"] for e in events.events("dead_lettered")] == [letter.id]
    assert [r.text for r in sender.sent] == ["echo:still there?"]


async def test_a_batch_whose_every_take_died_is_dead_lettered_without_running(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """A batch taken MAX_ATTEMPTS times already (its workers were killed mid-turn) goes to the
    dead letters on the next take, before any model is asked."""
    message = inbound("poison", conversation="test:poison", channel="test")
    await leave_batch(
        redis_client,
        "test:poison",
        messages=json.dumps([message.to_dict()]),
        attempts=str(MAX_ATTEMPTS),
    )
    sender = RecordingSender()
    stop, task = await run_worker(app, sender)
    letters = RedisDeadLetters(redis_client)
    async with asyncio.timeout(20):
        while not await letters.list():  # noqa: ASYNC110 - polling Redis with a deadline
            await asyncio.sleep(0.02)
    stop.set()
    await task
    assert model.requests_to("/responses") == []
    assert await redis_client.exists(batch_key("test:poison")) == 0


async def test_cli_lists_retries_and_drops_dead_letters(
    app: App,
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """`bot dead-letters list` shows each letter; `retry ID` puts its messages back and a
    worker answers them; `drop ID` forgets one; an unknown ID exits 1 with a reason."""
    letters = RedisDeadLetters(redis_client)
    first = inbound("try me again", conversation="test:dl", channel="test")
    kept = await letters.add(
        conversation="test:dl", batch="b1", attempts=3, error="RuntimeError: boom",
        messages=json.dumps([first.to_dict()]),
    )  # fmt: skip
    junk = await letters.add(
        conversation="test:junk", batch="b2", attempts=3, error="JSONDecodeError: x",
        messages="{not json",
    )  # fmt: skip
    env = bot_env(tmp_path, REDIS_URL=redis_url)

    listed = await run_bot("dead-letters", "list", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].startswith(kept)
    assert "test:dl" in lines[0]
    assert "1 message(s)" in lines[0]
    assert "RuntimeError: boom" in lines[0]
    assert "unreadable messages" in lines[1]

    refused = await run_bot("dead-letters", "retry", junk, env=env, cwd=tmp_path)
    assert refused.code == 1
    assert "not valid JSON" in refused.err
    retried = await run_bot("dead-letters", "retry", kept, env=env, cwd=tmp_path)
    assert retried.code == 0, retried.err
    sender = RecordingSender()
    stop, task = await run_worker(app, sender)
    await eventually(lambda: len(sender.sent) == 1)
    stop.set()
    await task
    assert [r.text for r in sender.sent] == ["echo:try me again"]

    dropped = await run_bot("dead-letters", "drop", junk, env=env, cwd=tmp_path)
    assert dropped.code == 0, dropped.err
    assert await redis_client.xlen(DEAD_LETTERS) == 0
    missing = await run_bot("dead-letters", "drop", junk, env=env, cwd=tmp_path)
    assert missing.code == 1
    assert "no dead letter" in missing.err
    empty = await run_bot("dead-letters", "list", env=env, cwd=tmp_path)
    assert empty.out.strip() == "no dead letters"


def test_help_names_the_dead_letter_actions() -> None:
    """`bot --help` lists dead-letters, and its help names list, retry and drop."""
    from bot.cli import build_parser

    parser = build_parser()
    assert "dead-letters" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["dead-letters", "retry"])  # an ID is required
    assert parser.parse_args(["dead-letters", "drop", "1-0"]).id == "1-0"

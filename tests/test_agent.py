"""One turn through the real stack: intake, a worker, Redis memory, the openai SDK, fake model
servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.agent import APOLOGY, REFUSED
from bot.app import App, open_app
from bot.config import Config, parse_config
from bot.messages import InboundMessage
from bot.settings import Settings
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import (
    FakeOpenAI,
    Reply,
    closed_port,
    error_reply,
    llamacpp_refusal,
    server_error,
)
from tests.helpers import (
    RecordingSender,
    eventually,
    gateway_config,
    inbound,
    make_worker,
    run_turn,
)


async def converse(app: App, *batch: InboundMessage) -> str:
    """Run one turn through intake and a worker (`run_turn`); the reply text."""
    [reply] = await run_turn(app, *batch)
    return reply.text


@pytest.fixture
async def primary() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"]) as fake:
        yield fake


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["backup-model"]) as fake:
        yield fake


def app_for(config: Config, redis_url: str, tmp_path: Path, events: CapturedEvents):  # type: ignore[no-untyped-def]
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    return open_app(settings, config, events.log)


@pytest.fixture
async def app(
    primary: FakeOpenAI,
    backup: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[App]:
    async with app_for(
        gateway_config(primary.base_url, backup.base_url), redis_url, tmp_path, events
    ) as running:
        yield running


async def test_reply_holds_only_the_final_text(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Responses API reasoning items never reach the reply, the memory or the logs, even logs
    that hold message text (logging.includeContent), for a turn run by a worker."""
    loud = CapturedEvents(include_content=True)
    primary.script(Reply(text="The answer is 4.", reasoning="SECRET-CHAIN-OF-THOUGHT"))
    config = gateway_config(primary.base_url, backup.base_url)
    async with app_for(config, redis_url, tmp_path, loud) as app:
        sender = RecordingSender()
        stop = asyncio.Event()
        worker = asyncio.create_task(make_worker(app, sender).run(stop))
        await app.intake.accept(inbound("what is 2+2?", channel="test", conversation="test:1"))
        await eventually(lambda: bool(loud.events("reply_sent")))
        stop.set()
        await worker
        remembered = await app.memory.load("test:1")
    assert [reply.text for reply in sender.sent] == ["The answer is 4."]
    assert [turn.text for turn in remembered] == ["what is 2+2?", "The answer is 4."]
    [sent] = loud.events("reply_sent")
    assert sent["reply"] == "The answer is 4."  # the logs do hold the text
    assert "SECRET-CHAIN-OF-THOUGHT" not in loud.text
    [request] = primary.requests_to("/responses")
    assert request.json is not None
    assert request.json["instructions"] == "You are a test assistant."
    assert request.json["max_output_tokens"] == 1024


async def test_chat_completions_reasoning_is_stripped(
    redis_client: aioredis.Redis, redis_url: str, tmp_path: Path, events: CapturedEvents
) -> None:
    """On a chat-completions server, <think> blocks and reasoning_content are dropped."""
    async with FakeOpenAI(models=["local-model"]) as fake:
        fake.script(Reply(text="Bonjour !", reasoning="SECRET-THINKING"))
        config = gateway_config(fake.base_url, primary_api="openai-completions")
        async with app_for(config, redis_url, tmp_path, events) as running:
            reply = await converse(running, inbound("say hello in French"))
    assert reply == "Bonjour !"
    assert "SECRET-THINKING" not in events.text


async def test_earlier_turns_are_sent_back_to_the_model(app: App, primary: FakeOpenAI) -> None:
    """The second turn's prompt holds the first exchange, in order."""
    primary.script(Reply(text="Nice to meet you, Ada."), Reply(text="Your name is Ada."))
    await converse(app, inbound("my name is Ada"))
    await converse(app, inbound("what is my name?", n=2))
    second = primary.requests_to("/responses")[1].json
    assert second is not None
    assert second["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "my name is Ada"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Nice to meet you, Ada."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "what is my name?"}]},
    ]  # fmt: skip


async def test_a_burst_becomes_one_turn(app: App, primary: FakeOpenAI) -> None:
    """Several messages handed over together make one model call with their texts in order."""
    await converse(app, inbound("first", n=1), inbound("second", n=2))
    [request] = primary.requests_to("/responses")
    assert request.json is not None
    assert request.turn_texts == ["first\nsecond"]


@pytest.mark.parametrize(
    "failure",
    [server_error(), error_reply(429, "slow down"), error_reply(404, "no such model")],
    ids=["500", "429", "404"],
)
async def test_unavailable_primary_falls_back(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents, failure: Reply
) -> None:
    """5xx, 429 and unknown-model answers hand the turn to the next model in the chain."""
    primary.script(failure)
    backup.script(Reply(text="from the backup"))
    reply = await converse(app, inbound("hello"))
    assert reply == "from the backup"
    [fallback] = events.events("model_fallback")
    assert fallback["model"] == "local/local-model"
    assert fallback["to"] == "backup/backup-model"


async def test_refused_connection_falls_back(
    backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """A primary whose port is closed costs one refused connection, then the fallback answers."""
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    backup.script(Reply(text="still here"))
    async with app_for(gateway_config(dead, backup.base_url), redis_url, tmp_path, events) as app:
        reply = await converse(app, inbound("hello"))
    assert reply == "still here"
    assert "cannot connect" in events.events("model_fallback")[0]["error"]


async def test_a_request_the_primary_refused_is_answered_by_the_fallback(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """A 400 from the primary (llama.cpp's "Cannot determine type") hands the turn on: the
    person gets the fallback's answer, not an apology."""
    primary.script(llamacpp_refusal())
    backup.script(Reply(text="answered elsewhere"))
    assert await converse(app, inbound("hello")) == "answered elsewhere"


async def test_a_request_every_model_refused_gets_the_rephrase_reply(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """Only when every model refused the request itself: a clear reply, nothing stored."""
    primary.script(error_reply(400, "invalid input"))
    backup.script(error_reply(400, "invalid input"))
    reply = await converse(app, inbound("hello"))
    assert reply == REFUSED
    assert len(backup.requests_to("/chat/completions")) == 1
    assert await app.memory.load("console:tester") == []
    assert events.events("turn_failed")


async def test_a_refusal_and_an_outage_get_the_try_later_reply(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """A refusal from one model and an outage of the other is no reason to rephrase."""
    primary.script(error_reply(400, "invalid input"))
    backup.script(server_error())
    assert await converse(app, inbound("hello")) == APOLOGY


async def test_empty_final_text_is_a_failed_attempt(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """A model that only reasons gets the next model, never its reasoning sent."""
    primary.script(Reply(text="", reasoning="only thoughts"))
    backup.script(Reply(text="a real answer"))
    reply = await converse(app, inbound("hello"))
    assert reply == "a real answer"


async def test_all_models_failing_gets_an_apology(
    app: App, primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """When every model fails the person gets one short apology and an error event; the
    reply carries why (through the outbox, for the console to show instead)."""
    primary.script(server_error())
    backup.script(server_error())
    [reply] = await run_turn(app, inbound("hello"))
    assert reply.text == APOLOGY
    assert "HTTP 500" in (reply.failure or "")
    [failed] = events.events("turn_failed")
    assert failed["level"] == "error"
    primary.script(Reply(text="fine now"))
    [answered] = await run_turn(app, inbound("again", n=2))
    assert (answered.text, answered.failure) == ("fine now", None)


async def test_provider_without_key_is_skipped_without_a_call(
    redis_client: aioredis.Redis, redis_url: str, tmp_path: Path, events: CapturedEvents
) -> None:
    """A catalog provider whose key is unset is skipped at once with the variable named."""
    config = parse_config(
        '{agents: {defaults: {model: {primary: "anthropic/claude-sonnet-4-5"}}}}',
        source="t",
        env={},
    )
    async with app_for(config, redis_url, tmp_path, events) as app:
        result = await app.agent.run_turn([inbound("hello")])
    assert result.reply is not None
    assert result.reply.text == APOLOGY
    assert "ANTHROPIC_API_KEY is not set" in (result.reply.failure or "")
    [skipped] = events.events("model_skipped")
    assert skipped["model"] == "anthropic/claude-sonnet-4-5"


async def test_a_turn_says_whether_it_found_the_conversation_without_memory(
    app: App, primary: FakeOpenAI
) -> None:
    """A conversation's first turn, and its first after /new, found no memory (no turns,
    summary or base): its result says so, and the worker's COMMIT then looks for no summary to
    keep alive. A turn that found earlier turns says it did not."""
    assert (await app.agent.run_turn([inbound("hello")])).fresh
    await converse(app, inbound("hello"))
    assert not (await app.agent.run_turn([inbound("again", n=2)])).fresh
    await converse(app, inbound("/new", n=3))
    assert (await app.agent.run_turn([inbound("after /new", n=4)])).fresh

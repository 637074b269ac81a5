"""Memory that stays inside the window: compaction, overflow recovery, failure, atomicity."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.agent import TOO_LONG
from bot.app import App, open_app
from bot.config import parse_config
from bot.memory import RedisMemory
from bot.memory.compaction import SUMMARIZER
from bot.messages import Turn
from bot.settings import Settings
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply, server_error
from tests.helpers import gateway_config_text, inbound

WINDOW = (3000, 300)  # contextWindow, maxTokens: a few long turns fill it
CONV = "console:long"


def is_summary(request: Recorded) -> bool:
    return str((request.json or {}).get("instructions", "")).startswith(SUMMARIZER)


class Model:
    """A fake model: numbered summaries for summary requests, a short answer otherwise."""

    def __init__(self) -> None:
        self.summaries = itertools.count(1)

    def __call__(self, request: Recorded) -> Reply:
        if is_summary(request):
            return Reply(text=f"SUMMARY-{next(self.summaries)}: the person likes long messages.")
        return Reply(text="Noted, thank you for telling me all of that.")


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Model(), context_window=WINDOW[0]) as f:
        yield f


def config_for(model: FakeOpenAI, **kwargs: Any) -> Any:
    text = gateway_config_text(model.base_url, window=WINDOW, **kwargs)
    return parse_config(text, source="t", env={})


@pytest.fixture
async def app(
    model: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[App]:  # fmt: skip
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, config_for(model), events.log) as running:
        yield running


async def turn(app: App, text: str, n: int) -> str:
    result = await app.agent.run_turn([inbound(text, conversation=CONV, n=n)])
    await app.memory.append(CONV, result.remember)
    return result.reply.text


def long_message(n: int) -> str:
    return f"Message {n}. " + "I want to tell you about my day in great detail. " * 10


def chat_requests(model: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.json for r in model.requests_to("/responses") if r.json and not is_summary(r)]


async def test_300_long_turns_never_overflow_and_carry_the_summary(
    app: App, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """300 turns of ~500 characters in a 3,000-token window: no request is over the window,
    compaction happens, later prompts carry the latest summary, and between compactions each
    prompt extends the previous one."""
    for n in range(300):
        assert await turn(app, long_message(n), n) == "Noted, thank you for telling me all of that."
    assert model.overflows == 0
    compactions = events.events("compaction")
    assert len(compactions) >= 10
    prompts = chat_requests(model)
    last_summary = f"SUMMARY-{len(compactions)}:"
    assert last_summary in prompts[-1]["instructions"]
    extensions = sum(
        1
        for prev, cur in itertools.pairwise(prompts)
        if cur["instructions"] == prev["instructions"]
        and cur["input"][: len(prev["input"])] == prev["input"]
    )
    assert extensions == len(prompts) - 1 - len(compactions)
    summary_request = next(r for r in model.requests_to("/responses") if is_summary(r))
    assert summary_request.json is not None
    assert "Message 0." in summary_request.turn_texts[0]


async def test_a_summary_folds_the_previous_one_in(app: App, model: FakeOpenAI) -> None:
    """The second summary request carries the first summary."""
    for n in range(40):
        await turn(app, long_message(n), n)
    summaries = [r for r in model.requests_to("/responses") if is_summary(r) and r.json]
    assert len(summaries) >= 2
    assert "Previous summary:\nSUMMARY-1:" in summaries[1].turn_texts[0]


async def test_overflow_compacts_harder_and_retries(
    model: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """A server whose real window is smaller than configured: the turn still gets an answer
    after compacting harder, and the estimator learns to count more tokens."""
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    model.context_window = 1800
    async with open_app(settings, config_for(model), events.log) as app:
        answers = [await turn(app, long_message(n), n) for n in range(30)]
    assert TOO_LONG not in answers
    assert events.events("context_overflow")
    assert model.overflows >= 1


async def test_a_message_too_long_for_any_window_gets_a_clear_reply(
    app: App, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """One message bigger than the server's whole window: two harder compactions, then a
    clear reply."""
    model.context_window = 1500
    reply = await turn(app, "word " * 4000, 1)
    assert reply == TOO_LONG
    assert len(events.events("context_overflow")) == 3


async def test_inbound_text_over_the_limit_is_cut_with_a_note(app: App, model: FakeOpenAI) -> None:
    """A message over maxInboundChars (8,000) reaches the model cut, with a note saying so."""
    await turn(app, "x" * 9000, 1)
    [request] = chat_requests(model)
    sent = request["input"][-1]["content"][0]["text"]
    assert sent.startswith("x" * 8000)
    assert "[The message was cut: 1000 characters omitted.]" in sent


async def test_failed_summary_drops_the_oldest_turns_and_goes_on(
    app: App, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """When summarising fails the oldest turns are dropped, the turn is answered, and memory
    stays bounded."""
    model.default = lambda r: server_error() if is_summary(r) else Reply(text="still here")
    for n in range(60):
        assert await turn(app, long_message(n), n) == "still here"
    assert events.events("compaction_failed")
    assert model.overflows == 0
    info = app.registry.chain()[0]
    budget = app.agent.compactor.budget(info, app.agent.system_prompt)
    state = await app.memory.state(CONV)
    assert app.agent.compactor.prompt_tokens(state, [], str(info.ref)) < budget


async def test_compaction_keeps_appends_made_while_it_ran(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """A turn appended while a (slow) summary is written survives the compaction."""
    for n in range(12):
        await app.memory.append(CONV, [Turn(role="user", text=long_message(n), ts=n),
                                       Turn(role="assistant", text="ok", ts=n)])  # fmt: skip
    model.default = lambda r: Reply(text="SUMMARY-slow", delay=0.3) if is_summary(r) else Reply()
    info = app.registry.chain()[0]
    compacting = asyncio.create_task(app.agent.compactor.compact(CONV, model=info))
    await asyncio.sleep(0.1)
    late = Turn(role="user", text="sent during compaction", ts=99)
    await app.memory.append(CONV, [late])
    result = await compacting
    state = await app.memory.state(CONV)
    assert result.summarised > 0
    assert state.summary is not None
    assert state.summary.text == "SUMMARY-slow"
    assert state.turns[-1] == late


async def test_two_compactions_never_overwrite_each_other(
    app: App, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """Two compactions racing on the same state: one writes, the other changes nothing."""
    for n in range(12):
        await app.memory.append(CONV, [Turn(role="user", text=long_message(n), ts=n),
                                       Turn(role="assistant", text="ok", ts=n)])  # fmt: skip
    model.default = lambda r: Reply(text="SUMMARY-race", delay=0.2) if is_summary(r) else Reply()
    info = app.registry.chain()[0]
    seen = await app.memory.state(CONV)
    results = await asyncio.gather(
        app.agent.compactor.compact(CONV, model=info, state=seen),
        app.agent.compactor.compact(CONV, model=info, state=seen),
    )
    assert sorted(r.summarised > 0 for r in results) == [False, True]
    state = await app.memory.state(CONV)
    assert state.summary is not None
    assert state.summary.version == 1
    assert len(state.turns) == len(seen.turns) - max(r.summarised for r in results)


async def test_the_summary_survives_a_restart(
    app: App, redis_client: aioredis.Redis, model: FakeOpenAI
) -> None:
    """A new process reading the same Redis sees the summary and the turns after it."""
    for n in range(20):
        await turn(app, long_message(n), n)
    before = await app.memory.state(CONV)
    assert before.summary is not None
    again = await RedisMemory(redis_client).state(CONV)
    assert again == before


async def test_every_memory_key_expires_after_the_idle_period(
    app: App, redis_client: aioredis.Redis
) -> None:
    """Turns, summary and base all carry the idleDays expiry; /new-style clear removes them."""
    for n in range(20):
        await turn(app, long_message(n), n)
    for key in app.memory.keys(CONV):
        assert 29 * 86400 < await redis_client.ttl(key) <= 30 * 86400
    await app.memory.clear(CONV)
    assert await redis_client.keys("conv:*") == []


async def test_disabled_compaction_trims_instead(
    model: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """With compaction.enabled false old turns are dropped to fit; no summary is written."""
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(
        settings, config_for(model, compaction="enabled: false"), events.log
    ) as app:
        for n in range(40):
            await turn(app, long_message(n), n)
        state = await app.memory.state(CONV)
    assert state.summary is None
    assert events.events("history_trimmed")
    assert not [r for r in model.requests_to("/responses") if is_summary(r)]
    assert model.overflows == 0

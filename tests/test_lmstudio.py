"""LM Studio natively: the loaded context caps the window, cold models load in the background,
small windows compact sometimes, not every turn; servers without LM Studio's API keep the config."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.app import App
from bot.config import parse_config
from bot.llm.lmstudio import READ_EVERY, LocalModelState, NoNativeApi, fetch_states
from bot.llm.types import ModelRef
from bot.memory.compaction import SUMMARIZER
from tests.conftest import CapturedEvents
from tests.fakes.lmstudio_server import FakeLMStudio, RestApi
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.helpers import eventually, inbound, open_gateway, seed_config_text

MODEL = "minimax-m2.1-gs32"
LOCAL = ModelRef("lmstudio", MODEL)
CONV = "console:lmstudio"


def seed_config(data_dir: Path, lmstudio_url: str, hosted_url: str | None = None) -> str:
    return seed_config_text(data_dir, lmstudio_url=lmstudio_url, hosted_url=hosted_url)


@pytest.fixture(autouse=True)
async def clean(redis_client: aioredis.Redis) -> None:
    """Each test starts with no stored model states (the fixture flushes the test database)."""


@contextlib.asynccontextmanager
async def gateway(
    text: str, redis_url: str, tmp_path: Path, events: CapturedEvents
) -> AsyncIterator[App]:
    """The gateway's parts, in process, as `bot chat` builds them (a first look at LM Studio)."""
    env = {"ANTHROPIC_API_KEY": "sk-ant-test"}
    async with open_gateway(
        text, redis_url=redis_url, data_dir=tmp_path, log=events.log, env=env
    ) as app:
        assert app.local is not None
        await app.local.refresh()
        yield app


def words(n: int, seed: int) -> str:
    """About `n` tokens of text (four characters a token, as the fakes count)."""
    return " ".join(f"w{seed}x{i:02d}" for i in range(n * 4 // 7))


def chats(fake: FakeOpenAI) -> list[Recorded]:
    return [
        r for r in fake.requests_to("/responses")
        if not str((r.json or {}).get("instructions", "")).startswith(SUMMARIZER)
        and (r.json or {}).get("max_output_tokens") != 16  # probes and loads
    ]  # fmt: skip


def summaries(fake: FakeOpenAI) -> list[Recorded]:
    return [
        r for r in fake.requests_to("/responses")
        if str((r.json or {}).get("instructions", "")).startswith(SUMMARIZER)
    ]  # fmt: skip


@pytest.mark.parametrize("api", ["v1", "v0", None])
async def test_the_rest_api_says_what_is_loaded(api: RestApi) -> None:
    """v1 gives the loaded context, v0 only loaded or not; a server without the API is told
    apart from one that cannot be reached."""
    async with (
        FakeLMStudio(model=MODEL, loaded_context=8192, rest_api=api) as fake,
        aiohttp.ClientSession() as http,
    ):
        text = seed_config(Path(__file__).parent / "data", fake.base_url)
        config = parse_config(text, source="t", env={})
        provider = config.providers()["lmstudio"]
        if api is None:
            with pytest.raises(NoNativeApi):
                await fetch_states(http, provider)
            return
        states = await fetch_states(http, provider)
        expected = 8192 if api == "v1" else None
        assert states == {
            MODEL: LocalModelState(loaded=True, context=expected, max_context=131072, vision=None)
            if api == "v0"
            else LocalModelState(loaded=True, context=8192, max_context=131072, vision=False)
        }
        fake.unload()
        assert not (await fetch_states(http, provider))[MODEL].loaded


async def test_the_loaded_context_caps_the_window(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """The seed says 196,608 tokens, LM Studio loaded 8,192: 30 turns of ~500-token messages
    are all answered, none asks for more than 8,192 tokens, and compaction runs, though not on
    every turn. The answer's reservation is a quarter of the window, not the seed's 8,192."""
    async with (
        FakeLMStudio(
            model=MODEL, loaded_context=8192, default=Reply(text="noted", reasoning=None)
        ) as fake,
        gateway(seed_config(data_dir, fake.base_url), redis_url, tmp_path, events) as app,
    ):
        info = app.registry.info(LOCAL)
        assert (info.configured_window, info.context_window) == (196608, 8192)
        for n in range(30):
            result = await app.agent.run_turn([inbound(words(500, n), conversation=CONV, n=n)])
            assert result.reply is not None
            assert result.reply.text == "noted"
            await app.memory.append(CONV, result.remember)
    assert fake.overflows == 0
    assert {r.json["max_output_tokens"] for r in chats(fake) if r.json} == {2048}
    assert 1 <= len(summaries(fake)) <= 10
    [state] = events.events("model_state")
    assert (state["model"], state["context"]) == (str(LOCAL), 8192)


async def test_a_small_window_with_a_big_max_tokens_compacts_now_and_then(
    redis_url: str, tmp_path: Path, events: CapturedEvents
) -> None:
    """`contextWindow: 4096, maxTokens: 8192` (a common copy-paste) on a server without LM
    Studio's API: 20 turns, at most 5 compactions, no request over the window."""
    async with FakeLMStudio(
        model="small", loaded_context=4096, rest_api=None,
        default=Reply(text="a short answer " * 20, reasoning=None),
    ) as fake:  # fmt: skip
        text = f"""{{
          agents: {{ defaults: {{ model: "local/small" }} }},
          models: {{ mode: "replace", providers: {{ local: {{
            baseUrl: "{fake.base_url}", apiKey: "x", api: "openai-responses",
            models: [{{ id: "small", contextWindow: 4096, maxTokens: 8192 }}],
          }} }} }},
        }}"""
        async with gateway(text, redis_url, tmp_path, events) as app:
            for n in range(20):
                result = await app.agent.run_turn([inbound(words(120, n), conversation=CONV, n=n)])
                assert result.reply is not None
                assert result.reply.text.startswith("a short answer")
                await app.memory.append(CONV, result.remember)
    assert fake.overflows == 0
    assert 1 <= len(summaries(fake)) <= 5
    assert not events.events("model_state")  # no LM Studio API: the config's numbers, quietly


async def test_a_cold_local_model_loads_in_the_background_while_the_fallback_answers(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """The primary is not loaded and a JIT load takes seconds: the hosted fallback answers the
    first message at once, one request loads the model, and once it is loaded the local model
    answers again without anyone running a command."""
    async with (
        FakeLMStudio(
            model=MODEL, loaded_context=None, jit_delay=3, default=Reply(text="from local")
        ) as lmstudio,
        FakeOpenAI(models=["claude-sonnet-4-5"], default=Reply(text="from hosted")) as hosted,
    ):
        text = seed_config(data_dir, lmstudio.base_url, hosted.base_url)
        async with gateway(text, redis_url, tmp_path, events) as app:
            assert app.registry.info(LOCAL).loaded is False
            started = time.monotonic()
            first = await app.agent.run_turn([inbound("hello", conversation=CONV, n=1)])
            first_s = time.monotonic() - started
            assert first.reply is not None
            assert first.reply.text == "from hosted"
            assert first_s < 8
            second = await app.agent.run_turn([inbound("still there?", conversation=CONV, n=2)])
            assert second.reply is not None
            assert second.reply.text == "from hosted"  # still loading: nobody waits for it
            await eventually(lambda: bool(events.events("model_loaded")), within=30)
            third = await app.agent.run_turn([inbound("and now?", conversation=CONV, n=3)])
            assert third.reply is not None
            assert third.reply.text == "from local"
    assert len(lmstudio.loads) == 1
    [loaded] = events.events("model_loaded")
    assert loaded["outcome"] == "ok"
    assert [e["state"] for e in events.events("model_state")] == [
        "not loaded",
        "loaded, 4096-token context",
    ]


async def test_a_cold_model_without_a_fallback_is_waited_for(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """With no other model to ask, the turn waits for LM Studio to load the model."""
    async with (
        FakeLMStudio(
            model=MODEL, loaded_context=None, jit_delay=1, default=Reply(text="from local")
        ) as lmstudio,
        gateway(seed_config(data_dir, lmstudio.base_url), redis_url, tmp_path, events) as app,
    ):
        result = await app.agent.run_turn([inbound("hello", conversation=CONV, n=1)])
        assert result.reply is not None
        assert result.reply.text == "from local"
    assert len(lmstudio.loads) == 1


async def test_a_server_without_the_api_keeps_the_configured_window(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """llama-server answers 404 for LM Studio's API: the configured numbers stand, nothing is
    logged about it, and turns are answered as before."""
    async with (
        FakeLMStudio(model=MODEL, rest_api=None, loaded_context=196608) as fake,
        gateway(seed_config(data_dir, fake.base_url), redis_url, tmp_path, events) as app,
    ):
        info = app.registry.info(LOCAL)
        assert (info.context_window, info.loaded) == (196608, None)
        result = await app.agent.run_turn([inbound("hello", conversation=CONV)])
        assert result.reply is not None
        assert result.reply.text == "ok"
    assert not events.events("model_state")
    assert not events.events("model_loading")


async def test_ttl_seconds_asks_lm_studio_to_keep_the_model_loaded(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """A provider's `ttlSeconds` goes with every request as LM Studio's `ttl`; without it no
    `ttl` is sent and LM Studio's own setting stands."""
    async with FakeLMStudio(model=MODEL, loaded_context=8192) as fake:
        plain = seed_config(data_dir, fake.base_url)
        warm = plain.replace('apiKey: "lmstudio",', 'apiKey: "lmstudio", ttlSeconds: 86400,')
        for text in (plain, warm):
            async with gateway(text, redis_url, tmp_path, events) as app:
                await app.agent.run_turn([inbound("hello", conversation=CONV)])
    sent = [r.json.get("ttl") for r in chats(fake) if r.json]
    assert sent == [None, 86400]


async def test_a_busy_process_reads_the_shared_states_once_a_second(
    redis_url: str, tmp_path: Path, data_dir: Path, events: CapturedEvents
) -> None:
    """A turn's read of LM Studio's stored states goes to Redis at most every READ_EVERY s;
    in between, turns plan with what this process knows (its own refreshes included)."""
    async with (
        FakeLMStudio(model=MODEL, loaded_context=8192) as fake,
        gateway(seed_config(data_dir, fake.base_url), redis_url, tmp_path, events) as app,
    ):
        assert app.local is not None
        await asyncio.sleep(READ_EVERY)  # past any read made while the gateway started
        first = app.local.read()
        assert first.count == len(app.local.providers) > 0
        async with app.redis.client.pipeline(transaction=False) as pipe:
            first.queue(pipe)
            known = first.decode(await pipe.execute())
        again = app.local.read()
        assert again.count == 0
        assert again.decode([]) is known
        await asyncio.sleep(READ_EVERY)  # the window has passed: a lower bound, not a race
        assert app.local.read().count == len(app.local.providers)

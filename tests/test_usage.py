"""Usage accounting through the real agent, Redis and fake models: tokens, cost, budgets."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.agent import BUDGET_NOTICE
from bot.app import App
from bot.config import parse_config
from bot.llm.breaker import RedisBreaker
from bot.llm.failover import FailoverClient
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.messages import InboundMessage, Turn
from bot.metrics import Metrics
from bot.usage import Prices, RedisUsage, Totals
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, server_error
from tests.helpers import Clock, bot_env, eventually, open_gateway, provider_block, run_bot

ADMIN = "whatsapp:+15550000001"
ANN = "whatsapp:+15550000002"
BOB = "whatsapp:+15550000003"
HOSTED = "backup/backup-model"
LOCAL = "local/local-model"
# The hosted model's list prices, USD per million tokens.
PRICES = {"input": 3.0, "output": 15.0, "cacheRead": 0.3, "cacheWrite": 3.75}
DAY = 1_795_000_000.0  # 2026-11-18 08:26:40 UTC
IDS = itertools.count(1)


def hosted_cost(tokens_in: int, cached: int, tokens_out: int) -> float:
    """What the hosted model charges for one call, computed by hand from PRICES."""
    fresh = tokens_in - cached
    per_million = (
        fresh * PRICES["input"] + cached * PRICES["cacheRead"] + tokens_out * PRICES["output"]
    )
    return per_million / 1_000_000


def config_text(local: FakeOpenAI, backup: FakeOpenAI, *, budget: int = 0) -> str:
    """Local (Responses, free) first, a priced hosted model (chat completions) behind it."""
    hosted = json.loads(provider_block(backup.base_url, "openai-completions", "backup-model"))
    hosted["models"][0]["cost"] = PRICES
    return f"""{{
      agents: {{ defaults: {{
        model: {{ primary: "{LOCAL}", fallbacks: ["{HOSTED}"] }},
      }} }},
      models: {{ mode: "replace", providers: {{
        local: {provider_block(local.base_url)},
        backup: {json.dumps(hosted)},
      }} }},
      channels: {{ whatsapp: {{ dmPolicy: "open" }} }},
      commands: {{ admins: ["{ADMIN}"] }},
      session: {{ dailyTokenBudget: {budget} }},
    }}"""


def wa(text: str, sender: str = ANN) -> InboundMessage:
    n = next(IDS)
    return InboundMessage(channel="whatsapp", conversation=sender, sender=sender, text=text,
                          platform_id=f"SM{n}", ts=float(n))  # fmt: skip


@pytest.fixture
async def local() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="local says hi")) as f:
        yield f


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["backup-model"], default=Reply(text="backup says hi")) as f:
        yield f


@asynccontextmanager
async def gateway(
    text: str, redis_url: str, tmp_path: Path, events: CapturedEvents, clock: Clock | None = None
) -> AsyncIterator[App]:
    async with open_gateway(text, redis_url=redis_url, data_dir=tmp_path, log=events.log) as app:
        if clock is not None:
            app.usage.clock = clock  # the accounting's wall clock decides the UTC day
        yield app


async def say(app: App, message: InboundMessage) -> str | None:
    """One turn, remembered as the worker does; the reply text (None: no reply)."""
    result = await app.agent.run_turn([message])
    await app.memory.append(message.conversation, result.remember)
    return result.reply.text if result.reply else None


async def mixed_turns(app: App, local: FakeOpenAI, backup: FakeOpenAI) -> None:
    """Ann: one local turn and one hosted turn (local down); Bob: one hosted turn."""
    local.script(Reply(text="local answer", usage=(120, 30), cached=20))
    assert await say(app, wa("hello", ANN)) == "local answer"
    local.script(server_error())
    backup.script(Reply(text="hosted answer", usage=(200, 50), cached=80))
    assert await say(app, wa("again", ANN)) == "hosted answer"
    local.script(server_error())
    backup.script(Reply(text="hosted for bob", usage=(1000, 400), cached=0))
    assert await say(app, wa("hi", BOB)) == "hosted for bob"


async def test_totals_equal_what_the_servers_reported(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """Streamed Responses and chat turns add the reported tokens (cached too) and the cost
    from the configured prices per sender, model and conversation; local costs nothing."""
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        await mixed_turns(app, local, backup)
        [ann] = await app.usage.sender_days(ANN, 1)
        by_model = {r.key: r.totals for r in await app.usage.report(by="model", days=1)}
        conversation = await app.usage.conversation(BOB)
    assert all(
        r.stream for r in local.requests_to("/responses") + backup.requests_to("/chat/completions")
    )
    assert all(
        r.json and r.json["stream_options"] == {"include_usage": True}
        for r in backup.requests_to("/chat/completions")
    )
    assert (ann.tokens_in, ann.tokens_out, ann.cached_in, ann.turns) == (320, 80, 100, 2)
    assert ann.cost == pytest.approx(hosted_cost(200, 80, 50), abs=1e-12)
    assert (ann.local_tokens, ann.estimated) == (150, 0)
    assert (by_model[LOCAL].tokens, by_model[LOCAL].cost) == (150, 0)
    assert (by_model[HOSTED].tokens_in, by_model[HOSTED].turns) == (1200, 2)
    assert by_model[HOSTED].cost == pytest.approx(
        hosted_cost(200, 80, 50) + hosted_cost(1000, 0, 400), abs=1e-12
    )
    assert (conversation.tokens_in, conversation.tokens_out, conversation.turns) == (1000, 400, 1)


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_server_that_reports_no_usage_is_estimated(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents, api: str,
) -> None:  # fmt: skip
    """With no usage in the stream (Responses, or chat ignoring include_usage), the call is
    counted from its text and marked estimated."""
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        if api == "chat":
            local.script(server_error())
        (local if api == "responses" else backup).script(Reply(text="x" * 90, no_usage=True))
        assert await say(app, wa("y" * 300)) == "x" * 90
        [ann] = await app.usage.sender_days(ANN, 1)
    assert (ann.estimated, ann.calls) == (1, 1)
    assert ann.tokens_out == 30  # 90 characters, 3 a token
    assert ann.tokens_in > 100
    [usage] = events.events("model_usage")
    assert usage["estimated"] is True


async def test_compaction_summaries_are_accounted(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """A /compact's summary call counts for the sender who asked, as a call but not a turn."""
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        for n in range(4):
            local.script(Reply(text=f"noted {n}", usage=(10, 5)))
            await say(app, wa(f"fact {n}: " + "blah " * 100))
        local.script(Reply(text="The facts 0 to 3.", usage=(700, 60)))
        assert (await say(app, wa("/compact")) or "").startswith("Condensed")
        [ann] = await app.usage.sender_days(ANN, 1)
    assert (ann.tokens_in, ann.tokens_out, ann.calls, ann.turns) == (740, 80, 5, 4)
    assert [e["kind"] for e in events.events("model_usage")][-1] == "compaction"


async def test_the_daily_budget_cuts_off_at_the_right_turn(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """Past dailyTokenBudget a sender gets one notice, then silence with no model call, until
    the UTC day changes; an admin is never cut off."""
    clock = Clock(DAY)
    text = config_text(local, backup, budget=100)
    async with gateway(text, redis_url, tmp_path, events, clock) as app:
        local.default = Reply(text="answer", usage=(60, 10))
        assert await say(app, wa("one")) == "answer"  # 70 tokens: under the budget
        assert await say(app, wa("two")) == "answer"  # started at 70: allowed, now 140
        calls = len(local.requests)
        assert await say(app, wa("three")) == BUDGET_NOTICE
        assert await say(app, wa("four")) is None
        assert len(local.requests) == calls  # no model call past the budget
        for n in range(3):
            assert await say(app, wa(f"admin {n}", ADMIN)) == "answer"
        clock.now = DAY + 86400  # the next UTC day
        assert await say(app, wa("five")) == "answer"
        remembered = [t.text for t in (await app.memory.state(ANN)).turns if t.role == "user"]
    assert remembered == ["one", "two", "five"]
    assert len(events.events("budget_exceeded")) == 1


async def test_usage_command_shows_your_own_numbers(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """/usage answers with the sender's own today and 30 days; `all` is for admins only."""
    clock = Clock(DAY)
    async with gateway(config_text(local, backup), redis_url, tmp_path, events, clock) as app:
        await mixed_turns(app, local, backup)
        clock.now = DAY + 86400
        local.script(Reply(text="ok", usage=(5, 5)))
        await say(app, wa("next day", ANN))
        mine = await say(app, wa("/usage", ANN))
        refused = await say(app, wa("/usage all", ANN))
        clock.now = DAY
        everyone = await say(app, wa("/usage all", ADMIN)) or ""
    cost = hosted_cost(200, 80, 50)
    assert mine == (
        "Today: 10 tokens (5 in, 5 out), $0.0000, 1 turn\n"
        f"Last 30 days: 410 tokens (325 in, 85 out), ${cost:.4f}, 3 turns"
    )
    assert refused == "Only admins can see everyone's usage."
    assert everyone.splitlines()[1].startswith(f"1. {BOB}: 1,400 tokens")
    assert everyone.splitlines()[2].startswith(f"2. {ANN}: 400 tokens")


async def test_totals_outlive_a_restart(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """A gateway started again reads the totals the previous one wrote, and adds to them."""
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        local.script(Reply(usage=(40, 2)))
        await say(app, wa("before"))
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        [before] = await app.usage.sender_days(ANN, 1)
        local.script(Reply(usage=(50, 3)))
        await say(app, wa("after"))
        [after] = await app.usage.sender_days(ANN, 1)
    assert (before.tokens_in, before.tokens_out, before.turns) == (40, 2, 1)
    assert (after.tokens_in, after.tokens_out, after.turns) == (90, 5, 2)


async def test_metrics_count_cost_and_tokens_by_model(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """switchboard_cost_usd_total{model} and the token counters follow the accounting."""
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as app:
        await mixed_turns(app, local, backup)
    metrics = Metrics()
    for event in events.events():
        metrics.observe(event, "")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.render().decode().splitlines()
        if line.startswith(("switchboard_cost_usd_total", "switchboard_tokens_total"))
    }
    cost = hosted_cost(200, 80, 50) + hosted_cost(1000, 0, 400)
    assert samples[f'switchboard_cost_usd_total{{model="{HOSTED}"}}'] == pytest.approx(cost)
    assert samples[f'switchboard_cost_usd_total{{model="{LOCAL}"}}'] == 0
    assert samples[f'switchboard_tokens_total{{direction="in",model="{LOCAL}"}}'] == 120
    assert samples[f'switchboard_tokens_total{{direction="out",model="{HOSTED}"}}'] == 450
    assert samples[f'switchboard_tokens_total{{direction="cached_in",model="{HOSTED}"}}'] == 80


async def test_bot_usage_json_matches_the_servers(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """`bot usage --json` gives per sender the reported tokens and the cost to 1/100 cent;
    the table and --by model agree."""
    text = config_text(local, backup)
    async with gateway(text, redis_url, tmp_path, events) as app:
        await mixed_turns(app, local, backup)
    config = tmp_path / "bot.json5"
    config.write_text(text)
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("usage", "--json", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    rows = {row["sender"]: row for row in map(json.loads, result.out.splitlines())}
    assert set(rows) == {ANN, BOB}
    assert (rows[ANN]["tokens_in"], rows[ANN]["tokens_out"]) == (320, 80)
    assert (rows[BOB]["tokens_in"], rows[BOB]["tokens_out"]) == (1000, 400)
    assert abs(rows[ANN]["cost"] - hosted_cost(200, 80, 50)) < 0.0001
    assert abs(rows[BOB]["cost"] - hosted_cost(1000, 0, 400)) < 0.0001
    assert rows[ANN]["local_share"] == pytest.approx(150 / 400, abs=1e-4)
    models = await run_bot("usage", "--by", "model", "--since", "1d", env=env, cwd=tmp_path)
    assert models.code == 0, models.err
    lines = models.out.splitlines()
    assert lines[0].split()[:2] == ["MODEL", "TURNS"]
    assert lines[1].split()[:4] == [HOSTED, "2", "1,200", "450"]
    assert lines[2].split()[:4] == [LOCAL, "1", "120", "30"]


async def test_a_probe_counts_on_its_model_only(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A breaker probe that reached the model is added to the model's day, estimated and
    for no sender."""
    config = parse_config(config_text(local, backup), source="t", env={})
    usage = RedisUsage(redis_client, prices=Prices(config), log=events.log)
    providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
    clock = Clock()  # the breaker's
    client = FailoverClient(
        registry=ModelRegistry(config), providers=providers, log=events.log, usage=usage,
        breaker=RedisBreaker(redis_client, log=events.log, clock=clock),
    )  # fmt: skip
    hello = [Turn(role="user", text="hello", ts=0.0)]
    try:
        await local.stop_listening()  # refused: the breaker opens
        await client.complete(instructions="be brief", turns=hello, conversation=ANN)
        await local.start_listening()
        clock.now += 31  # past the breaker's cooldown (30 s): the next turn starts the probe
        await client.complete(instructions="be brief", turns=hello, conversation=BOB)
        await eventually(lambda: bool(events.events("model_probe")), within=10)
        key = f"usage:model:{{{LOCAL}}}:{usage.day()}"
        async with asyncio.timeout(10):
            while not await redis_client.exists(key):  # noqa: ASYNC110 - polling Redis with a deadline
                await asyncio.sleep(0.01)
        probe = Totals.from_hash(await redis_client.hgetall(key))
    finally:
        await client.close()
        for provider in providers.values():
            await provider.close()
    assert (probe.tokens_in, probe.tokens_out, probe.estimated, probe.calls) == (10, 1, 1, 1)
    assert probe.turns == 0
    assert [e["kind"] for e in events.events("model_usage") if e["model"] == LOCAL] == ["probe"]
    assert not await redis_client.keys("usage:sender:*")  # turns' calls wait for their turn

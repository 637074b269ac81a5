"""LM Studio natively: a small loaded context, a small configured window, a cold model.

Three runs of the gateway's own turn code (open_app, the agent, real Redis) against a fake
LM Studio that speaks its REST API, enforces the context it loaded and loads on demand (JIT):
1. the seed's local stack (contextWindow 196,608) with the model loaded at 8,192 tokens:
   30 turns of ~500-token messages;
2. `contextWindow: 4096, maxTokens: 8192` on a server without LM Studio's API: 20 turns;
3. the seed's hybrid block, local first, with the local model not loaded and a 20 s JIT load:
   how soon the hosted fallback answers, and when the local model serves again.
Run: `make bench` or `.venv/bin/python -m bench.lmstudio`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

from bot.app import App, open_app
from bot.config import parse_config
from bot.logs import make_logger
from bot.memory.compaction import SUMMARIZER
from bot.settings import Settings
from tests.fakes.lmstudio_server import FakeLMStudio
from tests.fakes.openai_server import FakeOpenAI, Reply, prompt_tokens
from tests.helpers import inbound, seed_config_text

DATA = Path(__file__).parent.parent / "tests" / "data"
CONV = "console:bench"


def words(tokens: int, seed: int) -> str:
    """About `tokens` tokens of text as the fake counts them (four characters a token)."""
    return " ".join(f"w{seed}x{i:02d}" for i in range(tokens * 4 // 7))


async def fresh(app: App) -> None:
    """Forget what an earlier run stored (model states, the conversation), then look again."""
    await app.redis.client.flushdb()
    assert app.local is not None
    await app.local.refresh()


async def converse(app: App, turns: int, tokens: int) -> int:
    """Run `turns` turns of ~`tokens`-token messages; how many got the model's answer."""
    await fresh(app)
    answered = 0
    for n in range(turns):
        result = await app.agent.run_turn([inbound(words(tokens, n), conversation=CONV, n=n)])
        await app.memory.append(CONV, result.remember)
        answered += bool(result.remember)
    await app.memory.clear(CONV)
    return answered


def report(name: str, fake: FakeOpenAI, answered: int, turns: int, window: int) -> None:
    bodies = [r.json for r in fake.requests_to("/responses") if r.json]
    summaries = [b for b in bodies if str(b.get("instructions", "")).startswith(SUMMARIZER)]
    largest = max(prompt_tokens(b) + int(b["max_output_tokens"]) for b in bodies)
    print(f"  {name}")
    print(f"    answered {answered} of {turns} turns; compactions {len(summaries)}")
    print(f"    largest request (prompt + max output) {largest} tokens; window {window};")
    print(f"    requests over the window {fake.overflows}")


async def run(jit_seconds: float, workdir: Path) -> None:
    settings = Settings(
        redis_url=os.environ.get("REDIS_URL"), bot_data_dir=str(workdir), _env_file=None
    )  # type: ignore[call-arg]
    log = make_logger(stream=io.StringIO(), as_json=True)
    env = {"ANTHROPIC_API_KEY": "sk-ant-bench"}
    print("lmstudio: the gateway against a fake LM Studio (REST API, JIT, enforced context)")

    quiet = Reply(text="noted", reasoning=None)
    async with FakeLMStudio(model="minimax-m2.1-gs32", loaded_context=8192, default=quiet) as lms:
        text = seed_config_text(DATA, lmstudio_url=lms.base_url)
        async with open_app(settings, parse_config(text, source="seed", env=env), log) as app:
            answered = await converse(app, 30, 500)
        report("seed config (contextWindow 196608), loaded at 8192", lms, answered, 30, 8192)

    answer = Reply(text="a short answer " * 20, reasoning=None)
    async with FakeLMStudio(model="small", loaded_context=4096, rest_api=None, default=answer) as s:
        text = f"""{{
          agents: {{ defaults: {{ model: "local/small" }} }},
          models: {{ mode: "replace", providers: {{ local: {{
            baseUrl: "{s.base_url}", apiKey: "x", api: "openai-responses",
            models: [{{ id: "small", contextWindow: 4096, maxTokens: 8192 }}],
          }} }} }},
        }}"""
        async with open_app(settings, parse_config(text, source="small", env={}), log) as app:
            answered = await converse(app, 20, 120)
        report("contextWindow 4096, maxTokens 8192 (no LM Studio API)", s, answered, 20, 4096)

    async with (
        FakeLMStudio(
            model="minimax-m2.1-gs32", loaded_context=None, jit_delay=jit_seconds,
            default=Reply(text="local"),
        ) as cold,
        FakeOpenAI(models=["claude-sonnet-4-5"], default=Reply(text="hosted")) as hosted,
    ):  # fmt: skip
        text = seed_config_text(DATA, lmstudio_url=cold.base_url, hosted_url=hosted.base_url)
        async with open_app(settings, parse_config(text, source="hybrid", env=env), log) as app:
            await fresh(app)
            started = time.monotonic()
            first = await app.agent.run_turn([inbound("hello", conversation=CONV, n=0)])
            first_s = time.monotonic() - started
            n, answer_text = 0, ""
            while answer_text != "local" and time.monotonic() - started < jit_seconds + 60:
                await asyncio.sleep(0.5)  # a message every half second until the local answers
                n += 1
                result = await app.agent.run_turn([inbound("again", conversation=CONV, n=n)])
                answer_text = result.reply.text if result.reply else ""
            local_s = time.monotonic() - started
            await app.memory.clear(CONV)
    print(f"  cold local model, {jit_seconds:g} s JIT load, hosted fallback")
    print(f"    first answer ({first.reply.text if first.reply else '-'}) after {first_s:.2f} s")
    print(f"    local model answering again after {local_s:.1f} s ({n} messages meanwhile);")
    print(f"    loads requested {len(cold.loads)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jit", type=float, default=20.0, help="seconds a JIT load takes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as workdir:
        asyncio.run(run(args.jit, Path(workdir)))


if __name__ == "__main__":
    main()

"""Memory over a long conversation: prompt size per turn, compactions, prompt-cache reuse.

A 1,000-turn conversation (messages of 100-1,500 characters, answers of 200-800) against a
fake model that enforces its context window. Prints prompt tokens per turn (as the server
counts them), the window, how often compaction ran, the share of prompts that extend the
previous one (what keeps a server's prompt cache hitting), and whether the summary survives a
restart. Real Redis (REDIS_URL, else embedded). Run: `.venv/bin/python -m bench.memory`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import random
import tempfile
from pathlib import Path

from bot.app import open_app
from bot.config import parse_config
from bot.logs import make_logger
from bot.memory.compaction import SUMMARIZER
from bot.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply, prompt_tokens
from tests.helpers import gateway_config_text, inbound

CONV = "console:bench"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "people",
         "talk", "about", "their", "plans"]  # fmt: skip


def words(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def is_summary(request: Recorded) -> bool:
    return str((request.json or {}).get("instructions", "")).startswith(SUMMARIZER)


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(turns: int, window: int, max_tokens: int, workdir: Path) -> None:
    rng = random.Random(7)
    summaries = itertools.count(1)

    def answer(request: Recorded) -> Reply:
        if is_summary(request):
            return Reply(text=f"SUMMARY-{next(summaries)}: " + words(rng, 1200), reasoning=None)
        return Reply(text=words(rng, rng.randint(200, 800)), reasoning=None)

    settings = Settings(
        redis_url=os.environ.get("REDIS_URL"), bot_data_dir=str(workdir), _env_file=None
    )  # type: ignore[call-arg]
    log = make_logger(stream=io.StringIO(), as_json=True)
    async with FakeOpenAI(models=["local-model"], default=answer, context_window=window) as model:
        text = gateway_config_text(model.base_url, window=(window, max_tokens))
        config = parse_config(text, source="bench", env={})
        async with open_app(settings, config, log) as app:
            await app.memory.clear(CONV)
            replies = 0
            for n in range(turns):
                message = inbound(words(rng, rng.randint(100, 1500)), conversation=CONV, n=n)
                result = await app.agent.run_turn([message])
                await app.memory.append(CONV, result.remember)
                replies += bool(result.remember)
            before = await app.memory.state(CONV)
        async with open_app(settings, config, log) as restarted:
            after = await restarted.memory.state(CONV)
            await restarted.memory.clear(CONV)
        chats = [r.json for r in model.requests_to("/responses") if r.json and not is_summary(r)]
        compactions = sum(1 for r in model.requests_to("/responses") if is_summary(r))
        sizes = [prompt_tokens(body) + int(body["max_output_tokens"]) for body in chats]
        extending = sum(
            1
            for prev, cur in itertools.pairwise(chats)
            if cur["instructions"] == prev["instructions"]
            and cur["input"][: len(prev["input"])] == prev["input"]
        )
        overflows = model.overflows

    print(f"memory: {turns}-turn conversation, contextWindow {window}, maxTokens {max_tokens}")
    print(f"  turns answered                 {replies} of {turns}")
    print(f"  prompt + max output (tokens)   p50 {percentile(sizes, 50)}  p99 "
          f"{percentile(sizes, 99)}  max {max(sizes)}  (window {window})")  # fmt: skip
    print(f"  requests over the window       {overflows}")
    every = turns / max(1, compactions)
    print(f"  compactions                    {compactions} (one per {every:.1f} turns)")
    print(f"  prompts extending the previous {extending / max(1, len(chats) - 1):.1%}")
    print(f"  summary after a restart        {'intact' if after == before else 'CHANGED'} "
          f"(version {before.summary.version if before.summary else 0}, "
          f"{len(before.turns)} turns after it)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32000)
    parser.add_argument("--max-tokens", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as workdir:
        asyncio.run(run(args.turns, args.window, args.max_tokens, Path(workdir)))


if __name__ == "__main__":
    main()

"""What usage accounting costs a turn: Redis round trips, commands and CPU, before and after.

Runs the same N agent turns (a fake model answering at once, each exchange appended to memory
as the worker does) three times against a private embedded Redis: accounting off (as before
bot.usage), accounting on, and accounting on with a `session.dailyTokenBudget`. Round trips =
INFO stats total_reads_processed delta / turns (a pipeline arrives in one read); commands =
INFO commandstats calls delta / turns (commands inside scripts included, INFO excluded); CPU =
this process's CPU time per turn (the fake model runs in it too, so compare, don't quote).
The worker's own lease and delivery commands are not in these turns: they do not change.
Run: `.venv/bin/python -m bench.usage [--turns 300]`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path

from bench.pipeline import redis_counts
from bot.app import App, open_app
from bot.config import parse_config
from bot.logs import make_logger
from bot.redisdb import EmbeddedRedis
from bot.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import gateway_config_text, inbound

CONVERSATIONS = 20


async def measure(app: App, turns: int, offset: int) -> tuple[float, float, float]:
    """(round trips, commands, CPU ms) per turn over `turns` turns."""
    redis = app.redis.client
    reads, commands = await redis_counts(redis)
    cpu = time.process_time()
    for n in range(turns):
        conversation = f"console:bench{(n + offset) % CONVERSATIONS}"
        message = inbound(f"question {n}", conversation=conversation, n=n + offset)
        result = await app.agent.run_turn([message])
        await app.memory.append(conversation, result.remember)
    cpu = time.process_time() - cpu
    reads_after, commands_after = await redis_counts(redis)
    # redis_counts itself: two INFO reads between the snapshots.
    return (
        (reads_after - reads - 2) / turns,
        (commands_after - commands) / turns,
        cpu * 1000 / turns,
    )


async def run(turns: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp))
        await redis.start()
        try:
            async with FakeOpenAI(models=["local-model"], default=Reply(usage=(50, 5))) as fake:
                rows = []
                for name, budget, accounting in (
                    ("accounting off (before)", 0, False),
                    ("accounting on", 0, True),
                    ("accounting on + dailyTokenBudget", 10**9, True),
                ):
                    text = gateway_config_text(fake.base_url).rstrip().removesuffix("}").rstrip()
                    text += f" session: {{ dailyTokenBudget: {budget} }} }}"
                    config = parse_config(text, source="bench", env={})
                    settings = Settings(redis_url=redis.url, bot_data_dir=tmp, _env_file=None)  # type: ignore[call-arg]
                    log = make_logger(level="warning", stream=io.StringIO())
                    async with open_app(settings, config, log) as app:
                        if not accounting:  # as before bot.usage: no calls noted or written
                            app.agent.usage = None
                            app.llm.usage = None
                        await measure(app, CONVERSATIONS, 0)  # warm up: connections, scripts
                        rows.append((name, *await measure(app, turns, CONVERSATIONS)))
        finally:
            await redis.stop()
    print(f"{turns} turns each, {CONVERSATIONS} conversations, embedded Redis")
    print(f"{'':<36}{'round trips':>12}{'commands':>10}{'CPU ms':>9}  (per turn)")
    for name, trips, commands, cpu in rows:
        print(f"{name:<36}{trips:>12.2f}{commands:>10.2f}{cpu:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    asyncio.run(run(parser.parse_args().turns))


if __name__ == "__main__":
    main()

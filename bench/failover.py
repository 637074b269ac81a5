"""Failover during an outage: the latency a turn pays while the local primary is down.

The primary accepts connections and never answers (a hung or black-holed LM Studio, or a
model stuck loading); the fallback answers after 50 ms. The primary's `firstTokenSeconds` is
what a silent model costs a turn (30 s by default; 2 s here, to keep the run short).
20 consecutive turns run with the shared breaker and without it, against a baseline of the
fallback alone; then the primary comes back and the time until it serves again is measured.
Real Redis (REDIS_URL, else embedded), real openai SDK calls.
Run: `make bench` or `.venv/bin/python -m bench.failover`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from bot.config import parse_config
from bot.llm.breaker import RedisBreaker
from bot.llm.failover import FailoverClient
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.logs import make_logger
from bot.messages import Turn
from bot.redisdb import EmbeddedRedis, connect
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import gateway_config_text

TURN = [Turn(role="user", text="hello", ts=0.0)]


async def ask(client: FailoverClient) -> str:
    """One turn with the default turn budget (agents.defaults.timeoutSeconds, 120 s)."""
    deadline = asyncio.get_running_loop().time() + 120
    return (await client.complete(instructions="be brief", turns=TURN, deadline=deadline)).text


async def timed_turns(client: FailoverClient, count: int) -> list[float]:
    """Milliseconds each of `count` consecutive turns took."""
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        await ask(client)
        spent.append((time.perf_counter() - started) * 1000)
    return spent


async def run(turns: int, first_token_s: float, cooldown: float, workdir: Path) -> None:
    url = os.environ.get("REDIS_URL")
    embedded = None
    if not url:
        embedded = EmbeddedRedis(workdir)
        await embedded.start()
        url = embedded.url
    cluster = os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes")
    redis = connect(url, cluster=cluster)
    log = make_logger(stream=io.StringIO(), as_json=True)
    hung = Reply(hang=True)
    async with (
        FakeOpenAI(models=["local-model"], default=hung) as primary,
        FakeOpenAI(models=["backup-model"], default=Reply(text="ok", delay=0.05)) as backup,
    ):
        text = gateway_config_text(
            primary.base_url, backup.base_url, fallback_api="openai-responses",
            provider_timeout=120, first_token=first_token_s,
        )  # fmt: skip
        config = parse_config(text, source="bench", env={})
        alone = parse_config(
            text.replace('primary: "local/local-model"', 'primary: "backup/backup-model"'),
            source="bench",
            env={},
        )
        providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
        registry = ModelRegistry(config)

        def client(breaker: RedisBreaker | None, reg: ModelRegistry = registry) -> FailoverClient:
            return FailoverClient(registry=reg, providers=providers, log=log, breaker=breaker)

        await redis.flushdb()
        baseline = await timed_turns(client(None, ModelRegistry(alone)), turns)
        breaker = RedisBreaker(redis, log=log, cooldown_seconds=cooldown)
        shared = client(breaker)
        with_breaker = await timed_turns(shared, turns)

        primary.default = Reply(text="primary is back")  # the outage ends
        back_at = time.perf_counter()
        while await ask(shared) == "ok":  # noqa: ASYNC110 - a turn every 100 ms is the measurement
            await asyncio.sleep(0.1)  # one turn every 100 ms until the primary serves again
        recovered_s = time.perf_counter() - back_at
        await shared.close()

        primary.default = hung
        without = await timed_turns(client(None), min(turns, 5))
        for provider in providers.values():
            await provider.close()
    await redis.flushdb()
    await redis.aclose()
    if embedded is not None:
        await embedded.stop()

    base = statistics.median(baseline)
    print(
        f"failover: primary hung (firstTokenSeconds {first_token_s:g}), fallback answers in ~50 ms"
    )
    print(f"  baseline (fallback alone)       median {base:7.1f} ms per turn")
    print("  turns during the outage          first turn   later turns: added over baseline")
    print("                                   (ms)         median      p99       max (ms)")
    for name, spent in (("with the shared breaker", with_breaker), ("without a breaker", without)):
        added = sorted(t - base for t in spent[1:])
        p99 = added[min(len(added) - 1, round(0.99 * (len(added) - 1)))]
        print(
            f"  {name:<32} {spent[0]:9.1f}   {statistics.median(added):9.1f} {p99:9.1f}"
            f" {max(added):9.1f}   ({len(spent)} turns)"
        )
    print(f"  primary back: serving again after {recovered_s:.2f} s (cooldown {cooldown:g} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument(
        "--first-token", type=float, default=2.0, help="the primary's firstTokenSeconds"
    )
    parser.add_argument("--cooldown", type=float, default=5.0, help="breaker cooldown seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as workdir:
        asyncio.run(run(args.turns, args.first_token, args.cooldown, Path(workdir)))


if __name__ == "__main__":
    main()

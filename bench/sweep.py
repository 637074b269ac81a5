"""What the workers' sweep (bot.wakeups.Sweeper) costs as the keyspace grows.

One worker per period (two leases: 60 s by default) SCANs the whole keyspace for inboxes and
left batches whose wake-up was lost. This fills a private embedded Redis with the keys a busy
gateway holds (per conversation: turns, summary, base, model choice; per message of the last
24 h: a dedupe marker), leaves 10 conversations with waiting messages and no wake-up, and times
one sweep: wall time, the Redis CPU it used (INFO cpu) and the SCAN calls it took. Redis is
single-threaded, so the CPU is time other commands waited, spread over the sweep's calls.

    python -m bench.sweep --keys 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.readystream import node_cpu
from bot.intake import READY_STREAM, inbox_key
from bot.logs import make_logger
from bot.memory import conversation_key
from bot.redisdb import EmbeddedRedis
from bot.wakeups import Sweeper, ensure_group

LOST = 10  # conversations with waiting messages and no wake-up
PER_CONVERSATION = ("turns", "summary", "base", "model")
SEEN_PER_CONVERSATION = 6  # dedupe markers: messages of the last 24 h


async def fill(redis: aioredis.Redis, keys: int) -> int:
    """About `keys` keys shaped like a gateway's; the number of conversations."""
    per = len(PER_CONVERSATION) + SEEN_PER_CONVERSATION
    conversations = max(LOST, keys // per)
    for start in range(0, conversations, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + 2000, conversations)):
                conversation = f"whatsapp:+1555{n:07d}"
                for part in PER_CONVERSATION:
                    pipe.set(conversation_key(conversation, part), "x")
                for m in range(SEEN_PER_CONVERSATION):
                    pipe.set(conversation_key(conversation, f"seen:whatsapp:SM{n}-{m}"), "1")
            await pipe.execute()
    for n in range(LOST):
        await redis.rpush(inbox_key(f"whatsapp:+1555{n:07d}"), "{}")
    return conversations


async def server_cpu(redis: aioredis.Redis) -> float:
    return (await node_cpu(redis, cluster=False))["server"]


async def scans(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def measure(url: str, keys: int) -> tuple[int, int, float, float, int, int]:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await redis.flushall()
        await ensure_group(redis)
        conversations = await fill(redis, keys)
        total = int(await redis.dbsize())
        sweeper = Sweeper(
            redis, name="bench", every=60, log=make_logger(level="error", stream=io.StringIO())
        )
        cpu_before, scans_before = await server_cpu(redis), await scans(redis)
        started = time.perf_counter()
        woken = await sweeper.sweep(force=True)
        wall = time.perf_counter() - started
        cpu_used = await server_cpu(redis) - cpu_before
        calls = await scans(redis) - scans_before
        queued = await redis.xlen(READY_STREAM)
        if woken != LOST or queued != LOST:
            raise SystemExit(f"the sweep woke {woken} ({queued} queued), expected {LOST}")
        return total, conversations, wall, cpu_used, calls, woken
    finally:
        await redis.aclose()


async def run(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        await server.start()
        try:
            rows = [await measure(server.url, size) for size in sizes]
        finally:
            await server.stop()
    print("one sweep (force), private embedded Redis; 10 conversations had lost wake-ups")
    print(f"{'keys':>10}{'conversations':>15}{'wall ms':>10}{'Redis CPU ms':>14}{'SCANs':>8}")
    for total, conversations, wall, used, calls, _ in rows:
        print(f"{total:>10,}{conversations:>15,}{wall * 1000:>10.0f}{used * 1000:>14.0f}{calls:>8}")
    print("every two lease periods (60 s by default), by one worker of the deployment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10000,100000,1000000", help="keyspace sizes, comma list")
    args = parser.parse_args()
    asyncio.run(run([int(k) for k in args.keys.split(",")]))


if __name__ == "__main__":
    main()

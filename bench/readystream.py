"""What the one `switchboard:ready` stream costs the Redis node that holds it, per message.

Every message is one XADD on the ready stream (intake) and, batched, one XREADGROUP and one
ACK_OWNED script (one XPENDING, XACK and XDEL per batch) by a worker; everything else a turn
does is on its conversation's slot. This drives exactly that path (`RedisIntake.accept` for N
conversations, consumers reading and acking as `Worker` does) and reads each node's CPU (INFO
cpu) before and after, so the ready stream's node can be compared with the others: CPU µs per
message on that node bounds the messages/s one stream can carry (a Redis node is single-
threaded).

    REDIS_URL=redis://127.0.0.1:7000 REDIS_CLUSTER=true python -m bench.readystream --seconds 10

With REDIS_CLUSTER unset, REDIS_URL is one plain server (the whole path then runs on it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bot.intake import READY_STREAM, RedisIntake
from bot.logs import make_logger
from bot.messages import InboundMessage
from bot.redisdb import connect
from bot.wakeups import GROUP, ensure_group, queue_acks


async def node_cpu(redis: aioredis.Redis, cluster: bool) -> dict[str, float]:
    """CPU seconds (user + sys of the main thread's process) each node has used."""
    if cluster:
        found: dict[str, float] = {}
        for node in cast("RedisCluster", redis).get_primaries():
            info = await cast("RedisCluster", redis).info("cpu", target_nodes=node)
            found[node.name] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return found
    info = await redis.info("cpu")
    return {"server": float(info["used_cpu_user"]) + float(info["used_cpu_sys"])}


def ready_node(redis: aioredis.Redis, cluster: bool) -> str:
    if not cluster:
        return "server"
    client = cast("RedisCluster", redis)
    return str(client.get_node_from_key(READY_STREAM).name)


async def produce(intake: RedisIntake, who: int, until: float, counter: list[int]) -> None:
    n = 0
    while time.monotonic() < until:
        conversation = f"whatsapp:+1555{(who * 7919 + n) % 10_000:07d}"
        message = InboundMessage(
            channel="whatsapp", conversation=conversation, sender=conversation,
            text="hello", platform_id=f"SM{who}-{n}", ts=time.time(),
        )  # fmt: skip
        await intake.accept(message)
        n += 1
        counter[0] += 1


async def consume(
    redis: aioredis.Redis, name: str, until: float, counter: list[int], batch: int
) -> None:
    done: list[str] = []
    while time.monotonic() < until + 1:
        async with redis.pipeline(transaction=False) as pipe:
            queue_acks(pipe, name, done)
            pipe.xreadgroup(GROUP, name, {READY_STREAM: ">"}, count=batch, block=200)
            replies: list[Any] = await pipe.execute()
        done = [entry_id for _, entries in replies[-1] or [] for entry_id, _ in entries]
        counter[0] += len(done)
        if not done and time.monotonic() > until:
            return


async def main(seconds: float, producers: int, consumers: int, batch: int) -> None:
    url = os.environ["REDIS_URL"]
    cluster = os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes")
    redis = connect(url, cluster=cluster, socket_timeout=10)
    try:
        await redis.delete(READY_STREAM)
        await ensure_group(redis)
        intake = RedisIntake(redis, log=make_logger(stream=io.StringIO(), as_json=True))
        before = await node_cpu(redis, cluster)
        started = time.monotonic()
        until = started + seconds
        accepted, acked = [0], [0]
        await asyncio.gather(
            *(produce(intake, p, until, accepted) for p in range(producers)),
            *(consume(redis, f"c{c}", until, acked, batch) for c in range(consumers)),
        )
        elapsed = time.monotonic() - started
        after = await node_cpu(redis, cluster)
        ready = ready_node(redis, cluster)
        print(f"{accepted[0]} messages accepted, {acked[0]} acked in {elapsed:.1f} s "
              f"({accepted[0] / seconds:.0f}/s offered by this one client process)")  # fmt: skip
        for name, cpu in after.items():
            used = cpu - before[name]
            per = used / max(1, accepted[0]) * 1e6
            role = "ready stream + conversations" if name == ready else "conversations"
            print(
                f"  node {name} ({role}): {used:.2f} CPU s, {per:.1f} µs/message, "
                f"{used / elapsed * 100:.0f}% of a core; ceiling ≈ {1e6 / per:,.0f} messages/s"
            )
        if cluster:
            others = [after[n] - before[n] for n in after if n != ready]
            extra = (after[ready] - before[ready]) - sum(others) / len(others)
            per = extra / max(1, accepted[0]) * 1e6
            print(
                f"  the ready stream alone (its node minus the others' mean): {per:.1f} µs/message;"
                f" one stream ≈ {1e6 / max(per, 0.01):,.0f} messages/s on a full core"
            )
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="entries per read (maxConcurrent)")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.producers, args.consumers, args.batch))

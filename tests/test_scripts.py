"""The Script helper: a bound script that reloads itself, and a pipelined one that costs no extra
round trip."""

from __future__ import annotations

import redis.asyncio as aioredis

from bot.scripts import Script, ScriptRedis
from tests.helpers import command_calls

# KEYS: a counter. ARGV: step. → the counter after the step.
BUMP = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


async def script_commands(redis: aioredis.Redis) -> dict[str, int]:
    """Calls so far of EVAL, EVALSHA and SCRIPT (its subcommands together: Redis 6 counts
    them as one), from INFO commandstats (of every primary, summed, on a cluster)."""
    calls: dict[str, int] = {}
    for name, n in (await command_calls(redis)).items():
        command = name.split("|")[0]
        if command in ("eval", "evalsha", "script"):
            calls[command] = calls.get(command, 0) + n
    return calls


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved, and by how much."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def test_a_bound_script_runs_and_survives_a_script_flush(
    redis_client: aioredis.Redis,
) -> None:
    """`on(redis)` runs the script by its hash, and after SCRIPT FLUSH (a Redis restarted empty)
    loads it again on NOSCRIPT instead of failing."""
    bump = BUMP.on(redis_client)
    assert await bump(keys=["n"], args=[2]) == 2
    await redis_client.script_flush()
    before = await script_commands(redis_client)
    assert await bump(keys=["n"], args=[3]) == 5
    assert grew(before, await script_commands(redis_client)) == {
        "evalsha": 2,  # refused (NOSCRIPT), then run
        "script": 1,  # LOAD
    }


async def test_a_queued_script_is_one_eval_in_the_pipeline(redis_client: aioredis.Redis) -> None:
    """`queue` puts the script in a pipeline as EVAL, its reply in its place, with no SCRIPT
    EXISTS first (which a registered script in a pipeline sends, as shown alongside)."""
    before = await script_commands(redis_client)
    async with redis_client.pipeline(transaction=False) as pipe:
        pipe.set("n", 10)
        BUMP.queue(pipe, ["n"], [5])
        pipe.get("n")
        replies = await pipe.execute()
    assert replies == [True, 15, "15"]
    assert grew(before, await script_commands(redis_client)) == {"eval": 1}

    before = await script_commands(redis_client)
    async with redis_client.pipeline(transaction=False) as pipe:
        await BUMP.on(redis_client)(keys=["n"], args=[1], client=pipe)
        assert await pipe.execute() == [16]
    assert grew(before, await script_commands(redis_client)) == {
        "script": 1,  # EXISTS, a round trip before the pipeline's
        "evalsha": 1,
    }


async def test_a_bound_script_reloads_on_every_node_of_a_cluster(
    cluster_client: aioredis.Redis,
) -> None:
    """On Redis Cluster, the bound script finds its key's node, and after every primary's
    script cache was flushed it loads itself again and runs."""
    bump = BUMP.on(cluster_client)
    keys = [f"n{i}" for i in range(12)]  # spread over the three primaries
    for key in keys:
        assert await bump(keys=[key], args=[1]) == 1
    await cluster_client.script_flush()
    for key in keys:
        assert await bump(keys=[key], args=[2]) == 3


async def test_a_script_redis_pipeline_sends_the_hash_and_recovers_a_lost_script(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    """The gateway's client (ScriptRedis, what bot.redisdb.connect makes) queues a script as
    EVALSHA; after SCRIPT FLUSH (a Redis restarted) the calls Redis refused are run once more
    after one SCRIPT LOAD, each script's effect happening exactly once, the plain commands'
    replies kept in their places. `by_source` still sends EVAL."""
    client = ScriptRedis.from_url(redis_url, decode_responses=True)
    try:
        await redis_client.script_load(BUMP.source)  # whatever ran before
        before = await script_commands(redis_client)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("n", 10)
            BUMP.queue(pipe, ["n"], [5])
            BUMP.queue(pipe, ["n"], [1], by_source=True)
            replies = await pipe.execute()
        assert replies == [True, 15, 16]
        assert grew(before, await script_commands(redis_client)) == {"evalsha": 1, "eval": 1}

        await redis_client.script_flush()
        before = await script_commands(redis_client)
        async with client.pipeline(transaction=False) as pipe:
            BUMP.queue(pipe, ["n"], [1])
            pipe.incr("m")
            BUMP.queue(pipe, ["n"], [2])
            replies = await pipe.execute()
        assert replies == [17, 1, 19]
        assert await redis_client.get("n") == "19"
        assert await redis_client.get("m") == "1"
        assert grew(before, await script_commands(redis_client)) == {
            "evalsha": 4,  # two refused (NOSCRIPT), the same two run again
            "script": 1,  # one LOAD for the one script
        }
    finally:
        await client.aclose()


async def test_a_cluster_pipeline_sends_the_hash_and_recovers_a_lost_script(
    cluster_client: aioredis.Redis,
) -> None:
    """On Redis Cluster (bot.redisdb.connect's cluster client) a pipeline's scripts go as
    EVALSHA too, whichever node their keys live on; after every primary's script cache was
    flushed the refused calls run once more after the script is loaded on every primary, each
    effect happening exactly once, the plain commands' replies kept in their places."""
    keys = [f"n{i}" for i in range(12)]  # spread over the three primaries
    await cluster_client.script_load(BUMP.source)  # on every primary, whatever ran before
    before = await script_commands(cluster_client)
    async with cluster_client.pipeline(transaction=False) as pipe:
        for key in keys:
            BUMP.queue(pipe, [key], [1])
        replies = await pipe.execute()
    assert replies == [1] * len(keys)
    assert grew(before, await script_commands(cluster_client)) == {"evalsha": len(keys)}

    await cluster_client.script_flush()
    before = await script_commands(cluster_client)
    async with cluster_client.pipeline(transaction=False) as pipe:
        for key in keys:
            BUMP.queue(pipe, [key], [2])
            pipe.incr(f"m{key}")
        replies = await pipe.execute()
    assert replies == [3, 1] * len(keys)
    assert [await cluster_client.get(key) for key in keys] == ["3"] * len(keys)
    assert grew(before, await script_commands(cluster_client)) == {
        "evalsha": 2 * len(keys),  # every call refused once (NOSCRIPT), then run
        "script": 3,  # one LOAD, on each of the three primaries
    }

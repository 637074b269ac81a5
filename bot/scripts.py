"""Lua scripts: each one a module constant beside the code that runs it, and the two ways to run
one (on its own, or inside a pipeline) chosen here once.

In a pipeline a script goes as EVALSHA (40 bytes) where the pipeline `sends_hashes`: this
module's `ScriptPipeline` (bot.redisdb.connect's client for one server) or bot.redisdb's cluster
pipeline, neither a transaction. Such a pipeline loads a script Redis does not know (after a
restart, or SCRIPT FLUSH) and runs again the calls that failed so, in their order, the others'
replies kept. Elsewhere (a test's plain client, a transaction) it goes as EVAL with its source.
EVAL makes Redis hash the source on every call and the client pack it: bench.redisload measured
12 % more Redis CPU a turn that way."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT


class Script:
    """A Lua script, run atomically by Redis.

    `on(redis)` gives the script to call on its own: EVALSHA (only the hash travels), loading
    the script on NOSCRIPT (on Redis Cluster, on every primary) and trying again.

    `queue(pipe, keys, args)` adds it to a pipeline: as EVALSHA where the pipeline `sends_hashes`
    (it loads a script Redis lost and runs the failed calls again: see `refused`), else as EVAL
    with its source
    (redis-py's own way, a registered script in a pipeline, first costs a round trip of its
    own: SCRIPT EXISTS, to load it if missing). `by_source=True`: EVAL always, for a call that
    must not be run again after the pipeline's later commands (see ScriptPipeline).
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _SOURCES[self.sha] = source

    def on(self, redis: aioredis.Redis) -> AsyncScript:
        """The script bound to a client (plain or cluster): `await bound(keys=…, args=…)`."""
        return redis.register_script(self.source)

    def queue(
        self,
        pipe: Pipeline,
        keys: Sequence[KeyT],
        args: Iterable[EncodableT] = (),
        *,
        by_source: bool = False,
    ) -> None:
        """Queue one call in `pipe`; its reply is the pipeline's reply at that place."""
        if not by_source and getattr(pipe, "sends_hashes", False):
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        else:
            pipe.eval(self.source, len(keys), *keys, *args)


_SOURCES: dict[str, str] = {}  # every Script's source by its SHA1


def refused(queued: Sequence[tuple[Sequence[Any], Any]], replies: Sequence[Any]) -> list[int]:
    """The places, among a pipeline's `queued` commands (each its arguments, the command's name
    first, and its options) and their `replies`, of the EVALSHAs of a Script refused with
    NOSCRIPT (nothing ran).

    A pipeline whose `sends_hashes` is true (ScriptPipeline, bot.redisdb's cluster pipeline; not
    a transaction) takes scripts as EVALSHA (Script.queue) and runs those calls again once their
    scripts are loaded (`sources`), in their order, in a second round trip. Only the calls that
    failed run again: the other commands ran once, their replies are kept. So a script must not
    depend on a plain command queued after it in the same pipeline having not run yet (intake's
    message and its wake-up: ACCEPT goes `by_source`)."""
    return [
        i
        for i, reply in enumerate(replies)
        if isinstance(reply, NoScriptError) and str(queued[i][0][1]) in _SOURCES
    ]


def sources(queued: Sequence[tuple[Sequence[Any], Any]], failed: Iterable[int]) -> list[str]:
    """The sources of the scripts the `failed` calls of `queued` (see `refused`) ran, each once."""
    return [_SOURCES[sha] for sha in dict.fromkeys(str(queued[i][0][1]) for i in failed)]


def raise_first_error(replies: Sequence[Any]) -> None:
    """Raise the first error among a pipeline's replies, as `execute()` does by default."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


class ScriptPipeline(Pipeline):
    """The pipeline of one Redis server: scripts as EVALSHA when not a transaction (`refused`)."""

    @property
    def sends_hashes(self) -> bool:
        return not self.is_transaction

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)
        replies = await super().execute(raise_on_error=False)
        failed = refused(stack, replies)
        if failed:
            # A plain pipeline: if Redis still refuses (it would not load them), that is the
            # reply, not another round of loading.
            again = Pipeline(self.connection_pool, self.response_callbacks, False, None)
            for text in sources(stack, failed):
                again.script_load(text)
            for i in failed:
                args, options = stack[i]
                again.execute_command(*args, **options)
            retried = await again.execute(raise_on_error=False)
            for i, reply in zip(failed, retried[-len(failed) :], strict=True):
                replies[i] = reply
        if raise_on_error:
            raise_first_error(replies)
        return replies


async def load_scripts(redis: aioredis.Redis) -> None:
    """Put every script this process knows into Redis's cache (every primary's, on a cluster),
    so that its pipelines' first EVALSHAs are not refused: a worker does this when it starts and
    when it finds Redis restarted empty. One round trip on one server; one per script (each to
    every primary, together) on a cluster."""
    if isinstance(redis, RedisCluster):  # its SCRIPT LOAD goes to every primary
        await asyncio.gather(*(redis.script_load(text) for text in _SOURCES.values()))
        return
    async with redis.pipeline(transaction=False) as pipe:
        for text in _SOURCES.values():
            pipe.script_load(text)
        await pipe.execute()


class ScriptRedis(aioredis.Redis):
    """A client for one Redis server whose pipelines are ScriptPipelines."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return ScriptPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )

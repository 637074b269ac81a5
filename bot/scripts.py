"""Lua scripts: each one a module constant beside the code that runs it, and the two ways to run
one (on its own, or inside a pipeline) chosen here once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, KeyT


class Script:
    """A Lua script, run atomically by Redis.

    `on(redis)` gives the script to call on its own: EVALSHA (only the hash travels), loading
    the script on NOSCRIPT (on Redis Cluster, on every primary) and trying again.

    `queue(pipe, keys, args)` adds it to a pipeline as EVAL, with its source. Not EVALSHA:
    a registered script in a pipeline first costs a round trip of its own (SCRIPT EXISTS, to
    load it if missing), which would double the pipeline's cost. Redis caches an EVAL'd script
    by its hash, so the source is compiled once, and a Redis that restarted empty needs no
    SCRIPT LOAD.
    """

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def on(self, redis: aioredis.Redis) -> AsyncScript:
        """The script bound to a client (plain or cluster): `await bound(keys=…, args=…)`."""
        return redis.register_script(self.source)

    def queue(self, pipe: Pipeline, keys: Sequence[KeyT], args: Iterable[EncodableT] = ()) -> None:
        """Queue one call in `pipe`; its reply is the pipeline's reply at that place."""
        pipe.eval(self.source, len(keys), *keys, *args)

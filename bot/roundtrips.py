"""Group commit: the round trips that a process's tasks start in one event-loop iteration, sent
to Redis as one non-transactional pipeline, each caller getting its own replies.

Under load several turns reach their commit (or their reply's last ADVANCE) in the same
iteration; each used to make a round trip of its own, and on one Redis every round trip costs
a read and a write system call on both sides, whatever it carries. Here the first caller of an
iteration starts the flush as a task (its first step runs in the next iteration, once every task
of this one has run: no timer, no added wait), and every caller of the iteration joins it:

    replies = await coalescer_for(redis).run(lambda pipe: COMMIT.queue(pipe, keys, args))

A caller's commands stay together and in its order; its replies are those of its own commands,
an error among them a value (as `execute(raise_on_error=False)`); a connection error fails every
caller of that flush, as each would have failed on its own. Scripts go as `Script.queue` puts
them: an EVALSHA that Redis refuses (NOSCRIPT) runs again after the other callers' commands
(bot.scripts.ScriptPipeline), so a caller whose script must not queues it `by_source`. A
cluster client's pipelines split by node: there each caller keeps its own.

Adds that every turn makes to the same keys (each model's day of usage, the index of active
conversations: hot keys, one per deployment) are summed over a flush, not sent once a caller: a
caller asks `tally(pipe, key, make)` for the flush's accumulator (a `Tally`) and adds to it; the
flush queues each accumulator once, after every caller's commands, and hands it its replies. A
caller's adds join the flush's only once its whole queueing succeeded, so a caller that sends
nothing adds nothing. They go in the same round trip as the callers' own commands: a crash loses
them only with those commands.

Used for a turn's COMMIT (with its usage writes) and its reply's ADVANCE/FINISH. Not intake's
ACCEPT: waiting for the next iteration added to the webhook's ack latency and the gateway's CPU
per reply at 200/s on a 2-core VM (issue 28, measured), where commits rarely coincide anyway.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Protocol, Self, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from bot.reads import Write


class Tally(Protocol):
    """Adds to keys that many callers write, summed over one flush (see the module's doc)."""

    def merge(self, other: Self) -> None:
        """Add another caller's adds (of the same key) to these."""

    def queue(self, pipe: Pipeline) -> int:
        """Queue the summed adds on `pipe`; how many commands."""

    def settle(self, replies: list[Any]) -> None:
        """The replies of those commands (errors as values, a connection error in each)."""


T = TypeVar("T", bound=Tally)


class _Caller:
    __slots__ = ("count", "future", "start")

    def __init__(self, future: asyncio.Future[list[Any]], start: int, count: int) -> None:
        self.future = future
        self.start = start
        self.count = count


class Coalescer:
    """One client's shared round trip per event-loop iteration (see the module's doc)."""

    __slots__ = (
        "__weakref__",
        "_callers",
        "_pipe",
        "_staged",
        "_tallies",
        "_tasks",
        "redis",
        "trips",
    )

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._pipe: Pipeline | None = None
        self._callers: list[_Caller] = []
        self._tallies: dict[Hashable, Tally] = {}  # the flush's, summed
        self._staged: dict[Hashable, Tally] | None = None  # the queueing caller's
        self._tasks: set[asyncio.Task[None]] = set()
        self.trips = 0  # round trips sent (tests and benchmarks read it)

    async def run(self, queue: Write) -> list[Any]:
        """Queue a caller's commands with `queue(pipe)`; their replies (errors as values) once
        the iteration's shared pipeline has run."""
        if isinstance(self.redis, RedisCluster):  # its pipelines split by node: its own trip
            async with self.redis.pipeline(transaction=False) as pipe:
                queue(pipe)
                return list(await pipe.execute(raise_on_error=False))
        loop = asyncio.get_running_loop()
        if self._pipe is None:
            self._pipe = self.redis.pipeline(transaction=False)
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pipe = self._pipe
        start = len(pipe.command_stack)
        self._staged = {}
        try:
            queue(pipe)
        except BaseException:
            del pipe.command_stack[start:]  # nothing of a caller that failed to queue goes out
            raise
        else:
            for key, adds in self._staged.items():
                if key in self._tallies:
                    self._tallies[key].merge(adds)
                else:
                    self._tallies[key] = adds
        finally:
            self._staged = None
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._callers.append(_Caller(future, start, len(pipe.command_stack) - start))
        return await future

    def tally(self, pipe: Pipeline, key: Hashable, make: Callable[[], T]) -> T | None:
        """The accumulator `key` (made by `make` at its first use) of the flush that `pipe`
        belongs to, for the caller queueing on it now; None when `pipe` is no flush's (a
        caller's own pipeline): that caller queues its adds itself."""
        if self._staged is None or pipe is not self._pipe:
            return None
        found = self._staged.get(key)
        if found is None:
            found = self._staged[key] = make()
        return found  # type: ignore[return-value]

    async def _flush(self) -> None:
        pipe, callers, tallies = self._pipe, self._callers, self._tallies
        self._pipe, self._callers, self._tallies = None, [], {}
        assert pipe is not None
        if not callers:
            return
        counted: list[tuple[Tally, int, int]] = []  # each tally, its first command, how many
        try:
            for tally in tallies.values():
                counted.append((tally, len(pipe.command_stack), tally.queue(pipe)))
            async with pipe:
                self.trips += 1
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for caller in callers:
                if not caller.future.done():
                    caller.future.set_exception(exc)
            for tally, _, count in counted:
                tally.settle([exc] * count)
            if not isinstance(exc, Exception):
                raise
            return
        for caller in callers:
            if not caller.future.done():
                caller.future.set_result(replies[caller.start : caller.start + caller.count])
        for tally, start, count in counted:
            tally.settle(replies[start : start + count])


_COALESCERS: weakref.WeakKeyDictionary[aioredis.Redis, Coalescer] = weakref.WeakKeyDictionary()


def coalescer_for(redis: aioredis.Redis) -> Coalescer:
    """The one Coalescer of `redis`: every component of a process shares its round trips."""
    found = _COALESCERS.get(redis)
    if found is None:
        found = _COALESCERS[redis] = Coalescer(redis)
    return found

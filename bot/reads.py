"""Reads of several components in one Redis round trip.

A component that is read at the start of every turn offers a `Read`: the commands to queue
on a pipeline and how their replies become its value. `read_together` sends the reads of
several components as one non-transactional pipeline (each read that needs to be atomic is a
single command: a script), so a turn pays one round trip instead of one per component.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
F = TypeVar("F")


@dataclass(frozen=True, slots=True)
class Read(Generic[A]):
    """`queue` adds exactly `count` commands to a pipeline; `decode` turns their replies
    (in order) into the value."""

    queue: Callable[[Pipeline], None]
    count: int
    decode: Callable[[list[Any]], A]

    @staticmethod
    def value(value: A) -> Read[A]:
        """A read that needs no command: `value` as it is."""
        return Read(queue=lambda _: None, count=0, decode=lambda _: value)

    @staticmethod
    def each(reads: list[Read[A]]) -> Read[list[A]]:
        """Several reads of one kind as one: their values in order."""

        def queue(pipe: Pipeline) -> None:
            for read in reads:
                read.queue(pipe)

        def decode(replies: list[Any]) -> list[A]:
            values, start = [], 0
            for read in reads:
                values.append(read.decode(replies[start : start + read.count]))
                start += read.count
            return values

        return Read(queue=queue, count=sum(r.count for r in reads), decode=decode)


@overload
async def read_together(redis: aioredis.Redis, a: Read[A], /, *, what: str = ...) -> tuple[A]: ...
@overload
async def read_together(
    redis: aioredis.Redis, a: Read[A], b: Read[B], /, *, what: str = ...
) -> tuple[A, B]: ...
@overload
async def read_together(
    redis: aioredis.Redis, a: Read[A], b: Read[B], c: Read[C], /, *, what: str = ...
) -> tuple[A, B, C]: ...
@overload
async def read_together(
    redis: aioredis.Redis, a: Read[A], b: Read[B], c: Read[C], d: Read[D], /, *, what: str = ...
) -> tuple[A, B, C, D]: ...
@overload
async def read_together(
    redis: aioredis.Redis, a: Read[A], b: Read[B], c: Read[C], d: Read[D], e: Read[E], /, *,
    what: str = ...,
) -> tuple[A, B, C, D, E]: ...  # fmt: skip
@overload
async def read_together(
    redis: aioredis.Redis, a: Read[A], b: Read[B], c: Read[C], d: Read[D], e: Read[E],
    f: Read[F], /, *, what: str = ...,
) -> tuple[A, B, C, D, E, F]: ...  # fmt: skip
async def read_together(
    redis: aioredis.Redis, *reads: Read[Any], what: str = "reading the conversation"
) -> tuple[Any, ...]:
    """Every read's value, fetched in one round trip; StoreUnavailable (naming `what` was
    being read) if Redis fails."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for read in reads:
                read.queue(pipe)
            replies = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis did not answer while {what}: {exc}") from exc
    return tuple(Read.each(list(reads)).decode(replies))

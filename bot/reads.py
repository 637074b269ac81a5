"""A turn's one round trip: the reads of several components sent to Redis together.

A component read at the start of every turn offers a `Read`: the commands to queue on a
pipeline and how their replies become its value. A `RoundTrip` collects the reads a turn needs
and sends them as one non-transactional pipeline (a read that must be atomic is a single
command: a script), so the turn pays one round trip instead of one per component:

    trip = RoundTrip(redis, what="reading the conversation")
    choice = trip.add(choices.read_current(conversation))
    state = trip.add(memory.read_state(conversation))
    await trip.run()
    choice.value, state.value
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable

A = TypeVar("A")
B = TypeVar("B")

# Reads that `execute_sharing` may send once for several identical copies in one pipeline.
SHARED_READS = frozenset({"GET", "HGETALL", "HMGET"})

# A write queued on a caller's pipeline (one or more commands, whose replies the caller ignores
# or reads): how a component's writes ride in a round trip another component makes anyway.
Write = Callable[[Pipeline], None]


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

    def then(self, f: Callable[[A], B]) -> Read[B]:
        """The same commands, their value passed through `f`."""
        return Read(queue=self.queue, count=self.count, decode=lambda r: f(self.decode(r)))

    def plus(self, other: Read[B]) -> Read[tuple[A, B]]:
        """Both reads' commands, one after the other, and both values."""

        def queue(pipe: Pipeline) -> None:
            self.queue(pipe)
            other.queue(pipe)

        def decode(replies: list[Any]) -> tuple[A, B]:
            return self.decode(replies[: self.count]), other.decode(replies[self.count :])

        return Read(queue=queue, count=self.count + other.count, decode=decode)


class Kept(Generic[A]):
    """A value a busy process reads with a turn's other state at most every `every` seconds
    (by `clock`), not every turn: in between, `read` gives it as last read, or as this process
    last wrote it (`keep`), with no command; after `forget`, the next read goes to Redis. Another
    process's change is seen up to `every` late, as by a turn that started that much earlier."""

    __slots__ = ("_at", "clock", "every", "value")

    def __init__(
        self, value: A, *, every: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.value = value
        self.every = every
        self.clock = clock
        self._at = -math.inf  # when (clock) the value was last read or kept

    def read(self, read: Read[A]) -> Read[A]:
        """The kept value while it is fresh, else `read`, whose value is then kept."""
        if 0 <= self.clock() - self._at < self.every:
            return Read.value(self.value)
        return read.then(self.keep)

    def keep(self, value: A) -> A:
        """`value` as read now, or as this process just wrote it."""
        self.value, self._at = value, self.clock()
        return value

    def forget(self) -> None:
        """The next read goes to Redis (this process changed what is there)."""
        self._at = -math.inf


class Fetched(Generic[A]):
    """One read added to a RoundTrip: its value, once the trip has run."""

    __slots__ = ("_done", "_value", "read")

    def __init__(self, read: Read[A]) -> None:
        self.read = read
        self._done = False

    @property
    def value(self) -> A:
        if not self._done:
            raise RuntimeError("a read's value was asked for before its round trip ran")
        return self._value

    def _decode(self, replies: list[Any]) -> None:
        self._value = self.read.decode(replies)
        self._done = True


class RoundTrip:
    """Reads sent to Redis in one pipeline; StoreUnavailable (naming `what` was being read) if
    Redis fails."""

    __slots__ = ("_fetched", "redis", "what")

    def __init__(self, redis: aioredis.Redis, *, what: str = "reading the conversation") -> None:
        self.redis = redis
        self.what = what
        self._fetched: list[Fetched[Any]] = []

    def add(self, read: Read[A]) -> Fetched[A]:
        """Include `read` in the trip; its value is on the handle once the trip has run."""
        fetched = Fetched(read)
        self._fetched.append(fetched)
        return fetched

    async def run(self) -> None:
        """Send every read's commands at once, then decode each read's replies."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for fetched in self._fetched:
                    fetched.read.queue(pipe)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer while {self.what}: {exc}") from exc
        start = 0
        for fetched in self._fetched:
            end = start + fetched.read.count
            fetched._decode(replies[start:end])
            start = end


async def fetch(redis: aioredis.Redis, read: Read[A], *, what: str) -> A:
    """One read's value, in a round trip of its own."""
    trip = RoundTrip(redis, what=what)
    fetched = trip.add(read)
    await trip.run()
    return fetched.value


async def execute_sharing(pipe: Pipeline) -> list[Any]:
    """`pipe.execute(raise_on_error=False)`, with a read repeated in the pipeline sent once and
    its reply given to every copy: what a worker's claim of several conversations reads for
    each (the default model, each model's breaker). A read is shared only when it is a GET,
    HGETALL or HMGET and no other command of the pipeline names its key (a write, a script's
    key), so every copy would have read the same value anyway. A cluster pipeline (no
    `command_stack` of (args, options) pairs) is sent as it is."""
    stack = getattr(pipe, "command_stack", None)
    plan = _shared(stack) if stack is not None else None
    if plan is None:
        return list(await pipe.execute(raise_on_error=False))
    pipe.command_stack, at = plan
    replies = await pipe.execute(raise_on_error=False)
    return [replies[i] for i in at]


def _shared(stack: list[Any]) -> tuple[list[Any], list[int]] | None:
    """The commands of `stack` to send, each shared read once, and where each queued command's
    reply is among theirs; None when nothing is shared (or the stack is not (args, options)
    pairs of comparable arguments)."""
    if not all(isinstance(command, tuple) for command in stack):
        return None
    copies: Counter[tuple[Any, ...]] = Counter()
    touched: set[Any] = set()  # what a command other than a shareable read names
    try:
        for args, _ in stack:
            copies[args] += 1
            touched.update(args[2:] if str(args[0]).upper() in SHARED_READS else args[1:])
    except TypeError:  # an argument that cannot be compared (a bytearray): nothing shared
        return None
    sent: dict[tuple[Any, ...], int] = {}  # a shared read -> its place among what is sent
    kept: list[Any] = []
    at: list[int] = []
    for args, options in stack:
        shared = (
            copies[args] > 1 and str(args[0]).upper() in SHARED_READS and args[1] not in touched
        )
        if shared and args in sent:
            at.append(sent[args])
            continue
        if shared:
            sent[args] = len(kept)
        at.append(len(kept))
        kept.append((args, options))
    return (kept, at) if len(kept) < len(stack) else None

"""Dead letters: turns that failed too often to try again by themselves, kept for an operator.

A batch that keeps failing (MAX_ATTEMPTS takes, counted in Redis on the batch) is moved here by
the worker; `bot dead-letters list|retry ID|drop ID` shows it, puts its messages back at the
front of the conversation's inbox (and wakes a worker), or forgets it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bot.errors import BotError
from bot.intake import READY_MAXLEN, READY_STREAM, inbox_key
from bot.scripts import Script

DEAD_LETTERS = "switchboard:deadletters"
DEAD_LETTERS_MAXLEN = 10_000
MAX_ATTEMPTS = 3
Entries = list[tuple[str, dict[str, str]]]  # XRANGE with decode_responses

# KEYS: inbox. ARGV: message JSON… Put the messages back in front of newer ones, in order.
REQUEUE = Script(
    """
for i = #ARGV, 1, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
return #ARGV
"""
)


class DeadLetterError(BotError):
    """A dead letter that does not exist or cannot be retried; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One turn given up on: its conversation, its batch as stored, and why."""

    id: str
    conversation: str
    batch: str
    attempts: int
    error: str
    messages: str  # the batch's messages field as stored (a JSON array, unless corrupt)
    ts: float

    def to_dict(self) -> dict[str, str]:
        return {
            "conversation": self.conversation,
            "batch": self.batch,
            "attempts": str(self.attempts),
            "error": self.error,
            "messages": self.messages,
            "ts": str(self.ts),
        }

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        return cls(
            id=entry_id,
            conversation=fields.get("conversation", ""),
            batch=fields.get("batch", ""),
            attempts=int(fields.get("attempts") or 0),
            error=fields.get("error", ""),
            messages=fields.get("messages", ""),
            ts=float(fields.get("ts") or 0),
        )

    def message_bodies(self) -> list[str]:
        """Each message as the inbox stores it (JSON), or DeadLetterError if corrupt."""
        try:
            found: Any = json.loads(self.messages)
        except ValueError as exc:
            raise DeadLetterError(
                f"dead letter {self.id}: its messages are not valid JSON; drop it"
            ) from exc
        if not isinstance(found, list):
            raise DeadLetterError(f"dead letter {self.id}: its messages are not a list; drop it")
        return [json.dumps(m, ensure_ascii=False) for m in found]


class RedisDeadLetters:
    """The dead-letter stream: one entry per turn given up on (a global key, like `ready`)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._requeue = REQUEUE.on(redis)

    async def add(
        self, *, conversation: str, batch: str, attempts: int, error: str, messages: str
    ) -> str:
        """Keep a failed batch; its id for `bot dead-letters retry|drop`."""
        letter = DeadLetter(
            id="",
            conversation=conversation,
            batch=batch,
            attempts=attempts,
            error=error,
            messages=messages,
            ts=time.time(),
        )
        fields: dict[Any, Any] = letter.to_dict()
        entry = await self.redis.xadd(
            DEAD_LETTERS, fields, maxlen=DEAD_LETTERS_MAXLEN, approximate=True
        )
        return str(entry)

    async def list(self, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` dead letters."""
        entries = cast("Entries", await self.redis.xrange(DEAD_LETTERS, count=count))
        return [DeadLetter.from_entry(entry_id, fields) for entry_id, fields in entries]

    async def get(self, letter_id: str) -> DeadLetter:
        try:
            entries = cast("Entries", await self.redis.xrange(DEAD_LETTERS, letter_id, letter_id))
        except ResponseError as exc:  # not a stream id
            raise DeadLetterError(
                f"no dead letter {letter_id} (ids look like 1700000000000-0)"
            ) from exc
        if not entries:
            raise DeadLetterError(f"no dead letter {letter_id}")
        return DeadLetter.from_entry(*entries[0])

    async def retry(self, letter_id: str) -> DeadLetter:
        """Put the letter's messages back in front of its conversation's inbox, wake a worker,
        and remove the letter. (Two steps across slots: a crash between them leaves the letter,
        and retrying it again would answer those messages twice.)"""
        letter = await self.get(letter_id)
        bodies = letter.message_bodies()
        await self._requeue(keys=[inbox_key(letter.conversation)], args=bodies)
        await self.redis.xadd(
            READY_STREAM,
            {"conversation": letter.conversation},
            maxlen=READY_MAXLEN,
            approximate=True,
        )
        await self.redis.xdel(DEAD_LETTERS, letter_id)
        return letter

    async def drop(self, letter_id: str) -> DeadLetter:
        """Forget a dead letter."""
        letter = await self.get(letter_id)
        await self.redis.xdel(DEAD_LETTERS, letter_id)
        return letter

"""Durable tool results: each model step that called tools is kept with the turn's batch in
Redis (fenced by the lease) before its outputs are fed back, so a worker that takes over after a
crash replays the results instead of running the tools again. The steps live in the batch hash
(`step:<n>` fields), so TAKE already returns them and they go when the batch goes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bot.errors import TurnFenced
from bot.llm.types import ToolStep
from bot.scripts import Script
from bot.wakeups import batch_key, lease_key

STEP_FIELD = "step:"

# KEYS: lease, batch. ARGV: token, batch id, field, step JSON. 1: kept; 0: fenced off (the lease
# is not ours, or the batch is another, or it was committed already).
RECORD_STEP = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'id') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalStep:
    """A tool step as kept: the calls and outputs, and a line per call for the turn's memory."""

    step: ToolStep
    summaries: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {**self.step.to_dict(), "summaries": list(self.summaries)}, ensure_ascii=False
        )

    @classmethod
    def from_json(cls, text: str) -> JournalStep:
        data: dict[str, Any] = json.loads(text)
        summaries = tuple(str(s) for s in data.get("summaries") or ())
        return cls(step=ToolStep.from_dict(data), summaries=summaries)


def steps_in(fields: Mapping[str, str]) -> tuple[JournalStep, ...]:
    """The tool steps kept in a batch's fields, in order."""
    numbered = sorted(
        (int(name.removeprefix(STEP_FIELD)), value)
        for name, value in fields.items()
        if name.startswith(STEP_FIELD) and name.removeprefix(STEP_FIELD).isdigit()
    )
    return tuple(JournalStep.from_json(value) for _, value in numbered)


class RedisToolJournal:
    """One batch's tool steps: those kept by earlier takes (`steps`), and `record` for new ones
    (one round trip each, fenced: TurnFenced when the lease or the batch is no longer ours)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        conversation: str,
        token: str,
        batch_id: str,
        steps: tuple[JournalStep, ...] = (),
    ) -> None:
        self.keys = [lease_key(conversation), batch_key(conversation)]
        self.token = token
        self.batch_id = batch_id
        self.steps = steps
        self._record = RECORD_STEP.on(redis)

    async def record(self, index: int, step: JournalStep) -> None:
        """Keep step `index` (0-based) before its outputs reach the model."""
        args = [self.token, self.batch_id, f"{STEP_FIELD}{index}", step.to_json()]
        if not await self._record(keys=self.keys, args=args):
            raise TurnFenced("the turn's lease was lost while its tools ran")
        self.steps = (*self.steps, step)

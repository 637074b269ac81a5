"""A circuit breaker per model, its state in Redis so every process shares it.

Closed: calls go through. A model that cannot be reached (refused, timed out) opens at
once; one that keeps failing (5xx, 429, auth, unknown) opens after `threshold` failures in a
row within `window` seconds. Open: the model is skipped with no network call for its
cooldown (30 s, doubling after each failed probe, up to 5 min). Then one caller, across all
processes, probes it; a success closes the breaker, a failure opens it again for longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot.errors import Severity
from bot.logs import Logger
from bot.reads import Kept, Read
from bot.scripts import Script


class Decision(StrEnum):
    """What the breaker says of a model before a call (CHECK's reply, or a read of its hash)."""

    CLEAN = "clean"  # closed, with no failure on record: a success has nothing to reset
    CLOSED = "closed"  # call it
    OPEN = "open"  # skip it
    PROBE = "probe"  # call it: this caller tests recovery
    DUE = "due"  # open, cooldown over (read only): `check` decides who probes


CLEAN, CLOSED, OPEN = Decision.CLEAN, Decision.CLOSED, Decision.OPEN
PROBE, DUE = Decision.PROBE, Decision.DUE
# How often a busy process reads the shared breakers (bot.reads.Kept); its own failures,
# successes and probes are seen at once.
READ_EVERY = 0.25

# KEYS: state hash. ARGV: now ms, probe lease ms. → clean | closed | open | probe
CHECK = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'clean' end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return 'closed' end
local now = tonumber(ARGV[1])
if now < tonumber(redis.call('HGET', KEYS[1], 'open_until')) then return 'open' end
if now < tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') then return 'open' end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[2]))
return 'probe'
"""
)

# KEYS: state hash. ARGV: now ms, severity, was probe (0/1), base ms, max ms, window ms,
# threshold, key ttl s. → the new state and the cooldown in ms
FAIL = Script(
    """
local now, severity, probe = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1'
local base, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HGET', KEYS[1], 'state')
local function open(cooldown)
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + cooldown,
    'cooldown', cooldown, 'probe_until', 0, 'failures', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  return {'open', cooldown}
end
if state == 'open' then
  if not probe then return {'open', 0} end
  return open(math.min(tonumber(redis.call('HGET', KEYS[1], 'cooldown')) * 2, cap))
end
if severity == 'down' then return open(base) end
local first = tonumber(redis.call('HGET', KEYS[1], 'first_failure') or '0')
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if now - first > tonumber(ARGV[6]) then first, failures = now, 0 end
failures = failures + 1
if failures >= tonumber(ARGV[7]) then return open(base) end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', failures, 'first_failure', first)
redis.call('EXPIRE', KEYS[1], ARGV[8])
return {'closed', 0}
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerState:
    """One model's breaker as `/status` and metrics show it."""

    model: str
    state: Literal["closed", "open", "half-open"]  # half-open: cooldown over, awaiting a probe
    failures: int
    reopens_in: float  # seconds until a probe is allowed (0 when closed)


def breaker_key(model: str) -> str:
    return f"breaker:{{{model}}}"


def _decision(row: dict[str, str], now: int) -> Decision:
    if not row:
        return CLEAN
    if row.get("state") != OPEN:
        return CLOSED
    if now < int(row.get("open_until") or 0) or now < int(row.get("probe_until") or 0):
        return OPEN
    return DUE


class RedisBreaker:
    """Per-model breakers shared through Redis; Redis trouble never blocks a model."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        log: Logger,
        cooldown_seconds: float = 30,
        max_cooldown_seconds: float = 300,
        window_seconds: float = 60,
        threshold: int = 3,
        probe_seconds: float = 150,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.log = log
        self.base_ms = int(cooldown_seconds * 1000)
        self.max_ms = int(max_cooldown_seconds * 1000)
        self.window_ms = int(window_seconds * 1000)
        self.threshold = threshold
        self.probe_ms = int(probe_seconds * 1000)
        self.ttl_seconds = int(max_cooldown_seconds + window_seconds) * 4
        self.clock = clock
        self._check = CHECK.on(redis)
        self._fail = FAIL.on(redis)
        self._rows: Kept[dict[str, dict[str, str]]] = Kept({}, every=READ_EVERY, clock=clock)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def check(self, model: str) -> Decision:
        """clean or closed (call it), open (skip it) or probe (call it: this caller tests
        recovery). Clean: no failure on record, so a success need not be reported."""
        try:
            result = await self._check(keys=[breaker_key(model)], args=[self._now(), self.probe_ms])
        except (RedisError, OSError) as exc:
            self.log.warning("breaker_unavailable", model=model, error=str(exc))
            return CLOSED
        self._rows.forget()  # asked of a row read as due: it has changed, or this call changed it
        return Decision(result)

    def read_decisions(self, models: list[str]) -> Read[dict[str, Decision]]:
        """What `check` would say of each model, read only: clean, closed, open, or due (the
        cooldown is over: call `check`, which lets one caller probe). From Redis at most every
        READ_EVERY s (a row read since is judged again at the time of asking)."""
        if not all(model in self._rows.value for model in models):
            self._rows.forget()

        def queue(pipe: Pipeline) -> None:
            for model in models:
                pipe.hgetall(breaker_key(model))

        def judge(rows: dict[str, dict[str, str]]) -> dict[str, Decision]:
            now = self._now()
            return {model: _decision(rows[model], now) for model in models}

        read = Read(queue, len(models), lambda rows: dict(zip(models, rows, strict=True)))
        return self._rows.read(read).then(judge)

    async def failure(self, model: str, *, severity: Severity, probe: bool) -> None:
        """Count a failure; opens (or re-opens, for longer) the breaker when it should."""
        if severity in (Severity.EMPTY, Severity.REFUSED):  # the server answered: it is up
            return
        args: list[str | int] = [
            self._now(),
            severity,
            int(probe),
            self.base_ms,
            self.max_ms,
            self.window_ms,
            self.threshold,
            self.ttl_seconds,
        ]
        try:
            state, cooldown_ms = await self._fail(keys=[breaker_key(model)], args=args)
            self._rows.forget()
        except (RedisError, OSError) as exc:
            self.log.warning("breaker_unavailable", model=model, error=str(exc))
            return
        if state == OPEN and int(cooldown_ms):
            self.log.warning(
                "breaker_opened", model=model, cooldown_s=int(cooldown_ms) / 1000, probe=probe
            )

    async def success(self, model: str, *, probe: bool) -> None:
        """A model that answered is healthy: close its breaker and forget its failures."""
        try:
            removed = await self.redis.delete(breaker_key(model))
            if removed:
                self._rows.forget()
        except (RedisError, OSError) as exc:
            self.log.warning("breaker_unavailable", model=model, error=str(exc))
            return
        if removed and probe:
            self.log.info("breaker_closed", model=model)

    async def states(self, models: list[str]) -> list[BreakerState]:
        """Every listed model's breaker, for `/status` and metrics."""
        now = self._now()
        found = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hgetall(breaker_key(model))
            rows = await pipe.execute()
        for model, row in zip(models, rows, strict=True):
            if row.get("state") != OPEN:
                failures = int(row.get("failures", 0))
                found.append(
                    BreakerState(model=model, state="closed", failures=failures, reopens_in=0)
                )
                continue
            wait = max(0, int(row["open_until"]) - now) / 1000
            state: Literal["open", "half-open"] = "open" if wait > 0 else "half-open"
            found.append(BreakerState(model=model, state=state, failures=0, reopens_in=wait))
        return found

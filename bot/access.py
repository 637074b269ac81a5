"""Who may do what: DM policies and allowlists, pairing codes, admins, per-sender rate limits.

Strangers never get a model: under `pairing` an unknown sender gets one reply with a code
that an admin approves; approvals and pending codes live in Redis. The gateway only ever
answers people who wrote first.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot.config import ChannelsConfig, CommandsConfig
from bot.logs import Logger
from bot.messages import InboundMessage
from bot.reads import Read
from bot.scripts import Script

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no I, L, O, 0, 1: nothing to misread
CODE_LENGTH = 8
CODE_SECONDS = 3600
MAX_PENDING = 3
Role = Literal["admin", "user", "stranger"]

# KEYS: bucket[, lease]. ARGV: now ms, capacity, refill per ms, ttl s[, lease token].
# → 1 allowed, 0 over the limit (first time in this burst: notify), -1 over, already told;
# 2: nothing spent, the lease given is not held by the token (a claim that did not succeed).
# The bucket is one string, "tokens at-ms[ told]", read with GET (with the lease: MGET) and
# written with one SET EX.
RATE = Script(
    """
local state
if KEYS[2] then  -- the bucket and the lease read together
  local read = redis.call('MGET', KEYS[1], KEYS[2])
  if read[2] ~= ARGV[5] then return 2 end
  state = read[1]
else
  state = redis.call('GET', KEYS[1])
end
local now, capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, at, told = capacity, now, false
if state then
  local t, a, f = string.match(state, '^(%S+) (%S+) ?(%S*)$')
  tokens, at, told = tonumber(t) or capacity, tonumber(a) or now, f == 'told'
end
tokens = math.min(capacity, tokens + (now - at) * rate)
local result = 1
if tokens >= 1 then
  tokens = tokens - 1
  told = false
elseif told then
  result = -1
else
  told = true
  result = 0
end
local value = tostring(tokens) .. ' ' .. string.format('%.0f', now)
if told then value = value .. ' told' end
redis.call('SET', KEYS[1], value, 'EX', ARGV[4])
return result
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """Whether a message may go on, the sender's role, and a reply to send instead, if any."""

    allowed: bool
    role: Role
    reply: str | None = None
    pairing: bool = False  # a stranger to send a pairing code: see RedisAccess.pair


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """What the access check read for a sender on a channel: approved (pairing) and RATE's
    answer (1 for a sender no limit applies to)."""

    channel: str
    sender: str
    approved: bool = False
    rate: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PairingRequest:
    code: str
    channel: str
    sender: str
    name: str | None
    expires: float


def approved_key(channel: str) -> str:
    return f"access:{{{channel}}}:approved"


def pending_key(channel: str) -> str:
    return f"access:{{{channel}}}:pending"


def rate_key(sender: str) -> str:
    """The sender's rate bucket (a string: RATE). In the sender's slot, which is a private
    chat's: a claim's prefetch spends from it in the lease's script call. Named apart from the
    hash an earlier version kept at `rate:{sender}`, which expires on its own."""
    return f"rate:{{{sender}}}:bucket"


def code_key(code: str) -> str:
    return f"pairing:code:{code}"


class RedisAccess:
    """Access decisions for every channel, backed by Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        channels: ChannelsConfig,
        commands: CommandsConfig,
        rate_per_minute: int,
        log: Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.channels = channels
        self.admins = set(commands.admins)
        self.rate_per_minute = rate_per_minute
        self.log = log
        self.clock = clock

    def role_of(self, sender: str) -> Role:
        """admin (commands.admins, or the local terminal), else user (policy decides later)."""
        return "admin" if sender in self.admins or sender.startswith("console:") else "user"

    def read_check(self, message: InboundMessage) -> Read[Verdict]:
        """May this message reach commands and models? Admins always; others by the channel's
        policy and the rate limit, whose state is read (and the bucket spent) in one round
        trip. A verdict with `pairing` set means the sender needs a pairing code: ask `pair`
        for the reply."""
        read = self.read_sender(message.channel, message.sender)
        return read.then(lambda checked: self.verdict(message, checked))

    def read_sender(
        self, channel: str, sender: str, *, lease: str | None = None, token: str | None = None
    ) -> Read[Checked]:
        """The Redis half of `read_check`, for a message by `sender` on `channel` (what it
        reads depends on nothing else): whether a pairing sender is approved, and one token
        spent from the sender's bucket. With `lease` and `token` the token is spent only if
        that lease is held by that token: a worker sends this with the TAKE that claims a
        conversation (a private chat: the bucket is in the lease's slot), before it knows
        whether the claim succeeded, and a claim that failed spends nothing."""
        if self.role_of(sender) == "admin":
            return Read.value(Checked(channel=channel, sender=sender))
        policy, listed = self._sender_policy(channel, sender)
        ask_approval = policy == "pairing" and not listed
        bucket = rate_key(sender)
        rate_args = [int(self.clock() * 1000), self.rate_per_minute, self.rate_per_minute / 60000]

        def queue(pipe: Pipeline) -> None:
            if ask_approval:
                pipe.sismember(approved_key(channel), sender)
            if lease is None:
                RATE.queue(pipe, [bucket], [*rate_args, 120])
            else:
                RATE.queue(pipe, [bucket, lease], [*rate_args, 120, token or ""])

        def decode(replies: list[Any]) -> Checked:
            approved = bool(replies[0]) if ask_approval else False
            rate = int(replies[-1])
            return Checked(channel=channel, sender=sender, approved=approved, rate=rate)

        return Read(queue=queue, count=2 if ask_approval else 1, decode=decode)

    def verdict(self, message: InboundMessage, checked: Checked) -> Verdict:
        """`read_check`'s verdict for `message` from what `read_sender` read for its sender."""
        role = self.role_of(message.sender)
        if role == "admin":
            return Verdict(allowed=True, role=role)  # the owner: no policy, no limit
        policy, listed = self._policy(message)
        if policy == "open" or listed or checked.approved:
            return self._rate_verdict(message, role, checked.rate)
        return self._refused(message, policy, rate_ok=checked.rate == 1)

    async def admits(self, message: InboundMessage) -> bool:
        """Is the sender let in by the channel's policy (the rate limit aside, nothing spent)?
        What a crashed turn asks before its apology goes out: a stranger is never told."""
        if self.role_of(message.sender) == "admin":
            return True
        policy, listed = self._policy(message)
        if policy == "open" or listed:
            return True
        if policy != "pairing":
            return False
        return bool(await self.redis.sismember(approved_key(message.channel), message.sender))

    def _policy(self, message: InboundMessage) -> tuple[str, bool]:
        """The message's channel's dmPolicy (open where the channel has no config), and whether
        its sender is in that channel's allowFrom."""
        return self._sender_policy(message.channel, message.sender)

    def _sender_policy(self, channel: str, sender: str) -> tuple[str, bool]:
        config = getattr(self.channels, channel, None)
        if config is None:
            return "open", False
        return config.dm_policy, sender in config.allow_from

    def _refused(self, message: InboundMessage, policy: str, *, rate_ok: bool) -> Verdict:
        """A sender the policy does not let in: silence, or (pairing, in a DM, within the
        rate limit) a verdict asking for a pairing code."""
        if (
            policy == "pairing"
            and rate_ok
            and message.meta.get("chat_type")
            not in (
                "group",
                "supergroup",
            )
        ):
            return Verdict(allowed=False, role="stranger", pairing=True)
        reason = f"dmPolicy {policy}" if policy != "pairing" or rate_ok else "rate limited"
        self.log.info(
            "message_rejected",
            channel=message.channel,
            conversation=message.conversation,
            msg_id=message.platform_id,
            reason=reason,
        )
        return Verdict(allowed=False, role="stranger")

    async def pair(self, message: InboundMessage) -> Verdict:
        """A pairing code for a stranger (one reply), or silence if one is pending already."""
        fields = {
            "channel": message.channel,
            "conversation": message.conversation,
            "msg_id": message.platform_id,
        }
        code = await self._pairing_code(message)
        if code is None:
            self.log.info("message_rejected", **fields, reason="pairing pending or full")
            return Verdict(allowed=False, role="stranger")
        self.log.info("pairing_requested", **fields, code=code)
        reply = (
            f"Hi! This assistant is private. To use it, ask its owner to approve code {code} "
            "(valid for 1 hour), then write again."
        )
        return Verdict(allowed=False, role="stranger", reply=reply)

    async def _pairing_code(self, message: InboundMessage) -> str | None:
        """A new code for this sender, or None if one is pending already or too many are."""
        now = self.clock()
        pending = pending_key(message.channel)
        await self.redis.zremrangebyscore(pending, "-inf", now)
        waiting = cast("list[str]", await self.redis.zrange(pending, 0, -1))
        requests = [await self.redis.get(code_key(code)) for code in waiting]
        if any(r and json.loads(r)["sender"] == message.sender for r in requests):
            return None
        if len(waiting) >= MAX_PENDING:
            return None
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        request = PairingRequest(
            code=code,
            channel=message.channel,
            sender=message.sender,
            name=message.sender_name,
            expires=now + CODE_SECONDS,
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(code_key(code), json.dumps(asdict(request)), ex=CODE_SECONDS)
            pipe.zadd(pending, {code: request.expires})
            await pipe.execute()
        return code

    async def approve(self, code: str, *, who: str) -> PairingRequest | None:
        """Approve a pending code; the sender may use the gateway from now on."""
        raw = await self.redis.get(code_key(code.strip().upper()))
        if raw is None:
            return None
        request = PairingRequest(**json.loads(raw))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(approved_key(request.channel), request.sender)
            pipe.delete(code_key(request.code))
            pipe.zrem(pending_key(request.channel), request.code)
            await pipe.execute()
        self.log.info(
            "pairing_approved", channel=request.channel, conversation=request.sender, by=who
        )
        return request

    async def pending(self) -> list[PairingRequest]:
        """Codes waiting for approval, on every channel."""
        found: list[PairingRequest] = []
        for channel in type(self.channels).model_fields:
            await self.redis.zremrangebyscore(pending_key(channel), "-inf", self.clock())
            for code in cast("list[str]", await self.redis.zrange(pending_key(channel), 0, -1)):
                if raw := await self.redis.get(code_key(code)):
                    found.append(PairingRequest(**json.loads(raw)))
        return found

    def _rate_verdict(self, message: InboundMessage, role: Role, result: int) -> Verdict:
        """The RATE script's answer as a verdict: 1 allowed, 0 over (tell once), -1 over."""
        if result == 1:
            return Verdict(allowed=True, role=role)
        self.log.warning(
            "rate_limited",
            channel=message.channel,
            conversation=message.conversation,
            msg_id=message.platform_id,
            notified=result == 0,
        )
        reply = (
            f"You're sending messages faster than I can answer ({self.rate_per_minute} a minute). "
            "I'll skip messages for a moment; please slow down."
            if result == 0
            else None
        )
        return Verdict(allowed=False, role=role, reply=reply)

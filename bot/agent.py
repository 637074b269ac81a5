"""One turn, start to end: access → commands → attachments → memory → model (with failover)
→ the reply. Attachments are fetched by their channel only after the access check; each
message reaches the model with its context (forwarded, replying to what: bot.userturn; a
reply to a bot message memory lacks is quoted by its channel, after the access check).

The agent never sees a platform: it takes the messages of one turn and returns a TurnResult
whose reply holds a command's answer and/or only the model's final text (or a short apology),
or no reply at all for a message that must be dropped. The caller stores `remember` (the
worker does so atomically with the turn's state); commands are never remembered.
Each turn's model calls are accounted at its end in one pipeline (bot.usage); a sender past
`session.dailyTokenBudget` gets one notice a day and no model call (admins are exempt).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot.access import Checked, Role, Verdict
from bot.commands import parse_command
from bot.errors import AllModelsFailed, ContextOverflow, ModelError
from bot.llm.breaker import Decision
from bot.llm.choice import Source
from bot.llm.failover import FailoverClient
from bot.llm.registry import ModelInfo
from bot.llm.types import Completion, ModelRef, Preview, ToolChoice, ToolSpec, ToolStep
from bot.logs import Logger
from bot.media import TOO_SLOW, TurnMedia
from bot.memory import Compactor, ConversationState
from bot.messages import Attachment, InboundMessage, OutboundMessage, Turn
from bot.reads import Read, Write, fetch
from bot.tools import Journal, MemoryJournal, Toolbox, run_loop
from bot.usage import Call
from bot.userturn import REPLY_FETCH_SECONDS, ReplyFetcher, quote_replies, user_text

APOLOGY = "Sorry, I can't reach a language model right now. Please try again in a few minutes."
REFUSED = "Sorry, the model could not handle that message. Try rephrasing or shortening it."
TEXT_ONLY = "I can only read text for now. Please describe it in words."
TOO_LONG = (
    "This is too long for the model, even with the conversation condensed. Please send a "
    "shorter message, or /new to start over."
)
BUDGET_NOTICE = "You've reached today's limit; it resets at 00:00 UTC."
OVERFLOW_RETRIES = 2
# What a model turn reads first: the model choice, the history, the breaker decisions, and
# (sender, tokens the sender used today) for the daily budget.
TurnState = tuple[tuple[ModelRef, Source], ConversationState, dict[str, Decision], tuple[str, int]]
# The same reads as `Read.plus` nests them: ((choice, history), breakers), tokens today.
TurnReads = tuple[
    tuple[tuple[tuple[ModelRef, Source], ConversationState], dict[str, Decision]], int
]


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A turn's first reads, made by the worker in the round trip that claimed the
    conversation (`Agent.prefetch`): the access check of the sender who woke it and the
    turn's state."""

    checked: Checked
    turn: TurnState


class AccessControl(Protocol):
    """Who may talk to the bot (bot.access.RedisAccess): a verdict read with the turn's
    first round trip, pairing for a stranger who sent a code, and whether a sender is let in
    at all (asked before a crashed turn's apology)."""

    def read_check(self, message: InboundMessage) -> Read[Verdict]: ...

    def read_sender(
        self, channel: str, sender: str, *, lease: str | None = None, token: str | None = None
    ) -> Read[Checked]: ...

    def verdict(self, message: InboundMessage, checked: Checked) -> Verdict: ...

    async def pair(self, message: InboundMessage) -> Verdict: ...

    async def admits(self, message: InboundMessage) -> bool: ...


class CommandHandler(Protocol):
    """The chat commands (bot.commands.Commands): a command's answer."""

    async def handle(self, message: InboundMessage, role: Role) -> str: ...


class ModelChoice(Protocol):
    """The conversation's model, as /model set it (bot.llm.choice.RedisModelChoice)."""

    ttl_seconds: int

    def key(self, conversation: str) -> str: ...

    def read_default(self) -> Read[str | None]: ...

    def resolve(self, mine: str | None, default: str | None) -> tuple[ModelRef, Source]: ...


class TurnUsage(Protocol):
    """Token accounting (bot.usage.RedisUsage): the calls a turn made, written at its end,
    and the sender's tokens today for the daily budget."""

    def take(self, conversation: str) -> list[Call]: ...

    async def record(self, *, sender: str, conversation: str, calls: list[Call]) -> None: ...

    def queue_record(
        self,
        pipe: Pipeline,
        *,
        sender: str,
        conversation: str,
        calls: list[Call],
        fresh: bool = False,
    ) -> None: ...

    def read_spent(self, sender: str) -> Read[int]: ...

    async def first_notice(self, sender: str) -> bool: ...


class AttachmentReader(Protocol):
    """Pictures and voice notes, fetched and turned into text and images (bot.media)."""

    async def read(self, batch: Sequence[InboundMessage], *, vision: bool) -> TurnMedia: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnResult:
    """A turn's reply (None: send nothing), the turns to append to memory, and whether the
    conversation had no memory when the turn read it (no turns, summary or base: its first
    turn, or its first after /new or expiry), so the commit has no summary to keep alive."""

    reply: OutboundMessage | None
    remember: tuple[Turn, ...] = ()
    fresh: bool = False


class Agent:
    """Runs turns: checks access, answers commands, asks the models with the memory."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        llm: FailoverClient,
        compactor: Compactor,
        access: AccessControl,
        commands: CommandHandler,
        choice: ModelChoice,
        system_prompt: str,
        turn_timeout: float,
        max_inbound_chars: int,
        log: Logger,
        clock: Callable[[], float] = time.time,
        usage: TurnUsage | None = None,
        daily_token_budget: int = 0,
        media: AttachmentReader | None = None,
        replied: Mapping[str, ReplyFetcher] | None = None,
        toolbox: Toolbox | None = None,
        max_tool_steps: int = 8,
    ) -> None:
        self.redis = redis
        self.llm = llm
        self.compactor = compactor
        self.access = access
        self.commands = commands
        self.choice = choice
        self.system_prompt = system_prompt
        self.turn_timeout = turn_timeout
        self.max_inbound_chars = max_inbound_chars
        self.log = log
        self.clock = clock
        self.usage = usage
        self.daily_token_budget = daily_token_budget
        self.media = media
        self.replied: Mapping[str, ReplyFetcher] = replied or {}  # by channel
        self.toolbox = toolbox
        self.max_tool_steps = max_tool_steps

    async def may_tell(self, message: InboundMessage) -> bool:
        """May the sender get a reply at all (the channel's policy lets them in)? A turn that
        crashed before its access check asks this before the apology goes out."""
        return await self.access.admits(message)

    async def run_turn(
        self,
        batch: Sequence[InboundMessage],
        *,
        allowed: Callable[[], None] | None = None,
        preview: Preview | None = None,
        journal: Journal | None = None,
        writes: list[Write] | None = None,
        prefetched: Prefetched | None = None,
    ) -> TurnResult:
        """Answer a burst of messages as one turn; when no model can, a short apology.

        `allowed` is called once a message passed the access check (the worker starts the
        "typing…" indicator there, so strangers never see it). The apology's reply carries
        why (`OutboundMessage.failure`), for the console to show instead. `preview`: shown
        the model's final text as it streams (the reply itself is still the one result).
        `journal`: where the turn's tool steps are kept (and found, when it is resumed).
        `writes`: where a turn that ends with a result leaves what it still has to write (its
        usage), for the caller to send in the round trip that commits the turn; without it
        (or when the turn raises) they are written here, in a round trip of their own.
        `prefetched`: what the worker read with its claim (`prefetch`), used when it was read
        for the batch's first sender and the claim spent its rate token."""
        last = batch[-1]
        ended = False
        replies: list[str] = []
        for_model: list[InboundMessage] = []
        roles: list[Role] = []
        is_command = [parse_command(m.text) is not None for m in batch]
        # A command may change what the model turn reads (/new, /model): then it reads later.
        first = batch[0]
        if prefetched is not None and (
            prefetched.checked.rate == 2  # the claim it rode with did not succeed
            or (prefetched.checked.channel, prefetched.checked.sender)
            != (first.channel, first.sender)
        ):
            prefetched = None
        verdicts, ahead = await self._read_ahead(
            batch, with_turn_state=not any(is_command), prefetched=prefetched
        )
        for message, verdict, command in zip(batch, verdicts, is_command, strict=True):
            if verdict.pairing:
                verdict = await self.access.pair(message)
            if not verdict.allowed:
                replies += [verdict.reply] if verdict.reply else []
                continue
            if allowed is not None:
                allowed()
            if command:
                replies.append(await self.commands.handle(message, verdict.role))
            else:
                for_model.append(message)
                roles.append(verdict.role)
        remember: tuple[Turn, ...] = ()
        fresh = False
        failure: str | None = None
        try:
            if for_model:
                try:
                    answer, remember, fresh = await self._model_turn(
                        for_model,
                        ahead,
                        admin=roles[-1] == "admin",
                        preview=preview,
                        journal=journal,
                    )
                except (AllModelsFailed, ModelError) as exc:
                    self.log.error("turn_failed", conversation=last.conversation, error=str(exc))
                    answer, failure = _apology_for(exc), str(exc)
                replies += [answer] if answer is not None else []
            ended = True
        finally:  # what the turn's calls (and a /compact's) used
            if self.usage is not None:
                sender = (for_model or batch)[-1].sender
                calls = self.usage.take(last.conversation)
                if writes is not None and ended:
                    writes.append(
                        functools.partial(
                            self.usage.queue_record,
                            sender=sender,
                            conversation=last.conversation,
                            calls=calls,
                            fresh=fresh,
                        )
                    )
                else:
                    await self.usage.record(
                        sender=sender, conversation=last.conversation, calls=calls
                    )
        if not replies:
            return TurnResult(reply=None)
        reply = OutboundMessage(
            channel=last.channel,
            conversation=last.conversation,
            text="\n\n".join(replies),
            reply_to=last.platform_id,
            failure=failure,
        )
        return TurnResult(reply=reply, remember=remember, fresh=fresh)

    async def _model_turn(
        self,
        batch: Sequence[InboundMessage],
        ahead: TurnState | None,
        *,
        admin: bool,
        preview: Preview | None = None,
        journal: Journal | None = None,
    ) -> tuple[str | None, tuple[Turn, ...], bool]:
        """The model's final text for these messages (None: say nothing), the exchange to
        remember, and whether the conversation had no memory (TurnResult.fresh). `ahead`: the
        turn's state if read already; `admin`: the sender is an admin (no daily budget;
        admin-only tools)."""
        last = batch[-1]
        if ahead is None or ahead[3][0] != last.sender:
            _, ahead = await self._read_ahead(batch[-1:], with_turn_state=True, check=False)
        assert ahead is not None
        (primary, _), state, breakers, (_, spent) = ahead
        if self.daily_token_budget and not admin and spent >= self.daily_token_budget:
            return await self._over_budget(last, spent), (), False
        conversation = last.conversation
        started = time.perf_counter()
        self.log.info(
            "turn_started",
            channel=last.channel,
            conversation=conversation,
            msg_id=last.platform_id,
            messages=len(batch),
        )
        deadline = asyncio.get_running_loop().time() + self.turn_timeout
        chain = self.llm.registry.chain(primary)
        if not chain:
            raise AllModelsFailed("no model is configured (models.providers is empty)")
        texts: Sequence[str] = [m.text for m in batch]
        images: tuple[Attachment, ...] = ()
        if self.media is not None and any(m.media for m in batch):
            got = await self._read_media(batch, chain, deadline)
            if got.refusal is not None:
                self.log.info("turn_skipped", conversation=conversation, error="media refused")
                return got.refusal, (), False
            texts, images = got.texts, got.images
            chain = [m for m in chain if m.images] if images else chain
        if self.replied:  # a reply to the bot's message memory lacks: its channel quotes it
            left = deadline - asyncio.get_running_loop().time()
            batch = await quote_replies(
                batch,
                state.turns,
                self.replied,
                log=self.log,
                seconds=min(REPLY_FETCH_SECONDS, left),
            )
        texts = [user_text(m, t, state.turns) for m, t in zip(batch, texts, strict=True)]
        text = "\n".join(self._clip(t) for t in texts if t.strip())
        if not text:
            self.log.info("turn_skipped", conversation=conversation, error="no text (media only)")
            return TEXT_ONLY, (), False
        attachments = sum(len(m.media) for m in batch)
        if attachments and self.media is None:
            text += f"\n[The person also sent {attachments} attachment(s) you cannot see.]"
        user = Turn(role="user", text=text, ts=self.clock(), refs=tuple(m.ref for m in batch))
        tools = self.toolbox.offered(admin=admin) if self.toolbox is not None else []
        kept = journal.steps if journal is not None else ()
        if self.toolbox is None or not (tools or kept):  # no tools: one call, as ever
            completion = await self._complete(
                conversation, chain[0], user, state, breakers, deadline, images, preview
            )
            remembered = completion.text
        else:

            async def ask(
                offered: Sequence[ToolSpec], steps: Sequence[ToolStep], choice: ToolChoice
            ) -> Completion:
                return await self._complete(
                    conversation, chain[0], user, state, breakers, deadline, images, preview,
                    tools=offered, steps=steps, tool_choice=choice,
                )  # fmt: skip

            looped = await run_loop(
                ask,
                tools=tools,
                runner=self.toolbox,
                journal=journal if journal is not None else MemoryJournal(),
                max_steps=self.max_tool_steps,
                admin=admin,
                conversation=conversation,
                log=self.log,
                preview=preview,
                sender=last.sender,
                channel=last.channel,
            )
            completion, remembered = looped.completion, looped.remembered()
        reply = Turn(role="assistant", text=remembered, ts=self.clock())
        self.log.info(
            "turn_finished",
            channel=last.channel,
            conversation=conversation,
            model=completion.model_ref,
            ms=round((time.perf_counter() - started) * 1000, 1),
            tokens_in=completion.usage.tokens_in,
            tokens_out=completion.usage.tokens_out,
        )
        fresh = not state.turns and state.summary is None and not state.base
        return completion.text, (user, reply), fresh

    async def _read_media(
        self, batch: Sequence[InboundMessage], chain: Sequence[ModelInfo], deadline: float
    ) -> TurnMedia:
        """The turn's attachments, fetched within the turn's time (after the access check).
        Pictures are refused before any download when no usable model takes images."""
        assert self.media is not None
        providers = self.llm.providers
        vision = any(m.images and providers[m.ref.provider].missing_key is None for m in chain)
        try:
            async with asyncio.timeout_at(deadline):
                return await self.media.read(batch, vision=vision)
        except TimeoutError:
            last = batch[-1]
            self.log.warning(
                "media_rejected",
                channel=last.channel,
                conversation=last.conversation,
                reason="timeout",
                error="the attachments took longer than the turn's timeout",
            )
            return TurnMedia(refusal=TOO_SLOW)

    async def _over_budget(self, last: InboundMessage, spent: int) -> str | None:
        """The sender is past today's budget: the notice, the first time today; then None."""
        assert self.usage is not None
        first = await self.usage.first_notice(last.sender)
        fields = {
            "channel": last.channel,
            "conversation": last.conversation,
            "tokens": spent,
            "budget": self.daily_token_budget,
        }
        if first:
            self.log.warning("budget_exceeded", **fields)
            return BUDGET_NOTICE
        self.log.info("turn_skipped", **fields, error="daily token budget reached")
        return None

    def _clip(self, text: str) -> str:
        """Text over maxInboundChars is cut, and the model is told."""
        if len(text) <= self.max_inbound_chars:
            return text
        cut = len(text) - self.max_inbound_chars
        return f"{text[: self.max_inbound_chars]}\n[The message was cut: {cut} characters omitted.]"

    def prefetch(
        self, conversation: str, channel: str, sender: str, *, lease: str, token: str
    ) -> Read[Prefetched] | None:
        """The reads a turn starts with, for a worker to send with the TAKE that claims the
        conversation (the turn then makes no round trip of its own before the model): the
        access check of the message's sender, spending a rate token only if the claim
        succeeded, and the turn's state. Only in a private chat (the sender is the
        conversation: its rate bucket shares the lease's slot); None otherwise."""
        if sender != conversation or not channel:
            return None
        checked = self.access.read_sender(channel, sender, lease=lease, token=token)
        return checked.plus(self._read_turn_state(conversation, sender)).then(
            lambda both: Prefetched(checked=both[0], turn=both[1])
        )

    def _read_turn_state(self, conversation: str, sender: str) -> Read[TurnState]:
        """The conversation's model choice, history and breakers, and the sender's tokens
        today (for the daily budget)."""
        no_breakers: Read[dict[str, Decision]] = Read.value({})
        spent = Read.value(0)
        if self.usage is not None and self.daily_token_budget:
            spent = self.usage.read_spent(sender)
        choice = self.choice  # the conversation's own choice rides on its memory's read
        mine = self.compactor.memory.read_state_with(
            conversation, [choice.key(conversation)], choice.ttl_seconds
        )

        def resolved(
            both: tuple[tuple[ConversationState, list[Any]], str | None],
        ) -> tuple[tuple[ModelRef, Source], ConversationState]:
            (state, (stored,)), default = both
            return choice.resolve(stored, default), state

        reads = (
            mine.plus(choice.read_default())
            .then(resolved)
            .plus(self.llm.read_breakers() or no_breakers)
            .plus(spent)
        )
        if self.llm.local is not None:  # what LM Studio has loaded: llm.local keeps it
            reads = reads.plus(self.llm.local.read()).then(lambda both: both[0])

        def turn(values: TurnReads) -> TurnState:
            ((choice, state), breakers), used = values
            return choice, state, breakers, (sender, used)

        return reads.then(turn)

    async def _read_ahead(
        self,
        batch: Sequence[InboundMessage],
        *,
        with_turn_state: bool,
        check: bool = True,
        prefetched: Prefetched | None = None,
    ) -> tuple[list[Verdict], TurnState | None]:
        """Access verdicts for the batch and (optionally) the conversation's model choice,
        history and breakers, in one round trip; none when `prefetched` (what the worker read
        with its claim) covers them: the first message's check and the turn's state."""
        first: list[Verdict] = []
        if prefetched is not None and check:
            first = [self.access.verdict(batch[0], prefetched.checked)]
            batch = batch[1:]
        verdicts = Read.each([self.access.read_check(m) for m in batch] if check else [])
        if not with_turn_state or prefetched is not None:
            rest = await fetch(self.redis, verdicts, what="reading the conversation")
            return first + rest, prefetched.turn if prefetched and with_turn_state else None
        conversation, sender = batch[-1].conversation, batch[-1].sender
        both = await fetch(
            self.redis,
            verdicts.plus(self._read_turn_state(conversation, sender)),
            what="reading the conversation",
        )
        return both[0], both[1]

    async def _complete(
        self,
        conversation: str,
        model: ModelInfo,
        user: Turn,
        state: ConversationState,
        breakers: dict[str, Decision],
        deadline: float,
        images: tuple[Attachment, ...] = (),
        preview: Preview | None = None,
        *,
        tools: Sequence[ToolSpec] = (),
        steps: Sequence[ToolStep] = (),
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        """Ask the models; on a context overflow, compact harder and ask again (twice).
        `deadline`: the turn's budget for waiting on models to start answering. `tools`,
        `steps`, `tool_choice`: one step of the turn's tool loop."""
        for pressure in range(OVERFLOW_RETRIES + 1):
            if pressure:  # the window may have been found smaller than planned: plan again
                model = self.llm.registry.info(model.ref)
            prompt = await self.compactor.prompt(
                conversation,
                model=model,
                system_prompt=self.system_prompt,
                new=[user],
                pressure=pressure,
                state=state if pressure == 0 else None,  # after an overflow: read again
            )
            try:
                completion = await self.llm.complete(
                    instructions=prompt.instructions,
                    turns=prompt.turns,
                    primary=model.ref,
                    conversation=conversation,
                    breakers=breakers if pressure == 0 else None,
                    deadline=deadline,
                    images=images,
                    preview=preview,
                    tools=tools,
                    steps=steps,
                    tool_choice=tool_choice,
                )
            except ContextOverflow as exc:
                self.log.warning(
                    "context_overflow",
                    conversation=conversation,
                    model=str(model.ref),
                    pressure=pressure,
                    error=str(exc),
                )
                self.compactor.estimator.overflowed(str(model.ref))
                if pressure == OVERFLOW_RETRIES:
                    raise
                continue
            self.compactor.estimator.observe(
                completion.model_ref, prompt.chars, completion.usage.tokens_in
            )
            return completion
        raise AssertionError("unreachable")


def _apology_for(exc: Exception) -> str:
    """What the person is told: too long, refused by every model tried, or no model reached."""
    if isinstance(exc, ContextOverflow):
        return TOO_LONG
    if isinstance(exc, ModelError) or (isinstance(exc, AllModelsFailed) and exc.refused):
        return REFUSED
    return APOLOGY

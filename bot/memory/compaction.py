"""Compaction: keep every prompt inside the model's window without blocking a conversation.

Budget = the window (contextWindow, capped by what LM Studio loaded) - the answer's
reservation (maxTokens, at most a quarter of the window) - the system prompt. When the next
prompt would pass `threshold` x budget, the older turns are summarised (the previous summary
folded in) by the conversation's model or `compaction.model`, the recent ones (at least
keepRecentTokens, at most half the target, from a user turn on) stay verbatim, and both are
written in one atomic step. If summarising fails, the oldest turns are dropped to fit instead.
Token counts are estimated from characters and calibrated per model by the usage the server
reports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.config import CompactionConfig
from bot.errors import AllModelsFailed, ModelError
from bot.llm.failover import FailoverClient
from bot.llm.registry import ModelInfo
from bot.llm.types import ModelRef
from bot.logs import Logger
from bot.memory.store import ConversationState, Summary
from bot.messages import Turn
from bot.reads import Read

TURN_OVERHEAD_TOKENS = 8  # role and framing around each message
SUMMARY_HEADER = "Summary of the earlier conversation (older turns, condensed):"
SUMMARIZER = (
    "You maintain the memory of a chat between a person and an assistant. Write a concise "
    "summary of the conversation below so the assistant can continue it: who the person is, "
    "facts and preferences they shared, decisions, open questions and commitments. Fold the "
    "previous summary in; drop small talk. Plain text, no preamble."
)


class TokenEstimator:
    """Characters per token, per model: a cautious default, then what the server reports."""

    def __init__(self, *, default_ratio: float = 3.0, weight: float = 0.3) -> None:
        self.default_ratio = default_ratio
        self.weight = weight
        self.ratios: dict[str, float] = {}

    def tokens(self, text: str, model: str) -> int:
        return int(len(text) / self.ratios.get(model, self.default_ratio)) + 1

    def turn_tokens(self, turns: Sequence[Turn], model: str) -> int:
        return sum(self.tokens(t.text, model) + TURN_OVERHEAD_TOKENS for t in turns)

    def overflowed(self, model: str) -> None:
        """The server said a prompt was too long: count more tokens per character from now."""
        self.ratios[model] = self.ratios.get(model, self.default_ratio) * 0.7

    def observe(self, model: str, chars: int, tokens: int) -> None:
        """Calibrate from a call that sent `chars` characters and was billed `tokens`."""
        if tokens <= 0 or chars <= 0:
            return
        measured = min(max(chars / tokens, 1.0), 8.0)
        previous = self.ratios.get(model)
        self.ratios[model] = (
            measured if previous is None else previous + self.weight * (measured - previous)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """What a turn sends: instructions (system prompt + summary) and the turns."""

    instructions: str
    turns: list[Turn]
    compacted: bool

    @property
    def chars(self) -> int:
        return len(self.instructions) + sum(len(t.text) for t in self.turns)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionResult:
    tokens_before: int
    tokens_after: int
    summarised: int  # turns folded into the summary (0 when dropped or nothing to do)
    dropped: int  # turns dropped without a summary (summarising failed)


def instructions_for(system_prompt: str, summary: Summary | None) -> str:
    """The system prompt, with the summary of the earlier conversation when there is one."""
    if summary is None:
        return system_prompt
    return f"{system_prompt}\n\n{SUMMARY_HEADER}\n{summary.text}"


class History(Protocol):
    """What compaction (and the turn's first read) need of the conversation memory
    (bot.memory.store.RedisMemory)."""

    def read_state(self, conversation: str) -> Read[ConversationState]: ...

    def read_state_with(
        self, conversation: str, riders: list[str], ttl_seconds: int
    ) -> Read[tuple[ConversationState, list[Any]]]: ...

    async def state(self, conversation: str) -> ConversationState: ...

    async def replace_prefix(
        self, conversation: str, *, seen: ConversationState, drop: int, summary: Summary | None
    ) -> bool: ...


class Compactor:
    """Builds each turn's prompt within budget, compacting the conversation when needed."""

    def __init__(
        self,
        *,
        memory: History,
        llm: FailoverClient,
        config: CompactionConfig,
        log: Logger,
        estimator: TokenEstimator | None = None,
    ) -> None:
        self.memory = memory
        self.llm = llm
        self.config = config
        self.log = log
        self.estimator = estimator or TokenEstimator()

    def budget(self, model: ModelInfo, system_prompt: str) -> int:
        """Tokens the conversation may use: the window less the answer and the system prompt."""
        spare = model.context_window - model.output_reserve
        return max(256, spare - self.estimator.tokens(system_prompt, str(model.ref)))

    def prompt_tokens(self, state: ConversationState, extra: Sequence[Turn], model: str) -> int:
        summary = self.estimator.tokens(state.summary.text, model) if state.summary else 0
        return summary + self.estimator.turn_tokens([*state.turns, *extra], model)

    async def prompt(
        self,
        conversation: str,
        *,
        model: ModelInfo,
        system_prompt: str,
        new: Sequence[Turn],
        pressure: int = 0,
        state: ConversationState | None = None,
    ) -> Prompt:
        """The next prompt, compacting first if it would pass the threshold. `pressure` (after
        a context-overflow error) compacts harder: 1 → half the threshold, 2 → a quarter.
        `state` is the conversation as just read, if the caller has it."""
        state = state or await self.memory.state(conversation)
        ref, budget = str(model.ref), self.budget(model, system_prompt)
        limit = int(budget * self.config.threshold / (2**pressure))
        compacted = False
        if self.prompt_tokens(state, new, ref) > limit:
            await self.compact(
                conversation, model=model, state=state, target=limit, extra=new, pressure=pressure
            )
            state = await self.memory.state(conversation)
            compacted = True
        return Prompt(
            instructions=instructions_for(system_prompt, state.summary),
            turns=[*state.turns, *new],
            compacted=compacted,
        )

    async def compact(
        self,
        conversation: str,
        *,
        model: ModelInfo,
        state: ConversationState | None = None,
        target: int | None = None,
        extra: Sequence[Turn] = (),
        pressure: int = 0,
        focus: str | None = None,
        explicit: bool = False,
    ) -> CompactionResult:
        """Summarise the older turns, keep the recent ones; on failure drop the oldest.

        `explicit` (someone asked, `/compact`) condenses even a conversation under the
        threshold: at most a quarter of it stays verbatim.
        """
        state = state or await self.memory.state(conversation)
        ref = str(model.ref)
        before = self.prompt_tokens(state, extra, ref)
        if target is None:
            target = int(self.budget(model, "") * self.config.threshold)
        if explicit:
            target = min(target, before // 2)
        # The kept turns must leave room for the summary and the turns still to come.
        keep_tokens = min(self.config.keep_recent_tokens // (2**pressure), target // 2)
        cut = self._cut(state.turns, keep_tokens, ref)
        if cut == 0:
            return CompactionResult(
                tokens_before=before, tokens_after=before, summarised=0, dropped=0
            )
        if not self.config.enabled:
            return await self._drop(conversation, state, cut, before, extra, ref, None)
        older, recent = state.turns[:cut], state.turns[cut:]
        summary_room = max(128, target // 3)
        try:
            text = await self._summarise(
                conversation, state.summary, older, model, summary_room, focus
            )
        except (AllModelsFailed, ModelError) as exc:
            return await self._drop(conversation, state, cut, before, extra, ref, str(exc))
        summary = Summary(
            text=text,
            version=state.summary_version + 1,
            folded=(state.summary.folded if state.summary else 0) + cut,
            ts=time.time(),
        )
        if not await self.memory.replace_prefix(
            conversation, seen=state, drop=cut, summary=summary
        ):
            self.log.info("compaction_skipped", conversation=conversation, error="raced")
            return CompactionResult(
                tokens_before=before, tokens_after=before, summarised=0, dropped=0
            )
        after_state = ConversationState(summary=summary, turns=recent, base=state.base + cut)
        after = self.prompt_tokens(after_state, extra, ref)
        self.log.info(
            "compaction",
            conversation=conversation,
            model=ref,
            tokens_before=before,
            tokens_after=after,
            turns=cut,
            summary_version=summary.version,
        )
        return CompactionResult(tokens_before=before, tokens_after=after, summarised=cut, dropped=0)

    def _cut(self, turns: Sequence[Turn], keep_tokens: int, model: str) -> int:
        """How many of the oldest turns to fold: the rest keeps at least `keep_tokens` and
        starts with a user turn (the earliest such start; else the next one)."""
        kept, cut = 0, len(turns)
        while cut > 0 and kept < keep_tokens:
            cut -= 1
            kept += self.estimator.turn_tokens([turns[cut]], model)
        if cut == len(turns):
            return cut  # keep none of the stored turns verbatim
        start = cut
        while start > 0 and turns[start].role != "user":
            start -= 1
        if start > 0:
            return start
        while cut < len(turns) and turns[cut].role != "user":
            cut += 1
        return cut

    async def _summarise(
        self,
        conversation: str,
        previous: Summary | None,
        older: Sequence[Turn],
        model: ModelInfo,
        room: int,
        focus: str | None,
    ) -> str:
        lines = [f"{'Person' if t.role == 'user' else 'Assistant'}: {t.text}" for t in older]
        ref = str(model.ref)
        budget = self.budget(model, SUMMARIZER) - room
        while lines and self.estimator.tokens("\n".join(lines), ref) > budget:
            lines.pop(0)  # more than one window of old text: the oldest is lost
        parts = [f"Previous summary:\n{previous.text}"] if previous else []
        parts.append("Conversation to fold in:\n" + "\n".join(lines))
        if focus:
            parts.append(f"Focus the summary on: {focus}")
        instructions = f"{SUMMARIZER} Keep it under {int(room * 0.75)} words."
        primary = ModelRef.parse(self.config.model) if self.config.model else model.ref
        completion = await self.llm.complete(
            instructions=instructions,
            turns=[Turn(role="user", text="\n\n".join(parts), ts=time.time())],
            primary=primary,
            conversation=conversation,
            max_output_tokens=room,
            purpose="compaction",
        )
        limit_chars = int(room * self.estimator.ratios.get(ref, self.estimator.default_ratio))
        return completion.text[:limit_chars]

    async def _drop(
        self,
        conversation: str,
        state: ConversationState,
        cut: int,
        before: int,
        extra: Sequence[Turn],
        ref: str,
        error: str | None,
    ) -> CompactionResult:
        """Drop the oldest turns so the conversation goes on (summarising failed, or
        compaction is disabled: `error` None)."""
        await self.memory.replace_prefix(conversation, seen=state, drop=cut, summary=None)
        after_state = ConversationState(
            summary=state.summary, turns=state.turns[cut:], base=state.base + cut
        )
        after = self.prompt_tokens(after_state, extra, ref)
        fields = {
            "conversation": conversation,
            "model": ref,
            "turns": cut,
            "tokens_before": before,
            "tokens_after": after,
        }
        if error is None:
            self.log.info("history_trimmed", **fields)
        else:
            self.log.warning("compaction_failed", **fields, error=f"dropped oldest turns: {error}")
        return CompactionResult(tokens_before=before, tokens_after=after, summarised=0, dropped=cut)

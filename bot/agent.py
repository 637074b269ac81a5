"""One turn, start to end: history → model (with failover) → the reply and what to remember.

The agent never sees a platform: it takes the messages of one turn and returns a TurnResult
whose reply holds only the model's final text, or a short apology. The caller stores
`remember` (the worker does so atomically with the turn's state).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.errors import AllModelsFailed, ContextOverflow, ModelError
from bot.llm.failover import FailoverClient
from bot.llm.registry import ModelInfo
from bot.llm.types import Completion
from bot.logs import Logger
from bot.memory import Compactor
from bot.messages import InboundMessage, OutboundMessage, Turn

APOLOGY = "Sorry, I can't reach a language model right now. Please try again in a few minutes."
REFUSED = "Sorry, the model could not handle that message. Try rephrasing or shortening it."
TEXT_ONLY = "I can only read text for now. Please describe it in words."
TOO_LONG = (
    "This is too long for the model, even with the conversation condensed. Please send a "
    "shorter message, or /new to start over."
)
OVERFLOW_RETRIES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnResult:
    """A turn's reply, and the turns to append to the conversation's memory (none on failure)."""

    reply: OutboundMessage
    remember: tuple[Turn, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.remember)


class Agent:
    """Runs turns: loads the conversation's memory and asks the models."""

    def __init__(
        self,
        *,
        llm: FailoverClient,
        compactor: Compactor,
        system_prompt: str,
        turn_timeout: float,
        log: Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.llm = llm
        self.compactor = compactor
        self.system_prompt = system_prompt
        self.turn_timeout = turn_timeout
        self.log = log
        self.clock = clock

    async def run_turn(self, batch: Sequence[InboundMessage]) -> TurnResult:
        """Answer a burst of messages as one turn; when no model can, a short apology."""
        last = batch[-1]
        try:
            return await self.answer(batch)
        except AllModelsFailed as exc:
            self.log.error("turn_failed", conversation=last.conversation, error=str(exc))
            return TurnResult(reply=self._reply(last, APOLOGY))
        except ContextOverflow as exc:
            self.log.error("turn_failed", conversation=last.conversation, error=str(exc))
            return TurnResult(reply=self._reply(last, TOO_LONG))
        except ModelError as exc:
            self.log.error("turn_failed", conversation=last.conversation, error=str(exc))
            return TurnResult(reply=self._reply(last, REFUSED))

    async def answer(self, batch: Sequence[InboundMessage]) -> TurnResult:
        """Answer a burst of messages as one turn; raise AllModelsFailed or ModelError."""
        last = batch[-1]
        conversation = last.conversation
        started = time.perf_counter()
        self.log.info(
            "turn_started",
            channel=last.channel,
            conversation=conversation,
            msg_id=last.platform_id,
            messages=len(batch),
        )
        text = "\n".join(m.text for m in batch if m.text.strip())
        if not text:
            self.log.info("turn_skipped", conversation=conversation, error="no text (media only)")
            return TurnResult(reply=self._reply(last, TEXT_ONLY))
        attachments = sum(len(m.media) for m in batch)
        if attachments:
            text += f"\n[The person also sent {attachments} attachment(s) you cannot see.]"
        user = Turn(role="user", text=text, ts=self.clock())
        chain = self.llm.registry.chain()
        if not chain:
            raise AllModelsFailed("no model is configured (models.providers is empty)")
        try:
            async with asyncio.timeout(self.turn_timeout):
                completion = await self._complete(conversation, chain[0], user)
        except TimeoutError as exc:
            raise AllModelsFailed(f"no answer within {self.turn_timeout:g} s") from exc
        reply = Turn(role="assistant", text=completion.text, ts=self.clock())
        self.log.info(
            "turn_finished",
            channel=last.channel,
            conversation=conversation,
            model=completion.model_ref,
            ms=round((time.perf_counter() - started) * 1000, 1),
            tokens_in=completion.usage.tokens_in,
            tokens_out=completion.usage.tokens_out,
        )
        return TurnResult(reply=self._reply(last, completion.text), remember=(user, reply))

    async def _complete(self, conversation: str, model: ModelInfo, user: Turn) -> Completion:
        """Ask the models; on a context overflow, compact harder and ask again (twice)."""
        for pressure in range(OVERFLOW_RETRIES + 1):
            prompt = await self.compactor.prompt(
                conversation,
                model=model,
                system_prompt=self.system_prompt,
                new=[user],
                pressure=pressure,
            )
            try:
                completion = await self.llm.complete(
                    instructions=prompt.instructions, turns=prompt.turns, conversation=conversation
                )
            except ContextOverflow as exc:
                self.log.warning(
                    "context_overflow", conversation=conversation, model=str(model.ref),
                    pressure=pressure, error=str(exc),
                )  # fmt: skip
                self.compactor.estimator.overflowed(str(model.ref))
                if pressure == OVERFLOW_RETRIES:
                    raise
                continue
            self.compactor.estimator.observe(
                completion.model_ref, prompt.chars, completion.usage.tokens_in
            )
            return completion
        raise AssertionError("unreachable")

    @staticmethod
    def _reply(last: InboundMessage, text: str) -> OutboundMessage:
        return OutboundMessage(
            channel=last.channel,
            conversation=last.conversation,
            text=text,
            reply_to=last.platform_id,
        )

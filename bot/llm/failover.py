"""Ordered failover across a turn's chain: the first model that answers wins.

Failover is turn-local: every call starts at the conversation's own model. A model that is
unavailable hands over to the next; a model error (a 400) or a context overflow does not.
A model whose breaker is open is skipped without a network call; if every other model fails
too, the skipped ones are tried anyway, in order, rather than answer nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from bot.errors import AllModelsFailed, ModelUnavailable
from bot.llm.breaker import CLEAN, DUE, OPEN, PROBE, RedisBreaker
from bot.llm.registry import ModelInfo, ModelRegistry
from bot.llm.types import Completion, CompletionRequest, ModelRef, Provider
from bot.logs import Logger
from bot.messages import Turn
from bot.reads import Read


class FailoverClient:
    """Completes a conversation's prompt with the first model in its chain that answers."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        providers: Mapping[str, Provider],
        log: Logger,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.log = log
        self.breaker = breaker

    async def complete(
        self,
        *,
        instructions: str,
        turns: Sequence[Turn],
        primary: ModelRef | None = None,
        conversation: str = "",
        max_output_tokens: int | None = None,
        breakers: Mapping[str, str] | None = None,
    ) -> Completion:
        """Try each model of the chain in order; raise AllModelsFailed when none answers.

        `max_output_tokens` caps the answer below each model's own maxTokens. `breakers` are
        decisions read beforehand (`read_breakers`); other models are checked here.
        """
        chain = self.registry.chain(primary)
        failures: list[str] = []
        skipped: list[ModelInfo] = []
        for index, model in enumerate(chain):
            provider = self.providers[model.ref.provider]
            if provider.missing_key is not None:
                failures.append(f"{model.ref}: {provider.missing_key} is not set")
                self.log.info(
                    "model_skipped",
                    conversation=conversation,
                    model=str(model.ref),
                    error=f"{provider.missing_key} is not set",
                )
                continue
            decision = (breakers or {}).get(str(model.ref), DUE)
            if decision == DUE:  # not read beforehand, or a probe to claim
                decision = await self.breaker.check(str(model.ref)) if self.breaker else CLEAN
            if decision == OPEN:
                skipped.append(model)
                self.log.info(
                    "model_skipped", conversation=conversation, model=str(model.ref),
                    error="breaker open",
                )  # fmt: skip
                continue
            following = [*chain[index + 1 :], *skipped]
            completion = await self._attempt(
                model, provider, instructions, turns, conversation, max_output_tokens,
                breaker=decision, following=following, failures=failures,
            )  # fmt: skip
            if completion is not None:
                return completion
        for index, model in enumerate(skipped):  # every open model, tried anyway
            completion = await self._attempt(
                model, self.providers[model.ref.provider], instructions, turns, conversation,
                max_output_tokens, breaker=OPEN, following=skipped[index + 1 :], failures=failures,
            )  # fmt: skip
            if completion is not None:
                return completion
        raise AllModelsFailed("no model answered: " + "; ".join(failures))

    def read_breakers(self) -> Read[dict[str, str]] | None:
        """The breaker decisions of the configured chain, to read with other turn state."""
        if self.breaker is None:
            return None
        return self.breaker.read_decisions([str(m.ref) for m in self.registry.chain()])

    async def _attempt(
        self,
        model: ModelInfo,
        provider: Provider,
        instructions: str,
        turns: Sequence[Turn],
        conversation: str,
        max_output_tokens: int | None,
        *,
        breaker: str,
        following: Sequence[ModelInfo],
        failures: list[str],
    ) -> Completion | None:
        """One call to one model: its completion, or None after logging why it failed.

        `breaker` is what the breaker said before the call (open: tried anyway)."""
        ref = str(model.ref)
        probe = breaker == PROBE
        request = CompletionRequest(
            model=model.ref.model,
            instructions=instructions,
            turns=turns,
            max_output_tokens=min(model.max_tokens, max_output_tokens or model.max_tokens),
        )
        started = time.perf_counter()
        try:
            completion = await provider.complete(request)
        except ModelUnavailable as exc:
            failures.append(str(exc))
            if self.breaker:
                await self.breaker.failure(ref, severity=exc.severity, probe=probe)
            self.log.warning(
                "model_attempt",
                conversation=conversation,
                model=ref,
                provider=model.ref.provider,
                outcome="unavailable",
                probe=probe,
                ms=round((time.perf_counter() - started) * 1000, 1),
                error=str(exc),
            )
            if following:
                self.log.warning(
                    "model_fallback",
                    conversation=conversation,
                    model=ref,
                    to=str(following[0].ref),
                    error=str(exc),
                )
            return None
        if self.breaker and breaker != CLEAN:
            await self.breaker.success(ref, probe=probe)
        self.log.info(
            "model_attempt",
            conversation=conversation,
            model=completion.model_ref,
            provider=model.ref.provider,
            outcome="ok",
            probe=probe,
            ms=round((time.perf_counter() - started) * 1000, 1),
            tokens_in=completion.usage.tokens_in,
            tokens_out=completion.usage.tokens_out,
        )
        return completion

"""Ordered failover across a turn's chain: the first model that answers wins.

Failover is turn-local: every call starts at the conversation's own model. A model that is
unavailable hands over to the next; a model error (a 400) or a context overflow does not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from bot.errors import AllModelsFailed, ModelUnavailable
from bot.llm.registry import ModelRegistry
from bot.llm.types import Completion, CompletionRequest, ModelRef, Provider
from bot.logs import Logger
from bot.messages import Turn


class FailoverClient:
    """Completes a conversation's prompt with the first model in its chain that answers."""

    def __init__(
        self, *, registry: ModelRegistry, providers: Mapping[str, Provider], log: Logger
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.log = log

    async def complete(
        self,
        *,
        instructions: str,
        turns: Sequence[Turn],
        primary: ModelRef | None = None,
        conversation: str = "",
    ) -> Completion:
        """Try each model of the chain in order; raise AllModelsFailed when none answers."""
        chain = self.registry.chain(primary)
        failures: list[str] = []
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
            request = CompletionRequest(
                model=model.ref.model,
                instructions=instructions,
                turns=turns,
                max_output_tokens=model.max_tokens,
            )
            started = time.perf_counter()
            try:
                completion = await provider.complete(request)
            except ModelUnavailable as exc:
                failures.append(str(exc))
                self.log.warning(
                    "model_attempt",
                    conversation=conversation,
                    model=str(model.ref),
                    provider=model.ref.provider,
                    outcome="unavailable",
                    ms=round((time.perf_counter() - started) * 1000, 1),
                    error=str(exc),
                )
                following = chain[index + 1 :]
                if following:
                    self.log.warning(
                        "model_fallback",
                        conversation=conversation,
                        model=str(model.ref),
                        to=str(following[0].ref),
                        error=str(exc),
                    )
                continue
            self.log.info(
                "model_attempt",
                conversation=conversation,
                model=completion.model_ref,
                provider=model.ref.provider,
                outcome="ok",
                ms=round((time.perf_counter() - started) * 1000, 1),
                tokens_in=completion.usage.tokens_in,
                tokens_out=completion.usage.tokens_out,
            )
            return completion
        raise AllModelsFailed("no model answered: " + "; ".join(failures))

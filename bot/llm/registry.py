"""Model names as people write them (aliases, refs, list numbers) and the fallback chain."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Protocol

from bot.config import Config
from bot.errors import CommandError
from bot.llm.lmstudio import LocalModelState
from bot.llm.types import ModelRef

DEFAULT_CONTEXT_WINDOW = 128_000
DEFAULT_MAX_TOKENS = 8_192
OUTPUT_SHARE = 4  # an answer's reservation takes at most a quarter of the window


class LocalStates(Protocol):
    """What a local server has loaded (LMStudioModels), where known."""

    def state(self, provider: str, model: str) -> LocalModelState | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """Everything the gateway knows about one model ref."""

    ref: ModelRef
    alias: str | None
    api: str
    base_url: str
    context_window: int  # the window to plan with: the configured one, capped by what is loaded
    max_tokens: int
    listed: bool  # False: the provider exists but does not list this model id
    configured_window: int = 0  # the config's contextWindow (0: same as context_window)
    loaded: bool | None = None  # what the server says (None: unknown, or not LM Studio)

    @property
    def output_reserve(self) -> int:
        """Tokens kept for the answer: maxTokens, but never more than a quarter of the window
        (a 4k window with the seed's maxTokens 8192 would otherwise leave no room at all)."""
        return max(1, min(self.max_tokens, self.context_window // OUTPUT_SHARE))


class ModelRegistry:
    """Resolves aliases and refs against the config and builds each turn's chain."""

    def __init__(self, config: Config, local: LocalStates | None = None) -> None:
        self.config = config
        self.local = local
        self._providers = config.providers()
        self._alias_of: dict[ModelRef, str] = {}
        self._by_alias: dict[str, ModelRef] = {}
        for ref_text, entry in config.agents.defaults.models.items():
            if entry.alias:
                ref = ModelRef.parse(ref_text)
                self._alias_of[ref] = entry.alias
                self._by_alias[entry.alias.casefold()] = ref
        choice = config.agents.defaults.model
        self.default = ModelRef.parse(choice.primary)
        self.fallbacks = [ModelRef.parse(f) for f in choice.fallbacks]

    @property
    def provider_ids(self) -> list[str]:
        return list(self._providers)

    def aliases(self) -> list[tuple[str, ModelRef]]:
        """Aliases in config order, as `/model` numbers them (1-based)."""
        return [(alias, ref) for ref, alias in self._alias_of.items()]

    def alias_of(self, ref: ModelRef) -> str | None:
        return self._alias_of.get(ref)

    def info(self, ref: ModelRef) -> ModelInfo:
        """The model as configured, its window capped by the context the server loaded it
        with (LM Studio; the effective window is min(configured, loaded))."""
        provider = self._providers[ref.provider]
        spec = self.config.model_spec(ref.provider, ref.model)
        configured = spec.context_window if spec else DEFAULT_CONTEXT_WINDOW
        state = self.local.state(ref.provider, ref.model) if self.local else None
        loaded = state.context if state and state.loaded else None
        return ModelInfo(
            ref=ref,
            alias=self.alias_of(ref),
            api=provider.api,
            base_url=provider.base_url,
            context_window=min(configured, loaded) if loaded else configured,
            max_tokens=spec.max_tokens if spec else DEFAULT_MAX_TOKENS,
            listed=spec is not None,
            configured_window=configured,
            loaded=state.loaded if state else None,
        )

    def resolve(self, name: str) -> ModelRef:
        """An alias (any case), a `provider/model` ref, or an alias's number in `/model`."""
        text = name.strip()
        aliases = self.aliases()
        if text.isdigit() and 1 <= int(text) <= len(aliases):
            return aliases[int(text) - 1][1]
        if text.casefold() in self._by_alias:
            return self._by_alias[text.casefold()]
        if "/" in text:
            ref = ModelRef.parse(text)
            if ref.provider in self._providers:
                return ref
            hint = difflib.get_close_matches(ref.provider, list(self._providers), n=1)
            raise CommandError(
                f"unknown provider {ref.provider!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" Providers: {', '.join(sorted(self._providers))}."
            )
        candidates = [a for a, _ in aliases] + [str(r) for _, r in aliases]
        hint = difflib.get_close_matches(text, candidates, n=1, cutoff=0.5)
        raise CommandError(
            f"unknown model {text!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + " Use an alias, a provider/model ref, or a number from /model."
        )

    def chain(self, primary: ModelRef | None = None) -> list[ModelInfo]:
        """The turn's models in order: its primary, then the configured fallbacks, no repeats.

        Refs to providers that do not exist (a `replace` config without them) are left out.
        """
        ordered: list[ModelRef] = []
        for ref in [primary or self.default, self.default, *self.fallbacks]:
            if ref not in ordered and ref.provider in self._providers:
                ordered.append(ref)
        return [self.info(ref) for ref in ordered]

"""Model names as people write them (aliases, refs, list numbers) and the fallback chain."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from bot.config import Config
from bot.errors import CommandError
from bot.llm.types import ModelRef

DEFAULT_CONTEXT_WINDOW = 128_000
DEFAULT_MAX_TOKENS = 8_192


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """Everything the gateway knows about one model ref."""

    ref: ModelRef
    alias: str | None
    api: str
    base_url: str
    context_window: int
    max_tokens: int
    listed: bool  # False: the provider exists but does not list this model id


class ModelRegistry:
    """Resolves aliases and refs against the config and builds each turn's chain."""

    def __init__(self, config: Config) -> None:
        self.config = config
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
        provider = self._providers[ref.provider]
        spec = self.config.model_spec(ref.provider, ref.model)
        return ModelInfo(
            ref=ref,
            alias=self.alias_of(ref),
            api=provider.api,
            base_url=provider.base_url,
            context_window=spec.context_window if spec else DEFAULT_CONTEXT_WINDOW,
            max_tokens=spec.max_tokens if spec else DEFAULT_MAX_TOKENS,
            listed=spec is not None,
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

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
MAX_ECHO = 60  # a name longer than this is cut in replies (and in the did-you-mean search)


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
    images: bool = False  # the seed's `input` includes "image": it may be shown pictures
    reasoning: bool = False  # the seed's `reasoning`: its answer may open with reasoning
    tools: bool = True  # false: never offered tools (the model entry's `tools`)

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
            images=spec is not None and "image" in spec.input,
            reasoning=spec is not None and spec.reasoning,
            tools=spec is None or spec.tools,
        )

    def resolve(self, name: str) -> ModelRef:
        """An alias (any case), a `provider/model` ref, or an alias's number in `/model`.

        Anything else (a malformed ref such as `openrouter/` or `/x`, an unknown provider, a
        number off the list) raises CommandError: "unknown model …; did you mean …?".
        """
        text = " ".join(name.split())
        aliases = self.aliases()
        number = _number(text)
        if number is not None and 1 <= number <= len(aliases):
            return aliases[number - 1][1]
        if text.casefold() in self._by_alias:
            return self._by_alias[text.casefold()]
        ref = ModelRef.try_parse(text)
        if ref is not None and " " not in text and ref.provider in self._providers:
            return ref
        raise CommandError(self._unknown(text, ref))

    def _unknown(self, text: str, ref: ModelRef | None) -> str:
        """One line for a name that is no model: what was wrong, and the closest names."""
        shown = text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"
        why = ""
        if ref is not None and " " not in text:
            why = f" (no provider {ref.provider!r}; providers: {', '.join(self._providers)})"
        elif "/" in text:
            why = " (write a ref as provider/model, no spaces)"
        candidates = [a for a, _ in self.aliases()] + self._refs()
        close = difflib.get_close_matches(text[:MAX_ECHO], candidates, n=2, cutoff=0.5)
        hint = " or ".join(repr(c) for c in close or candidates[:3])
        if _number(text) is not None and self.aliases():
            hint = f"a number from 1 to {len(self.aliases())}"
        hint = f"; did you mean {hint}?" if hint else ""
        return (
            f"unknown model {shown!r}{why}{hint} "
            "Use an alias, a provider/model ref, or a number from /model."
        )

    def _refs(self) -> list[str]:
        """Every `provider/model` the config names: aliased and chained refs, listed models."""
        refs = [r for _, r in self.aliases()] + [self.default, *self.fallbacks]
        refs += [ModelRef(pid, m.id) for pid, p in self._providers.items() for m in p.models]
        return list(dict.fromkeys(str(r) for r in refs if r.provider in self._providers))

    def chain(self, primary: ModelRef | None = None) -> list[ModelInfo]:
        """The turn's models in order: its primary, then the configured fallbacks, no repeats.

        Refs to providers that do not exist (a `replace` config without them) are left out.
        """
        ordered: list[ModelRef] = []
        for ref in [primary or self.default, self.default, *self.fallbacks]:
            if ref not in ordered and ref.provider in self._providers:
                ordered.append(ref)
        return [self.info(ref) for ref in ordered]


def _number(text: str) -> int | None:
    """The list number `text` is (`2`), or None; a long run of digits is no list number."""
    return int(text) if text.isdecimal() and len(text) <= 9 else None

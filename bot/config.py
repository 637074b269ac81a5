"""The JSON5 gateway config (the seed's schema plus this project's keys) as frozen pydantic models.

Loading substitutes ${VAR} from the environment given, merges the built-in hosted catalog and
reports every problem at once with file, line and key path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from bot.config_source import (
    Loc,
    did_you_mean,
    issue_at,
    read_json5,
    render_loc,
    unknown_key,
    validation_problems,
)
from bot.errors import ConfigError

BUILT_IN_SOURCE = "<built-in default>"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant chatting with people on WhatsApp and Telegram. "
    "Answer concisely in plain text suited to a phone screen: short paragraphs or simple "
    "lists, no markdown tables, no headings. If you are unsure, say so; ask a short question "
    "when a request is ambiguous."
)

Api = Literal["openai-responses", "openai-completions"]
DmPolicy = Literal["pairing", "allowlist", "open", "disabled"]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True
    )


class ModelChoice(_Model):
    primary: str
    fallbacks: list[str] = []


class ModelEntry(_Model):
    alias: str | None = None


class CompactionConfig(_Model):
    enabled: bool = True
    threshold: float = Field(default=0.8, gt=0, le=1)
    keep_recent_tokens: int = Field(default=4000, ge=0)
    model: str | None = None


class MediaConfig(_Model):
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    transcription_model: str | None = None


def _default_model_choice() -> ModelChoice:
    return ModelChoice(
        primary="lmstudio/minimax-m2.1-gs32",
        fallbacks=["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"],
    )


class AgentDefaults(_Model):
    model: ModelChoice = Field(default_factory=_default_model_choice)
    models: dict[str, ModelEntry] = {}
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    timeout_seconds: float = Field(default=120, gt=0)
    max_concurrent: int = Field(default=8, ge=1)
    lease_seconds: float = Field(default=30, gt=0)
    delivery_retry_seconds: float = Field(default=3600, gt=0)
    max_inbound_chars: int = Field(default=8000, ge=100)
    compaction: CompactionConfig = CompactionConfig()
    media: MediaConfig = MediaConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_ref(cls, value: object) -> object:
        """The seed allows `model: "provider/model"` as well as `{primary, fallbacks}`."""
        if isinstance(value, str):
            return {"primary": value}
        if isinstance(value, dict | ModelChoice):
            return value
        raise ValueError("expected a 'provider/model' string or { primary, fallbacks }")


class AgentsConfig(_Model):
    defaults: AgentDefaults = AgentDefaults()


class ModelCost(_Model):
    input: float = Field(default=0, ge=0)
    output: float = Field(default=0, ge=0)
    cache_read: float = Field(default=0, ge=0)
    cache_write: float = Field(default=0, ge=0)


class ModelSpec(_Model):
    id: str = Field(min_length=1)
    name: str | None = None
    reasoning: bool = False
    input: list[Literal["text", "image"]] = ["text"]
    cost: ModelCost = ModelCost()
    context_window: int = Field(default=128000, ge=1)
    max_tokens: int = Field(default=8192, ge=1)


class ProviderConfig(_Model):
    base_url: str = Field(min_length=1)
    api_key: str | None = None
    api: Api
    models: list[ModelSpec] = []
    timeout_seconds: float = Field(default=120, gt=0)
    connect_timeout_seconds: float = Field(default=3, gt=0)
    first_token_seconds: float = Field(default=30, gt=0)
    # LM Studio: how long a model it loads on demand stays loaded while idle (its `ttl`);
    # None leaves LM Studio's own setting alone.
    ttl_seconds: int | None = Field(default=None, gt=0)


class ModelsConfig(_Model):
    """`providers` holds the resolved providers: the catalog merged in unless mode is replace."""

    mode: Literal["merge", "replace"] = "merge"
    providers: dict[str, ProviderConfig] = {}


class WhatsAppConfig(_Model):
    enabled: bool = True
    dm_policy: DmPolicy = "pairing"
    allow_from: list[str] = []
    text_chunk_limit: int = Field(default=1600, ge=1)
    verify_signature: bool = True
    messaging_service_sid: str | None = None


class TelegramConfig(_Model):
    enabled: bool = True
    dm_policy: DmPolicy = "pairing"
    allow_from: list[str] = []
    text_chunk_limit: int = Field(default=4000, ge=1)
    mode: Literal["webhook", "polling"] = "webhook"
    require_mention: bool = True


class ChannelsConfig(_Model):
    whatsapp: WhatsAppConfig = WhatsAppConfig()
    telegram: TelegramConfig = TelegramConfig()


class CommandsConfig(_Model):
    admins: list[str] = []
    model_switch: Literal["admins", "everyone"] = "admins"


class SessionConfig(_Model):
    idle_days: float = Field(default=30, gt=0)
    rate_limit_per_minute: int = Field(default=20, ge=1)
    # Tokens (in + out) one sender may use per UTC day; 0: no limit. Admins are exempt.
    daily_token_budget: int = Field(default=0, ge=0)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str | None = None  # None: <BOT_DATA_DIR>/log/bot.jsonl
    stream_max_len: int = Field(default=100000, ge=1)
    include_content: bool = False


class Config(_Model):
    source: str = BUILT_IN_SOURCE
    agents: AgentsConfig = AgentsConfig()
    models: ModelsConfig = ModelsConfig()
    channels: ChannelsConfig = ChannelsConfig()
    commands: CommandsConfig = CommandsConfig()
    session: SessionConfig = SessionConfig()
    logging: LoggingConfig = LoggingConfig()

    def providers(self) -> dict[str, ProviderConfig]:
        """Every usable provider id → its complete settings (catalog merged unless replace)."""
        return dict(self.models.providers)

    def warnings(self) -> list[str]:
        """Settings that load but will not work as their author expects."""
        found = []
        for pid, provider in self.models.providers.items():
            for index, spec in enumerate(provider.models):
                if spec.max_tokens >= spec.context_window:
                    found.append(
                        f"models.providers.{pid}.models[{index}] ({spec.id}): maxTokens "
                        f"{spec.max_tokens} ≥ contextWindow {spec.context_window}; answers are "
                        f"capped at a quarter of the window ({spec.context_window // 4} tokens). "
                        "Lower maxTokens, or raise contextWindow to what the server loads."
                    )
        heard = self.agents.defaults.media.transcription_model
        provider_id = split_ref(heard)[0] if heard else ""
        listening = self.providers().get(provider_id)
        if heard and listening is not None and not listening.api_key:
            found.append(
                f"agents.defaults.media.transcriptionModel ({heard}): {key_variable(provider_id)} "
                "is not set, so voice notes will get an apology instead of a transcript."
            )
        return found

    def model_spec(self, provider: str, model_id: str) -> ModelSpec | None:
        """The listed spec of `provider/model_id`, or None (callers then use ModelSpec defaults)."""
        found = self.models.providers.get(provider)
        return next((m for m in found.models if m.id == model_id), None) if found else None


def split_ref(ref: str) -> tuple[str, str]:
    """`openrouter/minimax/minimax-m2.1` → ("openrouter", "minimax/minimax-m2.1")."""
    provider, _, model = ref.partition("/")
    return provider, model


DEFAULT_CONFIG_TEXT = """\
// Switchboard gateway config (JSON5). This built-in default is used when BOT_CONFIG is unset;
// copy it to ./bot.json5 to change it. Strings may use ${VAR} from the environment ($${VAR}
// is a literal). Local-first with a hosted safety net: LM Studio answers, Anthropic steps in
// when the local box is down (set ANTHROPIC_API_KEY for that).
{
  agents: {
    defaults: {
      model: {
        primary: "lmstudio/minimax-m2.1-gs32",
        fallbacks: ["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"]
      },
      models: {
        "lmstudio/minimax-m2.1-gs32": { alias: "Minimax" },
        "anthropic/claude-sonnet-4-5": { alias: "Sonnet" },
        "anthropic/claude-opus-4-5": { alias: "Opus" }
      },
      // timeoutSeconds: 120, compaction: { enabled: true, threshold: 0.8 }
    }
  },
  models: {
    // "merge" keeps the built-in hosted catalog (anthropic, openai, openrouter) as fallbacks.
    mode: "merge",
    providers: {
      lmstudio: {
        baseUrl: "http://127.0.0.1:1234/v1",
        apiKey: "lmstudio",
        api: "openai-responses",
        models: [
          {
            id: "minimax-m2.1-gs32",
            name: "MiniMax M2.1 GS32",
            reasoning: false,
            input: ["text"],
            cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
            contextWindow: 196608,
            maxTokens: 8192
          }
        ]
      }
    }
  },
  // channels: { whatsapp: { dmPolicy: "pairing" }, telegram: { mode: "webhook" } },
  // commands: { admins: ["whatsapp:+15551234567", "telegram:123456789"] },
}
"""


# The built-in hosted providers and the environment variable holding each one's API key.
CATALOG_KEYS = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}


def key_variable(provider_id: str) -> str:
    """Where a provider's API key comes from: an environment variable or the config."""
    return CATALOG_KEYS.get(provider_id, f"models.providers.{provider_id}.apiKey")


def _catalog(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The hosted providers `merge` mode always offers, in config spelling; keys from `env`."""

    def spec(model_id: str, name: str, context: int, max_tokens: int) -> dict[str, Any]:
        return {"id": model_id, "name": name, "contextWindow": context, "maxTokens": max_tokens}

    def provider(url: str, api: str, pid: str, *models: dict[str, Any]) -> dict[str, Any]:
        key = env.get(CATALOG_KEYS[pid]) or None
        return {"baseUrl": url, "api": api, "apiKey": key, "models": list(models)}

    return {
        "anthropic": provider(
            "https://api.anthropic.com/v1/",
            "openai-completions",
            "anthropic",
            spec("claude-opus-4-5", "Claude Opus 4.5", 200000, 8192),
            spec("claude-sonnet-4-5", "Claude Sonnet 4.5", 200000, 8192),
        ),
        "openai": provider(
            "https://api.openai.com/v1",
            "openai-responses",
            "openai",
            spec("gpt-5.1", "GPT-5.1", 400000, 16384),
            spec("gpt-5-mini", "GPT-5 mini", 400000, 16384),
        ),
        "openrouter": provider(
            "https://openrouter.ai/api/v1",
            "openai-completions",
            "openrouter",
            spec("minimax/minimax-m2.1", "MiniMax M2.1", 196608, 8192),
            spec("moonshotai/kimi-k2", "Kimi K2", 131072, 8192),
        ),
    }


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Config:
    """Load the config file at `path`, or the built-in default when `path` is None or empty."""
    if path is None or not os.fspath(path):
        return parse_config(DEFAULT_CONFIG_TEXT, source=BUILT_IN_SOURCE, env=env)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file} does not exist; create it or unset BOT_CONFIG")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} cannot be read ({exc.__class__.__name__})") from exc
    return parse_config(text, source=str(file), env=env)


def parse_config(text: str, *, source: str, env: Mapping[str, str]) -> Config:
    """Parse JSON5 `text` into a resolved Config, or raise ConfigError listing every issue."""
    raw, lines = read_json5(text, source=source)
    problems: list[tuple[Loc, str]] = []
    data = _substitute(raw, (), env, problems)
    if "source" in data:
        problems.append((("source",), unknown_key("source", Config)))
        del data["source"]
    models = data.get("models", {})
    if isinstance(models, dict) and models.get("mode") != "replace":
        providers = models.get("providers", {})
        if isinstance(providers, dict):
            data["models"] = {**models, "providers": _merge(_catalog(env), providers)}
    _default_model(
        data, configured=raw.get("models", {}).get("providers") if _is_dict(raw) else None
    )
    problems += _reference_problems(data)
    config: Config | None = None
    try:
        config = Config.model_validate({**data, "source": source}, by_name=False)
    except ValidationError as exc:
        problems += validation_problems(exc, Config)
    if problems or config is None:
        issues = [issue_at(source, lines, loc, message) for loc, message in problems]
        raise ConfigError(sorted(issues, key=lambda issue: issue.line or 0))
    return config


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _default_model(data: dict[str, Any], *, configured: object) -> None:
    """A file without `agents.defaults.model` gets the local-first chain, led by its own model.

    The primary is the first model of the first provider the file configures (the seed's
    "other OpenAI-compatible proxies" block has only `local`), else LM Studio's; models
    whose provider does not exist (no `lmstudio` block, `replace` mode) are left out.
    """
    agents = data.get("agents", {})
    defaults = agents.get("defaults", {}) if isinstance(agents, dict) else None
    models = data.get("models", {})
    resolved = models.get("providers") if isinstance(models, dict) else None
    if not isinstance(defaults, dict) or "model" in defaults or not isinstance(resolved, dict):
        return
    default = _default_model_choice()
    chain = [default.primary, *default.fallbacks]
    for pid, entry in (configured if isinstance(configured, dict) else {}).items():
        listed = entry.get("models") if isinstance(entry, dict) else None
        first = listed[0] if isinstance(listed, list) and listed else None
        if isinstance(first, dict) and isinstance(first.get("id"), str):
            chain[0] = f"{pid}/{first['id']}"
            break
    chain = [ref for ref in chain if split_ref(ref)[0] in resolved]
    if chain:
        data["agents"] = {
            **agents,
            "defaults": {**defaults, "model": {"primary": chain[0], "fallbacks": chain[1:]}},
        }


_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value: Any, loc: Loc, env: Mapping[str, str], out: list[tuple[Loc, str]]) -> Any:
    """Replace ${VAR} in every string (not keys); `$${VAR}` stays a literal `${VAR}`."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, out) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped:
            return "${" + name + "}"
        if name not in env:
            out.append((loc, f"{name} is not set (used at {render_loc(loc)})"))
            return ""
        return env[name]

    return _VAR.sub(replace, value)


def _merge(catalog: dict[str, dict[str, Any]], configured: dict[str, Any]) -> dict[str, Any]:
    """Configured providers override catalog ones field by field; `models` merge by `id`.

    Configured models come first so error locations keep the file's indexes.
    """
    merged: dict[str, Any] = dict(catalog)
    for pid, entry in configured.items():
        base = catalog.get(pid)
        if base is None or not isinstance(entry, dict):
            merged[pid] = entry
            continue
        mine = entry.get("models", [])
        if isinstance(mine, list):
            ids = {m.get("id") for m in mine if isinstance(m, dict)}
            mine = [*mine, *(m for m in base["models"] if m["id"] not in ids)]
        merged[pid] = {**base, **entry, "models": mine}
    return merged


def _reference_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Model refs must name a resolved provider; aliases must be unique (case-insensitive)."""
    models = data.get("models")
    providers = models.get("providers") if isinstance(models, dict) else None
    ids = sorted(providers) if isinstance(providers, dict) else []
    agents = data.get("agents")
    defaults = agents.get("defaults") if isinstance(agents, dict) else None
    if not isinstance(defaults, dict):
        return []
    here: Loc = ("agents", "defaults")
    refs: list[tuple[Loc, object]] = []
    choice = defaults.get("model")
    if isinstance(choice, dict):
        refs.append(((*here, "model", "primary"), choice.get("primary")))
        fallbacks = choice.get("fallbacks")
        if isinstance(fallbacks, list):
            refs += [((*here, "model", "fallbacks", i), r) for i, r in enumerate(fallbacks)]
    else:
        refs.append(((*here, "model"), choice))
    entries = defaults.get("models")
    entries = entries if isinstance(entries, dict) else {}
    refs += [((*here, "models", ref), ref) for ref in entries]
    compaction = defaults.get("compaction")
    if isinstance(compaction, dict):
        refs.append(((*here, "compaction", "model"), compaction.get("model")))
    media = defaults.get("media")
    if isinstance(media, dict):
        refs.append(((*here, "media", "transcriptionModel"), media.get("transcriptionModel")))

    problems: list[tuple[Loc, str]] = []
    for loc, ref in refs:
        if not isinstance(ref, str):
            continue  # absent, or a type error pydantic reports
        provider, model = split_ref(ref)
        if not provider or not model:
            problems.append((loc, f"'{ref}' is not a model ref; write it as provider/model"))
        elif provider not in ids:
            hint = did_you_mean(provider, ids)
            known = ", ".join(ids) or "none"
            problems.append((loc, f"unknown provider '{provider}'{hint} (providers: {known})"))
    seen: dict[str, str] = {}
    for ref, entry in entries.items():
        alias = entry.get("alias") if isinstance(entry, dict) else None
        if not isinstance(alias, str):
            continue
        if (first := seen.setdefault(alias.casefold(), ref)) != ref:
            message = f"alias '{alias}' is already used by '{first}'; aliases must be unique"
            problems.append(((*here, "models", ref, "alias"), message))
    return problems

"""The JSON5 gateway config's schema (the seed's keys plus this project's) as frozen pydantic
models; `Config` is the whole of it, resolved."""

from __future__ import annotations

import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from bot.config.catalog import key_variable

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


def default_model_choice() -> ModelChoice:
    return ModelChoice(
        primary="lmstudio/minimax-m2.1-gs32",
        fallbacks=["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"],
    )


class AgentDefaults(_Model):
    model: ModelChoice = Field(default_factory=default_model_choice)
    models: dict[str, ModelEntry] = {}
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    timeout_seconds: float = Field(default=120, gt=0)
    max_concurrent: int = Field(default=8, ge=1)
    lease_seconds: float = Field(default=30, gt=0)
    delivery_retry_seconds: float = Field(default=3600, gt=0)
    max_inbound_chars: int = Field(default=8000, ge=100)
    compaction: CompactionConfig = CompactionConfig()
    media: MediaConfig = MediaConfig()
    # Model steps per turn when tools are offered; the last is asked for an answer without them.
    max_tool_steps: int = Field(default=8, ge=1, le=64)
    timezone: str = "UTC"  # IANA zone for reminders of people who set none with /tz

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_ref(cls, value: object) -> object:
        """The seed allows `model: "provider/model"` as well as `{primary, fallbacks}`."""
        if isinstance(value, str):
            return {"primary": value}
        if isinstance(value, dict | ModelChoice):
            return value
        raise ValueError("expected a 'provider/model' string or { primary, fallbacks }")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """An IANA zone name this machine knows (Europe/Berlin, UTC)."""
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as UTC") from exc
        return value


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
    tools: bool = True  # false: never offered tools (a model that cannot call functions)


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
    typing_indicator: bool = True  # "typing…" and the read receipt while a turn runs
    # A Content Template (one variable: the text) for reminders outside the 24-hour window.
    reminder_template_sid: str | None = None


class TelegramConfig(_Model):
    enabled: bool = True
    dm_policy: DmPolicy = "pairing"
    allow_from: list[str] = []
    text_chunk_limit: int = Field(default=4000, ge=1)
    mode: Literal["webhook", "polling"] = "webhook"
    require_mention: bool = True
    # Private chats see the reply as it is written (sendMessageDraft); "off": typing only.
    streaming: Literal["draft", "off"] = "draft"
    draft_interval_ms: int = Field(default=500, ge=250)  # at most one draft per this, per chat


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


class McpServerConfig(_Model):
    """One MCP server: a local command spoken to over stdio (`command`, `args`, `env`, `cwd`),
    or a streamable-HTTP endpoint (`url`, `headers`); exactly one of `command` and `url`."""

    command: str | None = Field(default=None, min_length=1)
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (stdio) or url (streamable HTTP), not both")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("args, env and cwd are for a command (stdio) server, not a url")
        if self.command is not None and self.headers:
            raise ValueError("headers are for a url (streamable HTTP) server, not a command")
        return self


class ToolsConfig(_Model):
    """The agent loop's tools: MCP servers, and which of their tools a model is offered."""

    mcp: dict[str, McpServerConfig] = {}
    allow: list[str] = []  # `server.tool` or `server.*`; nothing is offered unless named
    admin_only: list[str] = []  # `server.tool` or `server.*`: offered only in admins' turns
    timeout_seconds: float = Field(default=30, gt=0)  # one tool call
    max_output_chars: int = Field(default=16000, ge=100)  # a tool's output as the model sees it


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
    tools: ToolsConfig = ToolsConfig()

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

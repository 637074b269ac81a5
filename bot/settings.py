"""Process settings from the environment and `.env`: secrets, URLs, ports (DESIGN §3).

Read once at start-up by the CLI and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every environment variable the gateway reads; each one is also in `.env.example`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # an error must not print the other settings' secrets
    )

    bot_config: str = Field(default="./bot.json5", description="Path of the JSON5 gateway config.")
    bot_host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    bot_port: int = Field(default=8080, ge=0, le=65535, description="Port the HTTP server binds.")
    bot_public_url: str | None = Field(
        default=None, description="Public base URL Twilio/Telegram call; signatures use it."
    )
    bot_data_dir: str = Field(
        default="./var", description="Where the embedded Redis and the log file live."
    )
    bot_max_inflight: int = Field(
        default=256,
        ge=1,
        description="Webhooks one web process holds in flight; /readyz is busy from 80 % on, "
        "and past it WhatsApp webhooks go to the local spool, others get 503.",
    )
    bot_console_host: str = Field(
        default="127.0.0.1",
        description="Address the console binds (loopback unless BOT_CONSOLE_TOKEN is set).",
    )
    bot_console_port: int = Field(
        default=8081, ge=0, le=65535, description="Port of the operator console; 0 turns it off."
    )
    bot_console_token: SecretStr | None = Field(
        default=None,
        description="Signs in to the console; unset: one is generated once and kept in Redis.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis to use; unset starts an embedded one under BOT_DATA_DIR."
    )
    redis_cluster: bool = Field(
        default=False, description="true: REDIS_URL is one node of a Redis Cluster."
    )
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Verifies webhook signatures; REST calls too, without a key."
    )
    twilio_api_key_sid: str | None = Field(
        default=None, description="SK…: REST calls use this API key (with its secret)."
    )
    twilio_api_key_secret: SecretStr | None = None
    twilio_whatsapp_from: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_messaging_base_url: str = Field(
        default="https://messaging.twilio.com",
        description="Twilio's Messaging API: the WhatsApp typing indicator and read receipt.",
    )
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    anthropic_api_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    openrouter_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _cluster_needs_a_node(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("REDIS_CLUSTER=true needs REDIS_URL naming one node of the cluster")
        return self

    @model_validator(mode="after")
    def _api_key_is_a_pair(self) -> Settings:
        if (self.twilio_api_key_sid is None) != (self.twilio_api_key_secret is None):
            given, missing = (
                ("TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET")
                if self.twilio_api_key_sid
                else ("TWILIO_API_KEY_SECRET", "TWILIO_API_KEY_SID")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: set both TWILIO_API_KEY_SID and "
                "TWILIO_API_KEY_SECRET (a Twilio API key), or neither (REST calls then use "
                "TWILIO_AUTH_TOKEN)"
            )
        return self

    def twilio_rest_auth(self) -> tuple[str, str] | None:
        """The HTTP Basic credentials of Twilio REST calls (messages, the list, media): the
        API key's SID and secret when set, else the account SID and auth token; None when
        neither is complete. URLs stay under the account SID either way."""
        if self.twilio_api_key_sid and self.twilio_api_key_secret:
            return self.twilio_api_key_sid, self.twilio_api_key_secret.get_secret_value()
        if self.twilio_account_sid and self.twilio_auth_token:
            return self.twilio_account_sid, self.twilio_auth_token.get_secret_value()
        return None

    def secrets(self) -> list[str]:
        """Every secret value that is set, so log sinks can redact them."""
        values = [
            self.twilio_auth_token,
            self.twilio_api_key_secret,
            self.telegram_bot_token,
            self.telegram_webhook_secret,
            self.anthropic_api_key,
            self.openai_api_key,
            self.openrouter_api_key,
            self.bot_console_token,
        ]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    def config_env(self) -> dict[str, str]:
        """The hosted-provider keys as the config's `${VAR}` substitution sees them."""
        env: dict[str, str] = {}
        for name, value in (
            ("ANTHROPIC_API_KEY", self.anthropic_api_key),
            ("OPENAI_API_KEY", self.openai_api_key),
            ("OPENROUTER_API_KEY", self.openrouter_api_key),
        ):
            if value is not None and value.get_secret_value():
                env[name] = value.get_secret_value()
        return env

"""One error tree for the whole gateway.

Every error says what to do next and never carries a secret or a person's message text.
Vendor errors are translated into these at the adapter that met them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BotError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigIssue:
    """One problem in a config file: where it is and what would fix it."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(BotError):
    """The config (file or environment) cannot be used; carries every issue found."""

    def __init__(self, issues: list[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(file="", path="", message=issues)]
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class WebhookAuthError(BotError):
    """A webhook failed its signature or secret check (HTTP 403/401)."""


class WebhookSecretError(WebhookAuthError):
    """A webhook's shared secret was wrong or missing (HTTP 401, as Telegram expects)."""


class BadPayload(BotError):
    """A webhook body could not be parsed into messages (HTTP 400)."""


class ChannelNotConfigured(BotError):
    """A channel's credentials are missing, so its webhook cannot be verified (HTTP 503)."""


class StoreUnavailable(BotError):
    """Redis could not be reached or did not confirm a write; the platform should retry (503)."""


class ChannelSendError(BotError):
    """A reply could not be delivered to a platform. `retry_after`: seconds the platform
    asked to wait (a 429's Retry-After), if it said; `status`: its HTTP status, if it answered."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class RecipientUnreachable(ChannelSendError):
    """The platform says this person cannot be reached (blocked the bot, no such number,
    unsubscribed): never retried. `code`: the platform's code (Twilio 21211, Telegram 403)."""

    def __init__(self, message: str, *, code: int, status: int | None = None) -> None:
        super().__init__(message, retryable=False, status=status)
        self.code = code


class ModelError(BotError):
    """A request no model of the chain can take as it is (ContextOverflow: compact it first).
    A server that refuses one request (a plain 400) is ModelRefused: another server may take it."""


class Severity(StrEnum):
    """What a ModelUnavailable means to the breaker (the FAIL script compares these values)."""

    DOWN = "down"  # cannot connect, timed out: open the breaker at once
    FAILING = "failing"  # 5xx, 429, auth, unknown model: open after a few in a row
    EMPTY = "empty"  # answered without final text: the server works, count nothing
    REFUSED = "refused"  # refused this request (a 400): the server is up, count nothing


class ModelUnavailable(BotError):
    """A model could not answer now (down, timing out, 5xx, 429, auth, unknown, refused): try
    the next.

    `severity` tells the breaker what it means: "down" (cannot connect, timed out: open the
    breaker at once), "failing" (5xx, 429, auth, unknown model: open after a few in a row),
    "empty" (answered without final text) or "refused" (a 400 for this request): for these
    two the server works, so they count nothing.
    """

    def __init__(self, message: str, *, severity: Severity = Severity.FAILING) -> None:
        super().__init__(message)
        self.severity = severity


class AnswerNotStarted(ModelUnavailable):
    """A model did not start answering within the time the turn could give it."""

    def __init__(self, message: str, *, waited: float) -> None:
        super().__init__(message, severity=Severity.DOWN)
        self.waited = waited


class ModelRefused(ModelUnavailable):
    """A model's server refused this request (an HTTP 400 that is not a context overflow).

    The server is up, so its breaker stays closed; but another server may take what this one
    refused (llama.cpp and OpenAI differ on which Responses item forms they accept), so the
    turn goes on to the next model of the chain.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, severity=Severity.REFUSED)


class ContextOverflow(ModelError):
    """The prompt did not fit the model's context window: compact and retry the same model."""


class AllModelsFailed(BotError):
    """Every model in the chain failed for this turn. `refused`: each model that was tried
    refused the request itself (none was merely down), so rephrasing may help."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class TurnFenced(BotError):
    """The turn's lease is no longer ours (it expired, another worker took the batch): this
    worker must stop the turn and change nothing more."""


class CommandError(BotError):
    """A chat command could not be carried out; the message is shown to the person."""


class MediaRejected(BotError):
    """An attachment could not be used; `reason` says why, in a word the logs can count:
    "too_large", "unsupported", "fetch_failed", "no_vision" (no model takes images),
    "not_configured" (no transcription model) or "transcription" (it failed)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReplyUnavailable(BotError):
    """The earlier message a reply names could not be had from its platform; `reason` in a
    word the logs can count: "not_found", "refused" (the credential may not read it),
    "unreachable" (network, 5xx) or "not_configured"."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

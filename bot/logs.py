"""Structured events (DESIGN §5): one event per thing that happens, redacted in every sink.

`make_logger` builds the logger the composition root hands to every component. Events are
JSON lines when the stream is not a terminal and readable columns when it is.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

Logger = FilteringBoundLogger

FIRST_KEYS = ("ts", "level", "event", "channel", "conversation", "msg_id")
CONTENT_KEYS = ("text", "reply")
PHONE = re.compile(r"\+(\d{1,4})(\d{3,})(\d{4})\b")


def mask_phone_numbers(value: str) -> str:
    """Hide the middle digits of every E.164 number: +15551234567 → +1555•••4567."""
    return PHONE.sub(lambda m: f"+{m.group(1)}•••{m.group(3)}", value)


class Redactor:
    """A processor that masks phone numbers and replaces every secret value with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def clean(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "***")
        return mask_phone_numbers(value)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.clean(value)
            elif isinstance(value, list | tuple):
                event[key] = [self.clean(v) if isinstance(v, str) else v for v in value]
        return event


def _drop_content(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in CONTENT_KEYS:
        event.pop(key, None)
    return event


def _order(_: WrappedLogger, __: str, event: EventDict) -> MutableMapping[str, Any]:
    ordered = {key: event.pop(key) for key in FIRST_KEYS if key in event}
    ordered.update(event)
    return ordered


def make_logger(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    as_json: bool | None = None,
    secrets: Iterable[str] = (),
    include_content: bool = False,
) -> Logger:
    """A logger writing one event per line to `stream` (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    if as_json is None:
        as_json = not out.isatty()
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
    ]
    if not include_content:
        processors.append(_drop_content)
    processors.append(Redactor(secrets))
    processors.append(_order)
    if as_json:
        processors.append(structlog.processors.JSONRenderer(ensure_ascii=False))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False))
    logger: Logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    return logger

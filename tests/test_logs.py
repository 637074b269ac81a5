"""Structured events: JSON lines, redaction of secrets and phone numbers, content off by default."""

from __future__ import annotations

import io
import json

from bot.logs import make_logger, mask_phone_numbers


def test_events_are_json_lines_with_the_standard_keys_first() -> None:
    """An event is one JSON object starting with ts, level and event."""
    out = io.StringIO()
    make_logger(stream=out, as_json=True).info("reply_sent", channel="console", ms=3.5)
    event = json.loads(out.getvalue())
    assert list(event)[:4] == ["ts", "level", "event", "channel"]
    assert event["event"] == "reply_sent"
    assert event["ms"] == 3.5


def test_secrets_are_replaced_everywhere() -> None:
    """A configured secret never reaches the sink, even inside another string or a list."""
    out = io.StringIO()
    log = make_logger(stream=out, as_json=True, secrets=["sk-live-abcdef123456"])
    log.error(
        "model_attempt", error="401 for key sk-live-abcdef123456", extra=["sk-live-abcdef123456"]
    )
    assert "sk-live-abcdef123456" not in out.getvalue()
    assert "***" in out.getvalue()


def test_phone_numbers_are_masked() -> None:
    """Conversation ids keep the country and the last four digits only."""
    assert mask_phone_numbers("whatsapp:+15551234567") == "whatsapp:+1555•••4567"
    out = io.StringIO()
    make_logger(stream=out, as_json=True).info(
        "turn_started", conversation="whatsapp:+447700900123"
    )
    assert "900123" not in out.getvalue()


def test_message_text_is_dropped_unless_configured() -> None:
    """`text` fields are logged only with include_content."""
    quiet, loud = io.StringIO(), io.StringIO()
    make_logger(stream=quiet, as_json=True).info("message_received", text="my secret plans")
    make_logger(stream=loud, as_json=True, include_content=True).info("message_received", text="hi")
    assert "my secret plans" not in quiet.getvalue()
    assert json.loads(loud.getvalue())["text"] == "hi"


def test_level_filters_events() -> None:
    """Events below the configured level are not written."""
    out = io.StringIO()
    log = make_logger(stream=out, as_json=True, level="warning")
    log.info("turn_started")
    log.warning("model_fallback")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["model_fallback"]

"""Builders shared by tests: gateway configs that point at fake servers, and messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from bot.config import Config, parse_config
from bot.messages import InboundMessage


def provider_block(base_url: str, api: str = "openai-responses", model: str = "local-model") -> str:
    return json.dumps(
        {
            "baseUrl": base_url,
            "apiKey": "sk-test-local",
            "api": api,
            "timeoutSeconds": 5,
            "connectTimeoutSeconds": 1,
            "models": [{"id": model, "contextWindow": 32000, "maxTokens": 1024}],
        }
    )


def gateway_config_text(
    primary_url: str,
    fallback_url: str | None = None,
    *,
    primary_api: str = "openai-responses",
    fallback_api: str = "openai-completions",
    lease_seconds: float = 30,
) -> str:
    """A JSON5 config: `local/local-model` first, then `backup/backup-model` if given."""
    fallbacks = '["backup/backup-model"]' if fallback_url else "[]"
    backup = (
        f"backup: {provider_block(fallback_url, fallback_api, 'backup-model')},"
        if fallback_url
        else ""
    )
    return f"""{{
      agents: {{ defaults: {{
        model: {{ primary: "local/local-model", fallbacks: {fallbacks} }},
        models: {{ "local/local-model": {{ alias: "Local" }} }},
        systemPrompt: "You are a test assistant.",
        timeoutSeconds: 20,
        leaseSeconds: {lease_seconds},
      }} }},
      models: {{ mode: "replace", providers: {{
        local: {provider_block(primary_url, primary_api)},
        {backup}
      }} }},
    }}"""


def gateway_config(primary_url: str, fallback_url: str | None = None, **kwargs: str) -> Config:
    return parse_config(
        gateway_config_text(primary_url, fallback_url, **kwargs), source="test.json5", env={}
    )


def inbound(
    text: str, *, conversation: str = "console:tester", n: int = 1, channel: str = "console"
) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        conversation=conversation,
        sender=conversation,
        text=text,
        platform_id=f"m{n}",
        ts=time.time(),
    )


async def eventually(condition: Callable[[], bool], within: float = 20) -> None:
    """Poll a condition until it holds; fail if `within` seconds pass first."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling a condition with a deadline, by design
            await asyncio.sleep(0.01)

"""Benchmarks and load checks: each prints figures; none is a pass/fail test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import gateway_config_text

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop like the gateway (where installed), so every process of a benchmark
    (load generator, fakes, relay) has the same event loop as the one it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def gateway_env(
    workdir: Path,
    *,
    port: int,
    redis_url: str,
    model_url: str,
    twilio: FakeTwilio,
    sender: str,
    data_dir: Path,
    **config: Any,
) -> dict[str, str]:
    """Write `workdir/bot.json5` (WhatsApp open to everyone, `config` as for
    gateway_config_text) and return the environment of a `bot serve` pointed at the fakes."""
    path = workdir / "bot.json5"
    text = gateway_config_text(model_url, **config).rstrip().rstrip("}")
    path.write_text(text + 'channels: { whatsapp: { enabled: true, dmPolicy: "open" } } }')
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "BOT_CONFIG": str(path),
        "BOT_PORT": str(port),
        "BOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BOT_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": os.environ.get("REDIS_CLUSTER", ""),  # REDIS_URL names a cluster node
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_WHATSAPP_FROM": sender,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "TWILIO_MESSAGING_BASE_URL": twilio.base_url,
    }

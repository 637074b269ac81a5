"""Benchmarks and load checks: each prints figures; none is a pass/fail test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bot.redisdb import EmbeddedRedis
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


@contextlib.contextmanager
def workdir(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh work dir for one benchmark run (removed after, unless `keep`); the run's
    total time is printed at the end."""
    started = time.monotonic()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
        print(f"\ntotal run time {time.monotonic() - started:.0f} s")


@contextlib.asynccontextmanager
async def redis_url(workdir: Path) -> AsyncIterator[str]:
    """REDIS_URL, or an embedded Redis under `workdir` for as long as the run lasts."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    embedded = EmbeddedRedis(workdir)
    await embedded.start()
    try:
        yield embedded.url
    finally:
        await embedded.stop()


def is_cluster() -> bool:
    """Whether REDIS_CLUSTER says REDIS_URL names a Redis Cluster node."""
    return os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes")


def serve_env(
    workdir: Path, *, config: Path, port: int, data_dir: Path, redis_url: str
) -> dict[str, str]:
    """The environment every benchmark's `bot serve` starts from (nothing leaks in from the
    shell): its config, port and public URL, data dir and Redis."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "BOT_CONFIG": str(config),
        "BOT_PORT": str(port),
        "BOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BOT_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": os.environ.get("REDIS_CLUSTER", ""),  # REDIS_URL names a cluster node
        "BOT_CONSOLE_PORT": "0",  # no listener on a fixed port (its beacon still runs)
    }


def gateway_env(
    workdir: Path,
    *,
    port: int,
    redis_url: str,
    model_url: str,
    twilio: FakeTwilio,
    sender: str,
    data_dir: Path,
    typing: bool = True,
    **config: Any,
) -> dict[str, str]:
    """Write `workdir/bot.json5` (WhatsApp open to everyone, its typing indicator on unless
    `typing` is False, `config` as for gateway_config_text) and return the environment of a
    `bot serve` pointed at the fakes."""
    path = workdir / "bot.json5"
    text = gateway_config_text(model_url, **config).rstrip().rstrip("}")
    typing_off = "" if typing else ", typingIndicator: false"
    whatsapp = f'{{ enabled: true, dmPolicy: "open"{typing_off} }}'
    path.write_text(text + f"channels: {{ whatsapp: {whatsapp} }} }}")
    return {
        **serve_env(workdir, config=path, port=port, data_dir=data_dir, redis_url=redis_url),
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_WHATSAPP_FROM": sender,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "TWILIO_MESSAGING_BASE_URL": twilio.base_url,
    }

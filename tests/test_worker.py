"""Turn workers on real Redis: order, one turn at a time, bursts, takeovers, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bot.app import App, open_app
from bot.config import parse_config
from bot.deadletters import RedisDeadLetters
from bot.delivery import ADVANCE, head_key, outbox_key
from bot.intake import READY_STREAM, inbox_key
from bot.logs import Logger
from bot.memory.store import RedisMemory
from bot.messages import InboundMessage, OutboundMessage
from bot.settings import Settings
from bot.wakeups import Sweeper
from bot.worker import (
    ACK_MAX,
    COMMIT,
    CRASHED,
    FINISH,
    GROUP,
    TAKE,
    BatchState,
    Worker,
    batch_key,
    lease_key,
)
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import (
    RecordingSender,
    bot_env,
    eventually,
    gateway_config,
    gateway_config_text,
    inbound,
    make_worker,
    monitored,
    running_worker,
    whatsapp_env,
)

ROOT = Path(__file__).resolve().parent.parent


def echo(delay: Callable[[], float] = lambda: 0.0) -> Callable[[Recorded], Reply]:
    """A model that answers with the last user message it was shown."""

    def answer(request: Recorded) -> Reply:
        last = request.turn_texts[-1]
        return Reply(text=f"echo:{last}", delay=delay())

    return answer


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=echo()) as fake:
        yield fake


@pytest.fixture
async def app(
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> AsyncIterator[App]:
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, gateway_config(model.base_url), events.log) as running:
        yield running


async def running(*workers: Worker) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
    stop = asyncio.Event()
    return stop, [asyncio.create_task(w.run(stop)) for w in workers]


async def test_conversations_keep_order_and_run_one_turn_at_a_time(
    app: App, model: FakeOpenAI, events: CapturedEvents
) -> None:
    """20 conversations x 5 interleaved messages, two workers, random model latency: each
    conversation's replies cover its messages in order, once, and its turns never overlap."""
    model.default = echo(lambda: random.uniform(0, 0.03))
    sender = RecordingSender()
    stop, tasks = await running(
        make_worker(app, sender, max_concurrent=4), make_worker(app, sender, max_concurrent=4)
    )
    convs = [f"test:{n}" for n in range(20)]
    plan = [(c, m) for m in range(5) for c in convs]
    for conv, m in plan:
        await app.intake.accept(inbound(f"{conv}#{m}", conversation=conv, n=m, channel="test"))
        await asyncio.sleep(random.uniform(0, 0.002))

    def covered() -> int:
        return sum(r.text.count("#") for r in sender.sent)

    await eventually(lambda: covered() >= len(plan))
    stop.set()
    await asyncio.gather(*tasks)

    seen: dict[str, list[str]] = defaultdict(list)
    for reply in sender.sent:
        seen[reply.conversation] += reply.text.removeprefix("echo:").split("\n")
    assert {c: seen[c] for c in convs} == {c: [f"{c}#{m}" for m in range(5)] for c in convs}
    active: set[str] = set()
    for event in events.events():
        if event["event"] == "turn_started":
            assert event["conversation"] not in active, "two turns of one conversation at once"
            active.add(event["conversation"])
        elif event["event"] in ("turn_finished", "turn_failed", "turn_skipped"):
            active.discard(event["conversation"])
    remembered = [t.text for t in await app.memory.load(convs[0]) if t.role == "user"]
    assert "\n".join(remembered).split("\n") == [f"{convs[0]}#{m}" for m in range(5)]
    redis = app.redis.client  # every wake-up was acked and deleted by the time workers stopped
    assert (await redis.xpending(READY_STREAM, GROUP))["pending"] == 0
    assert await redis.xlen(READY_STREAM) == 0


async def test_finished_entries_are_acked_while_running(app: App) -> None:
    """A running worker acks a finished conversation's wake-up with a read soon after."""
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender))
    await app.intake.accept(inbound("hi", conversation="test:ack", n=1, channel="test"))
    await eventually(lambda: len(sender.sent) == 1)
    redis = app.redis.client

    async def pending() -> int:
        return int((await redis.xpending(READY_STREAM, GROUP))["pending"])

    # A blocking read returns within 0.5 s, and the acks go with the first read ACK_EVERY after
    # the last ones: within about a second.
    for _ in range(100):
        if await pending() == 0:
            break
        await asyncio.sleep(0.05)
    assert await pending() == 0
    assert await redis.xlen(READY_STREAM) == 0
    stop.set()
    await asyncio.gather(*tasks)


async def test_a_burst_becomes_one_turn(app: App, model: FakeOpenAI) -> None:
    """Messages that arrive before a worker is free are answered in one turn."""
    sender = RecordingSender()
    for n, text in enumerate(["one", "two", "three"]):
        await app.intake.accept(inbound(text, conversation="test:burst", n=n, channel="test"))
    stop, tasks = await running(make_worker(app, sender))
    await eventually(lambda: len(sender.sent) == 1)
    stop.set()
    await asyncio.gather(*tasks)
    assert [r.text for r in sender.sent] == ["echo:one\ntwo\nthree"]
    assert len(model.requests_to("/responses")) == 1


async def test_commit_keeps_a_summary_alive_unless_the_turn_found_no_memory(
    redis_client: aioredis.Redis,
) -> None:
    """COMMIT that starts a conversation's turns list pushes the summary's and base's expiry
    back with it (compaction may have folded every stored turn); for a turn that found no
    memory (TurnResult.fresh) it does not look for them: one EXISTS fewer, nothing else."""
    memory = RedisMemory(redis_client, idle_days=30)
    ttl = memory.ttl_seconds
    seen: dict[str, Counter[str]] = {}
    for flag, conversation in (("", "test:compacted"), ("1", "test:new")):
        lease, batch = lease_key(conversation), batch_key(conversation)
        keys = [lease, batch, *memory.keys(conversation)]
        keys += [outbox_key(conversation), head_key(conversation)]
        await redis_client.set(lease, "token")
        await redis_client.hset(batch, mapping={"id": "b1", "state": "pending"})
        if not flag:  # compaction folded every stored turn: a summary and base, no turns
            await redis_client.set(keys[3], '{"version": 1}', ex=100)
            await redis_client.set(keys[4], 7, ex=100)
        turns = ['{"role": "user"}', '{"role": "assistant"}']
        args = ["token", "b1", "", ttl, "", 0, 600, flag, *turns]
        async with monitored(redis_client) as lines:
            assert await COMMIT.on(redis_client)(keys=keys, args=args) == 1
        seen[conversation] = Counter(
            line["command"].split()[0].upper() for line in lines if line.get("client_type") == "lua"
        )
        assert await redis_client.lrange(keys[2], 0, -1) == turns
        assert ttl - 5 < await redis_client.ttl(keys[2]) <= ttl
    assert ttl - 5 < await redis_client.ttl(memory.keys("test:compacted")[1]) <= ttl
    assert ttl - 5 < await redis_client.ttl(memory.keys("test:compacted")[2]) <= ttl
    assert seen["test:compacted"]["EXISTS"] == 1
    assert seen["test:new"]["EXISTS"] == 0
    assert seen["test:compacted"] - seen["test:new"] == Counter(EXISTS=1, EXPIRE=2)


async def test_a_turns_last_send_and_its_end_are_one_script_call(
    app: App, redis_client: aioredis.Redis
) -> None:
    """The ADVANCE recording a reply's last chunk also finishes the turn (FINISH: the batch
    deleted, the inbox found empty, the lease given up): no TAKE of its own after it."""
    conversation = "test:finish"
    sender = RecordingSender()
    worker = make_worker(app, sender, sweep_skip=("test:",))  # no second wake-up from a sweep
    async with running_worker(worker), monitored(redis_client) as lines:
        await app.intake.accept(inbound("hello", conversation=conversation, channel="test"))
        await eventually(lambda: len(sender.sent) == 1)
        async with asyncio.timeout(20):
            while await redis_client.exists(lease_key(conversation)):  # noqa: ASYNC110 - bounded
                await asyncio.sleep(0.01)
    names = {TAKE.sha: "TAKE", FINISH.sha: "FINISH", ADVANCE.sha: "ADVANCE"}
    calls = [
        names[line["command"].split()[1]]
        for line in lines
        if line.get("client_type") != "lua"
        and line["command"].lower().startswith(("evalsha", "eval "))
        and line["command"].split()[1] in names
    ]
    assert calls == ["TAKE", "FINISH"]  # the claim, then the last send and the turn's end
    assert [r.text for r in sender.sent] == ["echo:hello"]
    assert await redis_client.exists(batch_key(conversation), inbox_key(conversation)) == 0


async def test_finish_changes_nothing_for_a_worker_that_lost_its_lease(
    app: App, redis_client: aioredis.Redis
) -> None:
    """FINISH trusts TAKE's part to ADVANCE's lease check: with another worker's lease it
    records nothing, deletes no batch, drains no inbox and keeps the lease."""
    conversation = "test:finish-fenced"
    worker = make_worker(app, RecordingSender())
    await app.intake.accept(inbound("hello", conversation=conversation, channel="test"))
    claim = await worker._take_batch(conversation, "mine:1", finished="")
    assert isinstance(claim, list)
    batch = dict(zip(claim[::2], claim[1::2], strict=True))
    await redis_client.set(lease_key(conversation), "theirs:1", px=60_000)
    await app.intake.accept(inbound("again", conversation=conversation, n=2, channel="test"))
    keys = [lease_key(conversation), outbox_key(conversation), head_key(conversation)]
    keys += [lease_key(conversation), batch_key(conversation), inbox_key(conversation)]
    step = ["mine:1", "entry-1", 1, 1, 0, "1", 60]
    take = ["mine:1", "batch-2", 30_000, batch["id"], 1000, "1"]
    replies = await FINISH.on(redis_client)(keys=keys, args=step + take)
    assert replies == [["lost"]]
    assert await redis_client.get(lease_key(conversation)) == "theirs:1"
    assert await redis_client.hget(batch_key(conversation), "id") == batch["id"]
    assert await redis_client.llen(inbox_key(conversation)) == 1


async def test_a_duplicate_id_gives_one_turn(app: App, model: FakeOpenAI) -> None:
    """The same platform message twice is answered once."""
    sender = RecordingSender()
    for _ in range(2):
        await app.intake.accept(inbound("hi", conversation="test:dup", n=5, channel="test"))
    stop, tasks = await running(make_worker(app, sender))
    await eventually(lambda: len(sender.sent) == 1)
    await asyncio.sleep(0.2)  # room for a wrong second reply to show up
    stop.set()
    await asyncio.gather(*tasks)
    assert len(sender.sent) == 1


async def leave_dead_worker_state(
    redis: aioredis.Redis, conversation: str, *, state: str, reply: OutboundMessage | None = None
) -> None:
    """What a worker that died mid-turn leaves behind: its lease, batch and unacked entry."""
    await redis.xgroup_create(READY_STREAM, GROUP, id="0", mkstream=True)
    await redis.xadd(READY_STREAM, {"conversation": conversation})
    await redis.xreadgroup(GROUP, "dead-worker", {READY_STREAM: ">"}, count=1)
    message = inbound("are you there?", conversation=conversation, channel="test")
    fields = {
        "id": "b1",
        "owner": "dead-worker:token",
        "state": state,
        "messages": json.dumps([message.to_dict()]),
    }
    if reply is not None:
        fields["reply"] = json.dumps(reply.to_dict())
    await redis.hset(batch_key(conversation), mapping=fields)
    await redis.set(lease_key(conversation), "dead-worker:token", px=300)


async def test_a_dead_workers_turn_is_resumed_once(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """After the lease expires another worker reclaims the entry and runs the turn once."""
    await leave_dead_worker_state(redis_client, "test:crash", state="pending")
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender, lease_seconds=0.3))
    await eventually(lambda: len(sender.sent) == 1)
    await asyncio.sleep(0.7)  # past another lease period: no second reply may appear
    stop.set()
    await asyncio.gather(*tasks)
    assert [r.text for r in sender.sent] == ["echo:are you there?"]
    assert events.events("turn_resumed")
    assert await redis_client.exists(batch_key("test:crash")) == 0


async def test_a_committed_reply_is_sent_without_asking_the_model_again(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """A worker that died after the model answered: the stored reply is sent, no new call."""
    stored = OutboundMessage(channel="test", conversation="test:half", text="stored answer")
    await leave_dead_worker_state(redis_client, "test:half", state="replied", reply=stored)
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender, lease_seconds=0.3))
    await eventually(lambda: len(sender.sent) == 1)
    stop.set()
    await asyncio.gather(*tasks)
    assert sender.sent == [stored]
    assert model.requests_to("/responses") == []


async def test_a_worker_that_lost_its_lease_changes_nothing(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """If another worker took the lease mid-turn, the first one neither stores nor sends, and
    leaves the message for the next taker, who answers it once that lease is gone."""
    conversation = "test:stolen"
    await app.intake.accept(inbound("hello", conversation=conversation, channel="test"))
    model.default = echo(lambda: 0.5)
    sender = RecordingSender()
    worker = make_worker(app, sender)
    turn = asyncio.create_task(worker.process(conversation))
    await eventually(lambda: len(model.requests_to("/responses")) == 1)
    await redis_client.set(lease_key(conversation), "someone-else")
    assert await turn is False
    assert sender.sent == []
    assert await app.memory.load(conversation) == []
    model.default = echo()
    await redis_client.delete(lease_key(conversation))  # the thief's lease expired
    assert await make_worker(app, sender).process(conversation) is True
    assert [reply.text for reply in sender.sent] == ["echo:hello"]
    assert [turn.text for turn in await app.memory.load(conversation)] == ["hello", "echo:hello"]


@pytest.fixture
async def sink() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP endpoint worker processes deliver replies to."""
    received: list[dict[str, str]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    server = web.Application()
    server.router.add_post("/replies", collect)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/replies", received
    await runner.cleanup()


async def start_worker_process(
    name: str, config: Path, redis_url: str, sink_url: str
) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ["PATH"],
        "BOT_CONFIG": str(config),
        "REDIS_URL": redis_url,
        "SINK_URL": sink_url,
        "WORKER_NAME": name,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.procs.worker", env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def sending(redis: aioredis.Redis, pid: int) -> int:
    """How many replies the worker process `pid` is delivering now: conversations whose lease
    it holds (its tokens are "host-PID-…:…") and whose batch is committed."""
    keys = await redis.keys("conv:*:lease")
    tokens = await redis.mget(keys) if keys else []
    mine = [key for key, token in zip(keys, tokens, strict=True) if token and f"-{pid}-" in token]
    states = [await redis.hget(key.replace(":lease", ":batch"), "state") for key in mine]
    return states.count("replied")


async def workers_ready(logs: list[Path], within: float = 30) -> None:
    """Wait until every worker process has logged `worker_started`."""
    async with asyncio.timeout(within):
        while not all('"worker_started"' in log.read_text() for log in logs):  # noqa: ASYNC110 - polling with a deadline
            await asyncio.sleep(0.05)


async def start_serve_worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """A real `bot serve --role worker` process, its events written to `log`."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--role", "worker", env=env, cwd=ROOT,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM every worker process still running (they drain, then exit); wait for all."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(proc.wait() for proc in procs))


@pytest.mark.parametrize(
    "delay", [lambda: 0.0, lambda: random.uniform(0.01, 0.05)], ids=["instant", "10-50ms"]
)
async def test_three_worker_processes_survive_a_sigkill(
    delay: Callable[[], float],
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> None:
    """50 WhatsApp conversations x 10 messages posted concurrently to three `bot serve
    --role worker` processes, one killed with SIGKILL mid-run: Twilio takes every
    conversation's replies in order, each exactly once (none lost, none twice)."""
    model.default = echo(delay)
    config = tmp_path / "bot.json5"
    text = gateway_config_text(model.base_url, lease_seconds=1).rstrip().rstrip("}")
    config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    convs = [f"whatsapp:+1555{n:07d}" for n in range(50)]
    async with FakeTwilio(latency=0.03) as twilio:  # a kill lands mid-send, as it would
        env = whatsapp_env(tmp_path, twilio, redis_url=redis_url, config=config)
        logs = [tmp_path / f"worker{n}.log" for n in range(3)]
        procs = [await start_serve_worker(env, log) for log in logs]
        try:
            async with open_app(settings, gateway_config(model.base_url), events.log) as web_role:
                accepted = 0

                async def post(conv: str) -> None:
                    nonlocal accepted
                    for m in range(10):
                        message = inbound(f"{conv}#{m}", conversation=conv, n=m, channel="whatsapp")
                        await web_role.intake.accept(message)
                        accepted += 1
                        await asyncio.sleep(random.uniform(0.02, 0.2))

                def covered() -> int:
                    return sum((m.body or "").count("#") for m in twilio.messages)

                await workers_ready(logs)
                posting = asyncio.gather(*(post(c) for c in convs))
                await eventually(lambda: accepted >= 150, within=60)  # a third in
                async with asyncio.timeout(30):  # until the victim is mid-send
                    while not await sending(redis_client, procs[0].pid):  # noqa: ASYNC110 - polling with a deadline
                        await asyncio.sleep(0.005)
                procs[0].send_signal(signal.SIGKILL)
                await posting
                await eventually(lambda: covered() >= 500, within=60)
                await asyncio.sleep(1.5)  # a lease period more: late duplicates would show here
        finally:
            await stop_workers(procs)

    seen: dict[str, list[str]] = defaultdict(list)
    for sent in twilio.messages:
        seen[sent.to] += (sent.body or "").removeprefix("echo:").split("\n")
    wrong = {c: seen[c] for c in convs if seen[c] != [f"{c}#{m}" for m in range(10)]}
    duplicates = sum(len(seen[c]) - len(set(seen[c])) for c in convs)
    losses = sum(len({f"{c}#{m}" for m in range(10)} - set(seen[c])) for c in convs)
    assert not wrong, f"{duplicates} duplicates, {losses} losses: {wrong}"
    assert procs[0].returncode == -signal.SIGKILL
    assert all(p.returncode == 0 for p in procs[1:])


async def streaming(redis: aioredis.Redis, pid: int) -> int:
    """How many turns the worker process `pid` is running now (its lease, batch not yet
    committed): with a streaming model, answers being written."""
    keys = await redis.keys("conv:*:lease")
    tokens = await redis.mget(keys) if keys else []
    mine = [key for key, token in zip(keys, tokens, strict=True) if token and f"-{pid}-" in token]
    states = [await redis.hget(key.replace(":lease", ":batch"), "state") for key in mine]
    return states.count(BatchState.PENDING)


async def test_a_worker_killed_mid_stream_leaves_one_final_message_per_turn(
    model: FakeOpenAI,
    telegram: FakeTelegram,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> None:
    """12 private Telegram chats x 3 messages to three `bot serve --role worker` processes
    with drafts on and a slowly streaming reasoning model; one worker SIGKILLed while it
    streams answers: every chat gets each answer once, in order, and no draft ever shows
    the reasoning."""

    def slow_echo(request: Recorded) -> Reply:
        said = request.turn_texts[-1]
        words = " ".join(f"w{n}" for n in range(12))
        return Reply(text=f"echo:{said} {words}", reasoning="SECRET plan", token_delay=0.02)

    model.default = slow_echo
    config = tmp_path / "bot.json5"
    text = gateway_config_text(model.base_url, lease_seconds=1).rstrip().rstrip("}")
    config.write_text(text + 'channels: { telegram: { dmPolicy: "open" } } }')
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    chats = list(range(7001, 7013))
    env = bot_env(
        tmp_path, REDIS_URL=redis_url, BOT_CONFIG=str(config),
        TELEGRAM_BOT_TOKEN=telegram.token, TELEGRAM_WEBHOOK_SECRET="s3cret-Token_for-tests",
        TELEGRAM_API_BASE_URL=telegram.base_url,
    )  # fmt: skip
    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    procs = [await start_serve_worker(env, log) for log in logs]

    def said(chat: int) -> list[str]:
        return [
            line.split()[0].removeprefix("echo:")
            for sent in telegram.sent
            if sent["chat_id"] == chat
            for line in sent["visible"].split("\n")
        ]

    try:
        async with open_app(settings, gateway_config(model.base_url), events.log) as web_role:

            async def post(chat: int) -> None:
                for m in range(3):
                    message = InboundMessage(
                        channel="telegram", conversation=f"telegram:{chat}",
                        sender=f"telegram:{chat}", text=f"{chat}#{m}", platform_id=f"{chat}{m}",
                        ts=time.time(), meta={"chat_type": "private"},
                    )  # fmt: skip
                    await web_role.intake.accept(message)
                    await eventually(lambda m=m: len(said(chat)) > m, within=60)

            await workers_ready(logs)
            posting = asyncio.gather(*(post(chat) for chat in chats))
            async with asyncio.timeout(30):  # until the victim is mid-stream, drafts showing
                while not (await streaming(redis_client, procs[0].pid) and telegram.drafts):  # noqa: ASYNC110 - polling with a deadline
                    await asyncio.sleep(0.005)
            procs[0].send_signal(signal.SIGKILL)
            await posting
            await asyncio.sleep(1.5)  # a lease period more: late duplicates would show here
    finally:
        await stop_workers(procs)

    wrong = {chat: said(chat) for chat in chats if said(chat) != [f"{chat}#{m}" for m in range(3)]}
    assert not wrong
    assert telegram.drafts
    assert not any("SECRET" in draft["text"] for draft in telegram.drafts)
    assert procs[0].returncode == -signal.SIGKILL
    assert all(p.returncode == 0 for p in procs[1:])


async def test_sigterm_finishes_the_turn_in_flight_then_exits_0(
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
    sink: tuple[str, list[dict[str, str]]],
) -> None:
    """A worker told to stop mid-turn delivers that turn's reply before it exits 0."""
    sink_url, received = sink
    model.default = echo(lambda: 1.0)
    config = tmp_path / "bot.json5"
    config.write_text(gateway_config_text(model.base_url))
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    proc = await start_worker_process("w-term", config, redis_url, sink_url)
    try:
        async with open_app(settings, gateway_config(model.base_url), events.log) as web_role:
            await web_role.intake.accept(inbound("slow one", conversation="test:t", channel="test"))
            await eventually(lambda: len(model.requests_to("/responses")) == 1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [r["text"] for r in received] == ["echo:slow one"]


async def test_a_turn_that_crashes_gets_a_short_reply_and_the_next_message_is_answered(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A turn that raises (here: unreadable memory) ends in the "something went wrong" reply,
    remembers nothing, logs turn_crashed with the traceback, and the conversation goes on."""
    conversation = "test:crash-turn"
    turns_key = app.memory.keys(conversation)[0]
    await redis_client.rpush(turns_key, "this is not JSON")
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender))
    await app.intake.accept(inbound("first", conversation=conversation, n=1, channel="test"))
    await eventually(lambda: len(sender.sent) == 1)
    assert sender.sent[0].text == CRASHED
    assert (sender.sent[0].failure or "").startswith("the turn crashed: ")  # for the console
    assert await redis_client.lrange(turns_key, 0, -1) == ["this is not JSON"]
    crashed = events.events("turn_crashed")
    assert crashed
    assert "Traceback" in crashed[0]["exception"]
    await redis_client.delete(turns_key)  # the operator repairs the data
    await app.intake.accept(inbound("second", conversation=conversation, n=2, channel="test"))
    await eventually(lambda: len(sender.sent) == 2)
    stop.set()
    await asyncio.gather(*tasks)
    assert sender.sent[1].text == "echo:second"
    assert await redis_client.exists(batch_key(conversation)) == 0


async def test_a_lapsed_lease_leaves_the_batch_for_the_next_taker(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """A worker whose lease lapsed mid-turn (COMMIT refused) leaves its wake-up unacked, so
    the batch is taken again and answered once, without the person writing again."""
    conversation = "test:lapsed"
    delays = iter([0.5])
    model.default = echo(lambda: next(delays, 0.0))
    sender = RecordingSender()
    # A 2 s lease: the finished entry would be acked (within a 0.5 s read) long before it
    # could be reclaimed as idle, so only a worker that leaves it unacked answers.
    stop, tasks = await running(make_worker(app, sender, lease_seconds=2))
    await app.intake.accept(inbound("hello", conversation=conversation, channel="test"))
    await eventually(lambda: len(model.requests_to("/responses")) == 1)
    await redis_client.delete(lease_key(conversation))  # the lease lapsed; nobody took it
    await eventually(lambda: len(sender.sent) == 1, within=10)
    await asyncio.sleep(0.5)  # room for a wrong second reply to show up
    stop.set()
    await asyncio.gather(*tasks)
    assert [r.text for r in sender.sent] == ["echo:hello"]
    assert len(model.requests_to("/responses")) == 2


class TypingSender(RecordingSender):
    """A channel stand-in with a "typing…" indicator that records who was shown it."""

    def __init__(self) -> None:
        super().__init__()
        self.typing_to: list[str] = []
        self.typing_every = 4.0

    async def typing(self, message: InboundMessage) -> None:
        self.typing_to.append(message.conversation)


FRIEND, STRANGER = "whatsapp:+15550000001", "whatsapp:+15550000002"


@contextlib.asynccontextmanager
async def allowlist_worker(
    model: FakeOpenAI, redis_url: str, tmp_path: Path, sender: RecordingSender, log: Logger
) -> AsyncIterator[App]:
    """The gateway under WhatsApp dmPolicy allowlist (only FRIEND listed) with a worker running
    while the block runs, replying through `sender`."""
    text = gateway_config_text(model.base_url).rstrip().rstrip("}")
    text += f'channels: {{ whatsapp: {{ dmPolicy: "allowlist", allowFrom: ["{FRIEND}"] }} }} }}'
    config = parse_config(text, source="test.json5", env={})
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    async with open_app(settings, config, log) as app:
        worker = Worker(
            redis=app.redis.client,
            agent=app.agent,
            memory=app.memory,
            senders={"whatsapp": sender},
            log=app.log,
        )
        stop, tasks = await running(worker)
        try:
            yield app
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def say_hi(app: App, *senders: str) -> None:
    """A WhatsApp "hi" from each sender, in order."""
    for n, who in enumerate(senders):
        await app.intake.accept(inbound("hi", conversation=who, n=n, channel="whatsapp"))


async def test_typing_starts_only_after_the_access_check(
    model: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A stranger refused by dmPolicy allowlist never sees "typing…"; an allowed sender does."""
    sender = TypingSender()
    async with allowlist_worker(model, redis_url, tmp_path, sender, CapturedEvents().log) as app:
        await say_hi(app, STRANGER, FRIEND)
        await eventually(lambda: len(sender.sent) == 1)
    assert [r.conversation for r in sender.sent] == [FRIEND]
    assert STRANGER not in sender.typing_to
    assert FRIEND in sender.typing_to


async def test_a_crashed_turn_apologises_to_a_friend_and_tells_a_stranger_nothing(
    model: FakeOpenAI,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    events: CapturedEvents,
) -> None:
    """Under dmPolicy allowlist, two turns crash before their access check (unreadable
    memory): the listed sender gets the short apology; the stranger gets nothing at all
    (apology_withheld), and the stranger's batch is finished, not retried."""
    sender = RecordingSender()
    async with allowlist_worker(model, redis_url, tmp_path, sender, events.log) as app:
        for who in (STRANGER, FRIEND):
            await redis_client.rpush(app.memory.keys(who)[0], "this is not JSON")
        await say_hi(app, STRANGER, FRIEND)
        await eventually(lambda: len(sender.sent) == 1 and bool(events.events("apology_withheld")))
        await eventually(lambda: len(events.events("turn_crashed")) == 2)
    assert await redis_client.exists(batch_key(STRANGER), batch_key(FRIEND)) == 0
    assert [(r.conversation, r.text) for r in sender.sent] == [(FRIEND, CRASHED)]
    [withheld] = events.events("apology_withheld")
    assert withheld["conversation"].endswith("0002")  # the stranger (masked in the logs)
    assert await RedisDeadLetters(redis_client).list() == []


async def test_a_lost_wakeup_is_repaired_by_the_sweep(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    """Messages in an inbox without a wake-up on the stream (it was lost) are answered once
    the periodic sweep finds them."""
    conversation = "test:lost-wakeup"
    message = inbound("anyone?", conversation=conversation, channel="test")
    await redis_client.rpush(inbox_key(conversation), json.dumps(message.to_dict()))
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender, sweep_seconds=0.2))
    await eventually(lambda: len(sender.sent) == 1)
    stop.set()
    await asyncio.gather(*tasks)
    assert [r.text for r in sender.sent] == ["echo:anyone?"]


async def test_the_sweep_wakes_each_idle_conversation_with_work_once(
    app: App, redis_client: aioredis.Redis
) -> None:
    """One sweep wakes, once each, the conversations with waiting messages, a left batch, or
    both, unless a worker holds their lease; other conversation keys are not work."""
    for conversation in ("test:inbox", "test:both", "test:held"):
        await redis_client.rpush(inbox_key(conversation), "{}")
    for conversation in ("test:batch", "test:both"):
        await redis_client.hset(batch_key(conversation), mapping={"id": "b1", "state": "pending"})
    await redis_client.set(lease_key("test:held"), "someone:token")
    await redis_client.rpush(app.memory.keys("test:idle")[0], "{}")  # history only
    sweeper = Sweeper(redis_client, name="test", every=60, log=app.log)
    assert await sweeper.sweep(force=True) == 3
    woken = [f["conversation"] for _, f in await redis_client.xrange(READY_STREAM)]
    assert sorted(woken) == ["test:batch", "test:both", "test:inbox"]


async def test_a_lost_group_is_recreated_and_waiting_conversations_are_woken(
    app: App, model: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """When the ready stream and its group vanish under a running worker (Redis flushed), the
    worker recreates the group, wakes the conversations with waiting messages, and goes on."""
    sender = RecordingSender()
    stop, tasks = await running(make_worker(app, sender, sweep_seconds=3600))
    await app.intake.accept(inbound("one", conversation="test:g1", channel="test"))
    await eventually(lambda: len(sender.sent) == 1)
    await redis_client.delete(READY_STREAM)  # the group goes with the stream
    message = inbound("two", conversation="test:g2", channel="test")
    await redis_client.rpush(inbox_key("test:g2"), json.dumps(message.to_dict()))
    await eventually(lambda: len(sender.sent) == 2)
    await app.intake.accept(inbound("three", conversation="test:g3", n=3, channel="test"))
    await eventually(lambda: len(sender.sent) == 3)
    stop.set()
    await asyncio.gather(*tasks)
    assert [r.text for r in sender.sent] == ["echo:one", "echo:two", "echo:three"]
    assert events.events("worker_group_recreated")


async def test_finished_wakeups_are_acked_once_a_period_with_a_read(
    app: App, redis_client: aioredis.Redis
) -> None:
    """Finished wake-ups wait for the first read after `ack_every` (one ACK_OWNED a period,
    not one a read), and go at once when ACK_MAX are waiting."""
    await redis_client.xgroup_create(READY_STREAM, GROUP, id="0", mkstream=True)
    ids = [await redis_client.xadd(READY_STREAM, {"conversation": f"test:{n}"}) for n in range(3)]
    worker = Worker(
        redis=app.redis.client, agent=app.agent, memory=app.memory, senders={}, log=app.log,
        name="me",
    )  # fmt: skip
    worker.ack_every = 3600.0  # a period no test outlasts: only the first read's ack is due
    await redis_client.xreadgroup(GROUP, "me", {READY_STREAM: ">"}, count=3)

    async def unacked() -> list[str]:
        pending = await redis_client.xpending_range(READY_STREAM, GROUP, "-", "+", 10)
        return [p["message_id"] for p in pending]

    worker._done = [ids[0]]
    assert await worker._read(10, block=False) == []
    assert await unacked() == ids[1:]
    worker._done.append(ids[1])
    await worker._read(10, block=False)
    assert await unacked() == ids[1:]  # within the period: kept for a later read
    assert worker._done == [ids[1]]
    worker._done += [ids[2]] * (ACK_MAX - 1)  # ACK_MAX waiting: acked whatever the time
    await worker._read(10, block=False)
    assert await unacked() == []
    assert worker._done == []
    assert await redis_client.xlen(READY_STREAM) == 0


async def test_only_wakeups_this_worker_still_owns_are_acked(
    app: App, redis_client: aioredis.Redis
) -> None:
    """A finished wake-up that another worker reclaimed meanwhile is left for that worker to
    ack; the worker's own is acked and deleted."""
    await redis_client.xgroup_create(READY_STREAM, GROUP, id="0", mkstream=True)
    mine = await redis_client.xadd(READY_STREAM, {"conversation": "test:mine"})
    theirs = await redis_client.xadd(READY_STREAM, {"conversation": "test:theirs"})
    worker = Worker(
        redis=app.redis.client, agent=app.agent, memory=app.memory, senders={}, log=app.log,
        name="me",
    )  # fmt: skip
    await redis_client.xreadgroup(GROUP, "me", {READY_STREAM: ">"}, count=2)
    await redis_client.xclaim(READY_STREAM, GROUP, "other", min_idle_time=0, message_ids=[theirs])
    worker._done = [mine, theirs]  # both turns finished here, acked on the way out
    await worker.drain()
    pending = await redis_client.xpending_range(READY_STREAM, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(theirs, "other")]
    assert [entry_id for entry_id, _ in await redis_client.xrange(READY_STREAM)] == [theirs]

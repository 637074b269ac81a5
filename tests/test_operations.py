"""Operations: event sinks, `bot logs` over the Redis stream, redaction everywhere, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from bot.logreader import Filters, follow_redis, recent_from_redis
from bot.logs import EVENT_STREAM, EventHub, FileSink, RedisStreamSink, entry_events, make_logger
from bot.web import make_web_app
from tests.fakes.openai_server import FakeOpenAI, Reply, closed_port
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import (
    bot_env,
    dead_redis,
    eventually,
    gateway_config_text,
    run_bot,
    running_gateway,
    whatsapp_env,
)

PERSON = "whatsapp:+15551234567"
SECRETS = {
    "TWILIO_AUTH_TOKEN": "test-token",  # the fake Twilio's token: it signs the webhooks
    "OPENAI_API_KEY": "sk-openai-SECRET-0123456789",
    "TELEGRAM_BOT_TOKEN": "123456:SECRET-telegram",
    "TELEGRAM_WEBHOOK_SECRET": "SECRET-webhook-secret",
}


def events_in(lines: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines.splitlines() if line.strip().startswith("{")]


def test_file_sink_writes_json_lines_and_rotates(tmp_path: Path) -> None:
    """The file gets one JSON object per event and rotates past its size."""
    path = tmp_path / "log" / "bot.jsonl"
    hub, sink = EventHub(), FileSink(path, max_bytes=2000, backups=2)
    hub.add(sink)
    log = make_logger(stream=io.StringIO(), as_json=True, hub=hub)
    for n in range(40):
        log.info("turn_started", channel="console", n=n)
    sink.close()
    files = [path.with_name("bot.jsonl.2"), path.with_name("bot.jsonl.1"), path]
    assert all(f.exists() and 0 < f.stat().st_size <= 2000 for f in files)
    assert not path.with_name("bot.jsonl.3").exists()
    kept = [e["n"] for f in files for e in events_in(f.read_text())]
    assert kept == list(range(kept[0], 40))  # the newest events, in order, none missing


def test_two_processes_share_one_log_file(tmp_path: Path) -> None:
    """Web and worker on one machine write one file: when it fills, one of them rotates it
    and the other follows into the new file; no line of the kept files is lost or torn."""
    path = tmp_path / "bot.jsonl"
    web, worker = (
        FileSink(path, max_bytes=2000, backups=5),
        FileSink(path, max_bytes=2000, backups=5),
    )
    for n in range(60):
        (web if n % 2 else worker)({}, json.dumps({"event": "turn_started", "n": n}))
    web.close()
    worker.close()
    files = [path.with_name(f"bot.jsonl.{k}") for k in (5, 4, 3, 2, 1)] + [path]
    kept = [e["n"] for f in files if f.exists() for e in events_in(f.read_text())]
    assert kept == list(range(kept[0], 60))
    assert all(f.stat().st_size <= 2000 for f in files if f.exists())


async def test_stream_sink_caps_the_redis_stream(redis_client: aioredis.Redis) -> None:
    """Events reach the capped Redis stream in order; close() writes what is left."""
    hub, sink = EventHub(), RedisStreamSink(redis_client, max_len=50, every=0.05)
    hub.add(sink)
    sink.start()
    log = make_logger(stream=io.StringIO(), as_json=True, hub=hub)
    for n in range(500):
        log.info("message_received", channel="whatsapp", n=n)
    await sink.close()
    rows = await redis_client.xrange(EVENT_STREAM)
    events = [e for _, fields in rows for e in entry_events(fields)]
    assert len(events) >= 50
    assert [e["n"] for e in events] == list(range(events[0]["n"], 500))
    assert len(rows) < 200  # approximate trimming


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="hi there")) as fake:
        yield fake


async def test_no_secret_in_any_sink_and_metrics_count_the_flow(
    model: FakeOpenAI, twilio: FakeTwilio, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A WhatsApp message end to end with every secret set: no secret in stdout, the file or
    the Redis stream; numbers masked; text absent; /metrics counts what happened."""
    stdout = io.StringIO()
    hub, file_sink = EventHub(), FileSink(tmp_path / "bot.jsonl")
    hub.add(file_sink)
    log = make_logger(stream=stdout, as_json=True, secrets=SECRETS.values(), hub=hub)
    async with running_gateway(
        model_url=model.base_url, redis_url=redis_url, data_dir=tmp_path, log=log,
        channels='whatsapp: { dmPolicy: "open" }', hub=hub,
        bot_public_url="https://bot.example.com", twilio_account_sid=twilio.account_sid,
        twilio_auth_token=SECRETS["TWILIO_AUTH_TOKEN"],
        twilio_whatsapp_from="whatsapp:+14155238886",
        twilio_api_base_url=twilio.base_url, openai_api_key=SECRETS["OPENAI_API_KEY"],
        telegram_webhook_secret=SECRETS["TELEGRAM_WEBHOOK_SECRET"],
    ) as gw:  # fmt: skip
        fields = whatsapp_inbound(from_=PERSON, body="my private words")
        body, headers = signed_form(
            twilio.auth_token, "https://bot.example.com/webhooks/whatsapp", fields
        )
        assert (await gw.http.post("/webhooks/whatsapp", data=body, headers=headers)).status == 200
        await asyncio.wait_for(twilio.wait_for_messages(1), 10)
        await eventually(lambda: "reply_sent" in stdout.getvalue())
        metrics = await (await gw.http.get("/metrics")).text()
    file_sink.close()
    stream = "\n".join(f["e"] for _, f in await redis_client.xrange(EVENT_STREAM))
    for sink in (stdout.getvalue(), (tmp_path / "bot.jsonl").read_text(), stream):
        assert "reply_sent" in sink
        for secret in SECRETS.values():
            assert secret not in sink
        assert "5551234567" not in sink
        assert "my private words" not in sink
    assert 'switchboard_messages_received_total{channel="whatsapp"} 1.0' in metrics
    assert 'switchboard_replies_sent_total{channel="whatsapp"} 1.0' in metrics
    assert 'outcome="ok",provider="local"' in metrics
    assert "switchboard_turn_seconds_count 1.0" in metrics
    assert "switchboard_inbox_depth" in metrics


async def test_readyz_reports_redis_down() -> None:
    """/readyz answers 503 with a JSON body of checks when Redis does not answer."""
    dead = dead_redis()
    app = make_web_app(redis=dead, intake=None, log=make_logger(stream=io.StringIO()))  # type: ignore[arg-type]
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["checks"]["redis"].startswith("error")
    await dead.aclose()


async def test_bot_logs_filters_the_stream(
    redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """`bot logs` shows the last N matching events by level, event, channel, conversation."""
    sink = RedisStreamSink(redis_client, max_len=1000)
    log = make_logger(stream=io.StringIO(), as_json=True, hub=_hub(sink))
    for n in range(30):
        log.info("turn_started", channel="whatsapp", conversation=PERSON if n % 2 else "x", n=n)
    log.warning("model_fallback", channel="telegram", conversation="telegram:42", n=99)
    await sink.flush()
    env = bot_env(tmp_path, REDIS_URL=redis_url)
    last = await run_bot(
        "logs", "--json", "-n", "5", "--conversation", PERSON, env=env, cwd=tmp_path
    )
    assert last.code == 0
    assert [e["n"] for e in events_in(last.out)] == [21, 23, 25, 27, 29]
    out = (await run_bot("logs", "--json", "--level", "warning", env=env, cwd=tmp_path)).out
    assert [e["event"] for e in events_in(out)] == ["model_fallback"]
    kinds = "model_fallback,turn_started"
    out = (
        await run_bot(
            "logs", "--json", "--channel", "telegram", "--event", kinds, env=env, cwd=tmp_path
        )
    ).out
    assert [e["n"] for e in events_in(out)] == [99]
    out = (await run_bot("logs", "--since", "1h", "-n", "2", env=env, cwd=tmp_path)).out
    assert "model_fallback" in out
    assert "{" not in out  # readable columns, not JSON


async def test_following_starts_where_the_recent_events_end(redis_client: aioredis.Redis) -> None:
    """`bot logs -f -n 0` (and a first read of an empty stream) follows from the newest entry
    at start, so an event written before the first blocking read is not skipped."""
    matches_all = Filters()
    _, start = await recent_from_redis(redis_client, matches_all, 0)
    await redis_client.xadd(EVENT_STREAM, {"e": json.dumps({"event": "first", "level": "info"})})
    _, after_first = await recent_from_redis(redis_client, matches_all, 0)
    await redis_client.xadd(EVENT_STREAM, {"e": json.dumps({"event": "second", "level": "info"})})
    followed: list[object] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.5):  # follow_redis never ends by itself
            async for event in follow_redis(redis_client, matches_all, start):
                followed.append(event["event"])
    async with asyncio.timeout(3):
        async for event in follow_redis(redis_client, matches_all, after_first):
            assert event["event"] == "second"
            break
    assert followed == ["first", "second"]


def _hub(sink: RedisStreamSink) -> EventHub:
    hub = EventHub()
    hub.add(sink)
    return hub


async def test_bot_logs_falls_back_to_the_file(tmp_path: Path) -> None:
    """With Redis unreachable `bot logs` says so and shows this machine's log file."""
    path = tmp_path / "var" / "log" / "bot.jsonl"
    hub, sink = EventHub(), FileSink(path)
    hub.add(sink)
    make_logger(stream=io.StringIO(), as_json=True, hub=hub).info("reply_sent", channel="console")
    sink.close()
    env = bot_env(tmp_path, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    result = await run_bot("logs", "--json", env=env, cwd=tmp_path)
    code, out, err = result.code, result.out, result.err
    assert code == 0
    assert "Redis is unreachable" in err
    assert [e["event"] for e in events_in(out)] == ["reply_sent"]


async def test_bot_logs_follows_one_conversation_across_two_processes(
    model: FakeOpenAI, twilio: FakeTwilio, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A web and a worker process: `bot logs -f --conversation` shows that conversation's
    events from both, live, and no other conversation's."""
    port = closed_port()
    config = tmp_path / "bot.json5"
    text = gateway_config_text(model.base_url).rstrip().rstrip("}")
    config.write_text(text + 'channels: { whatsapp: { dmPolicy: "open" } } }')
    env = whatsapp_env(tmp_path, twilio, redis_url=redis_url, config=config, port=port)
    spawn = {"env": env, "cwd": tmp_path, "stdout": asyncio.subprocess.DEVNULL,
             "stderr": asyncio.subprocess.DEVNULL}  # fmt: skip
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--role", role, **spawn
        )  # type: ignore[arg-type]
        for role in ("web", "worker")
    ]
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "logs", "-f", "-n", "50", "--json", "--conversation", PERSON,
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert tail.stdout is not None
    seen: list[dict[str, object]] = []
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            for who, text_ in ((PERSON, "hello"), ("whatsapp:+15559990000", "other")):
                body, headers = signed_form(
                    twilio.auth_token, url, whatsapp_inbound(from_=who, body=text_)
                )
                for _ in range(100):  # until the web process listens
                    try:
                        async with http.post(url, data=body, headers=headers) as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
        async with asyncio.timeout(30):
            # Each process writes its events every 0.2 s: the web's may land after the worker's.
            while not {"message_received", "reply_sent"} <= {e.get("event") for e in seen}:
                seen += events_in((await tail.stdout.readline()).decode())
    finally:
        for proc in [*procs, tail]:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    assert {e["event"] for e in seen} >= {"message_received", "turn_started", "reply_sent"}
    assert len({e["proc"] for e in seen}) == 2
    assert {e["conversation"] for e in seen} == {"whatsapp:+1555•••4567"}

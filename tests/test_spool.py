"""The intake spool on real Redis: fsync'd lines, drained in order and once, adopted safely."""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.errors import StoreUnavailable
from bot.intake import RedisIntake, inbox_key
from bot.logs import make_logger
from bot.messages import InboundMessage
from bot.spool import Spool, SpoolDrainer, SpooledIntake
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import closed_port
from tests.helpers import eventually, inbound

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"


def wa(text: str, n: int, conversation: str = ADA) -> InboundMessage:
    return inbound(text, conversation=conversation, n=n, channel="whatsapp")


async def inbox(redis: aioredis.Redis, conversation: str) -> list[str]:
    return [json.loads(m)["text"] for m in await redis.lrange(inbox_key(conversation), 0, -1)]


@pytest.fixture
async def down(events: CapturedEvents) -> AsyncIterator[RedisIntake]:
    """Intake on a Redis that does not answer."""
    dead = aioredis.Redis(
        port=closed_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    yield RedisIntake(dead, log=events.log)
    await dead.aclose()


@pytest.fixture
def up(redis_client: aioredis.Redis, events: CapturedEvents) -> RedisIntake:
    """Intake on the test Redis."""
    return RedisIntake(redis_client, log=events.log)


@pytest.fixture
def spool(tmp_path: Path, events: CapturedEvents) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool", log=events.log)
    yield spool
    spool.close()


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


async def test_append_writes_one_private_json_line_per_message(
    spool: Spool, tmp_path: Path
) -> None:
    """Each spooled message is one JSON line in this process's own file, readable by its owner
    only (it holds message text)."""
    await spool.append(wa("first", 1))
    await spool.append(wa("second", 2))
    [path] = files(tmp_path / "spool")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    lines = path.read_bytes().splitlines()
    assert [InboundMessage.from_dict(json.loads(x)).text for x in lines] == ["first", "second"]
    assert spool.pending


async def test_a_burst_of_appends_shares_fsyncs_and_keeps_arrival_order(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 messages spooled at once (an overloaded web process) are written in arrival order
    with a handful of fsyncs, not one each: the overflow path stays cheap."""
    fsyncs = 0
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    await asyncio.gather(*(spool.append(wa(f"m{n}", n)) for n in range(200)))
    [path] = files(tmp_path / "spool")
    texts = [InboundMessage.from_dict(json.loads(x)).text for x in path.read_bytes().splitlines()]
    assert texts == [f"m{n}" for n in range(200)]
    assert fsyncs <= 10  # the file, its folder, and one per batch


async def test_redis_down_spools_and_answers_success_without_logging_text(
    down: RedisIntake, spool: Spool
) -> None:
    """With Redis down, intake keeps the message in the spool and reports it stored; the
    message_spooled event carries no text (even with content logging on) and a masked number."""
    buffer = io.StringIO()
    log = make_logger(level="debug", stream=buffer, as_json=True, include_content=True)
    assert await SpooledIntake(down, spool, log=log).accept(wa("my secret words", 1)) is True
    [event] = [json.loads(x) for x in buffer.getvalue().splitlines()]
    assert event["event"] == "message_spooled"
    assert event["conversation"] == "whatsapp:+1555•••1111"
    assert "my secret words" not in buffer.getvalue()
    assert spool.pending


async def test_a_hung_redis_does_not_hold_the_webhook(spool: Spool, events: CapturedEvents) -> None:
    """A Redis that accepts the connection but never answers: the message is spooled once the
    intake deadline passes, long before the client's own timeouts would give up."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = aioredis.Redis(port=port, socket_timeout=60, retry=Retry(NoBackoff(), 0))
    intake = SpooledIntake(RedisIntake(hung, log=events.log), spool, log=events.log, deadline=0.3)
    try:
        assert await asyncio.wait_for(intake.accept(wa("hello", 1)), 10) is True
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
        await hung.aclose()
    assert spool.pending
    assert "0.3 s" in events.events("intake_failed")[0]["error"]
    assert events.events("message_spooled")


async def test_drain_moves_messages_in_order_and_new_ones_queue_behind(
    down: RedisIntake, up: RedisIntake, spool: Spool, redis_client: aioredis.Redis,
    events: CapturedEvents, tmp_path: Path,
) -> None:  # fmt: skip
    """Messages spooled during an outage reach Redis in arrival order; one that arrives after
    Redis is back but before the drain queues behind them instead of jumping ahead."""
    outage, recovered = (SpooledIntake(i, spool, log=events.log) for i in (down, up))
    for n, (text, who) in enumerate([("a1", ADA), ("b1", BOB), ("a2", ADA)], 1):
        await outage.accept(wa(text, n, who))
    await recovered.accept(wa("a3", 4))
    assert await inbox(redis_client, ADA) == []  # behind the spooled ones
    assert await spool.drain(up) == 4
    assert await inbox(redis_client, ADA) == ["a1", "a2", "a3"]
    assert await inbox(redis_client, BOB) == ["b1"]
    assert not spool.pending
    [path] = files(tmp_path / "spool")
    assert path.stat().st_size == 0  # emptied only after Redis confirmed
    [drained] = events.events("spool_drained")
    assert drained["count"] == 4
    assert isinstance(drained["ms"], int)
    await recovered.accept(wa("a4", 5))  # spool empty: straight to Redis
    assert await inbox(redis_client, ADA) == ["a1", "a2", "a3", "a4"]


async def test_a_drain_cut_short_by_redis_resumes_where_it_stopped(
    down: RedisIntake, up: RedisIntake, spool: Spool, redis_client: aioredis.Redis
) -> None:
    """If Redis stops answering mid-drain, the file is kept and the next drain goes on."""
    for n in range(1, 4):
        await spool.append(wa(f"m{n}", n))
    with pytest.raises(StoreUnavailable):
        await spool.drain(down)
    assert spool.pending
    assert await spool.drain(up) == 3
    assert await inbox(redis_client, ADA) == ["m1", "m2", "m3"]


async def test_a_message_already_in_redis_is_not_stored_twice(
    up: RedisIntake, spool: Spool, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A platform retry spooled after the first delivery reached Redis is deduplicated."""
    await up.accept(wa("hello", 7))
    await spool.append(wa("hello", 7))
    await spool.drain(up)
    assert await inbox(redis_client, ADA) == ["hello"]
    assert events.events("message_duplicate")


def write_dead_file(folder: Path, name: str, lines: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"".join(lines))
    return path


def line(message: InboundMessage) -> bytes:
    return json.dumps(message.to_dict()).encode() + b"\n"


async def test_torn_and_corrupt_lines_are_skipped_with_a_warning(
    up: RedisIntake, spool: Spool, redis_client: aioredis.Redis, events: CapturedEvents,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A power cut mid-write leaves a torn last line, and a line may be garbage: each is
    skipped with a warning and never blocks the messages around it."""
    torn = line(wa("lost", 4))[:25]
    path = write_dead_file(
        tmp_path / "spool",
        "999-dead.jsonl",
        [line(wa("one", 1)), b"{not json\n", line(wa("two", 2)), torn],
    )
    assert spool.adopt() == 1
    assert await spool.drain(up) == 2
    assert await inbox(redis_client, ADA) == ["one", "two"]
    reasons = [e["reason"] for e in events.events("spool_line_skipped")]
    assert reasons == ["unreadable line: JSONDecodeError", "torn last line"]
    assert not path.exists()


async def test_a_big_file_is_drained_a_chunk_at_a_time(
    up: RedisIntake, redis_client: aioredis.Redis, events: CapturedEvents, tmp_path: Path
) -> None:
    """Files are read in chunks: lines that straddle a chunk or are longer than one arrive
    whole and in order, and only a torn last line is skipped."""
    texts = [f"m{n}" + "x" * (n * 37 % 300) for n in range(1, 30)]
    lines = [line(wa(text, n)) for n, text in enumerate(texts, 1)]
    write_dead_file(tmp_path / "spool", "999-dead.jsonl", [*lines, lines[0][:40]])
    spool = Spool(tmp_path / "spool", log=events.log, read_chunk=64)
    try:
        spool.adopt()
        await spool.append(wa("own", 99))
        assert await asyncio.wait_for(spool.drain(up), 10) == len(texts) + 1
    finally:
        spool.close()
    assert await inbox(redis_client, ADA) == [*texts, "own"]
    assert [e["reason"] for e in events.events("spool_line_skipped")] == ["torn last line"]


async def test_two_spools_never_adopt_the_same_file(
    up: RedisIntake, tmp_path: Path, events: CapturedEvents, redis_client: aioredis.Redis
) -> None:
    """Two drainers that find a dead process's file at once: one adopts it, the other
    leaves it alone, and its messages reach Redis once."""
    write_dead_file(tmp_path / "spool", "999-dead.jsonl", [line(wa("one", 1))])
    first, second = (Spool(tmp_path / "spool", log=events.log) for _ in range(2))
    try:
        assert first.adopt() + second.adopt() == 1
        assert first.pending
        assert not second.pending
        await first.drain(up)
    finally:
        first.close()
        second.close()
    assert await inbox(redis_client, ADA) == ["one"]
    assert files(tmp_path / "spool") == []


HOLDER = """
import asyncio, os, sys
from bot.logs import make_logger
from bot.messages import InboundMessage
from bot.spool import Spool

spool = Spool(sys.argv[1], log=make_logger(stream=sys.stderr))
message = InboundMessage(channel="whatsapp", conversation=sys.argv[3], sender=sys.argv[3],
                         text=sys.argv[4], platform_id="held-1", ts=1.0)
asyncio.run(spool.append(message))
if sys.argv[2] == "crash":
    os._exit(1)  # no clean-up: the file stays, its lock goes with the process
print("ready", flush=True)
sys.stdin.readline()
os._exit(0)
"""


async def spooling_process(folder: Path, mode: str, text: str) -> asyncio.subprocess.Process:
    """A separate process that spools one message and then crashes or stays alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(folder), mode, ADA, text,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return proc


async def test_a_crashed_process_file_is_adopted_and_drained(
    up: RedisIntake, spool: Spool, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """The file of a process that died with messages in it is adopted, drained into Redis
    and removed."""
    proc = await spooling_process(tmp_path / "spool", "crash", "from the dead")
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    assert len(files(tmp_path / "spool")) == 1
    assert spool.adopt() == 1
    await spool.drain(up)
    assert await inbox(redis_client, ADA) == ["from the dead"]
    assert files(tmp_path / "spool") == []


async def test_a_live_process_file_is_never_adopted(
    up: RedisIntake, spool: Spool, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Another live process's file is left to it; once that process is gone it is adopted."""
    proc = await spooling_process(tmp_path / "spool", "live", "still mine")
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        assert spool.adopt() == 0
        assert not spool.pending
        assert await inbox(redis_client, ADA) == []
    finally:
        proc.stdin.write(b"\n")
        await proc.wait()
    assert spool.adopt() == 1
    await spool.drain(up)
    assert await inbox(redis_client, ADA) == ["still mine"]


async def test_a_full_disk_answers_503_and_leaves_no_torn_line(
    down: RedisIntake, up: RedisIntake, spool: Spool, redis_client: aioredis.Redis,
    events: CapturedEvents, tmp_path: Path,
) -> None:  # fmt: skip
    """When the spool cannot be written either, intake raises StoreUnavailable (503) and the
    half-written line is cut off, so the next message is not glued to it."""
    intake = SpooledIntake(down, spool, log=events.log)
    await intake.accept(wa("kept", 1))
    [path] = files(tmp_path / "spool")
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
    try:
        with pytest.raises(StoreUnavailable, match="spool"):
            await intake.accept(wa("refused " * 20, 2))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.stat().st_size == size
    assert events.events("spool_failed")
    await intake.accept(wa("after", 3))
    await spool.drain(up)
    assert await inbox(redis_client, ADA) == ["kept", "after"]
    assert not events.events("spool_line_skipped")


async def test_the_drainer_adopts_and_drains_in_the_background(
    up: RedisIntake, redis_client: aioredis.Redis, events: CapturedEvents, tmp_path: Path
) -> None:
    """The background drainer finds a dead process's file and moves its messages into Redis,
    then stops when asked; an own file left empty is removed at close."""
    write_dead_file(tmp_path / "spool", "999-dead.jsonl", [line(wa("one", 1))])
    spool = Spool(tmp_path / "spool", log=events.log)
    await spool.append(wa("two", 2))
    stop = asyncio.Event()
    task = asyncio.create_task(SpoolDrainer(spool=spool, intake=up, log=events.log).run(stop))
    await eventually(lambda: not spool.pending, 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    spool.close()
    assert await inbox(redis_client, ADA) == ["one", "two"]
    assert files(tmp_path / "spool") == []

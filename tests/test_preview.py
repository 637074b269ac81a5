"""The answer as it streams, through the stack: providers, failover and the worker show a
channel's preview only final text, reset it when a model dies mid-answer, and never fail a turn
for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.app import App, open_app
from bot.messages import Turn
from bot.settings import Settings
from bot.worker import Worker
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import (
    PreviewSender,
    RecordingPreview,
    failover_client,
    gateway_config,
    inbound,
)

HELLO = [Turn(role="user", text="hello", ts=0.0)]
APIS = ["openai-responses", "openai-completions"]
ANSWER = "The answer, 3 < 4 and <b>forty-two</b>, is written word by word."


@pytest.mark.parametrize("api", APIS)
async def test_previews_are_prefixes_of_the_final_text_and_never_reasoning(
    primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents, api: str
) -> None:
    """Every preview of a streamed answer (chat completions with a <think> block and
    reasoning_content, or Responses with a reasoning item) is a prefix of the final text,
    growing to it; "thinking" comes first; no reasoning and no reset."""
    primary.script(Reply(text=ANSWER, reasoning="SECRET-REASONING goes here"))
    sink = RecordingPreview()
    async with failover_client(primary, backup, events.log, api=api) as client:
        completion = await client.complete(instructions="be brief", turns=HELLO, preview=sink)
    assert completion.text == ANSWER
    assert sink.kinds[0] == "thinking"
    assert "reset" not in sink.kinds
    assert len(sink.texts) >= 3  # it grew as it was written (every PREVIEW_STEP_CHARS)
    assert all(ANSWER.startswith(text) for text in sink.texts)
    assert sink.texts[-1] == ANSWER
    assert not any("SECRET" in text for text in sink.texts)


@pytest.mark.parametrize("api", APIS)
async def test_a_mid_stream_failover_resets_the_preview(
    primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents, api: str
) -> None:
    """A primary that goes silent after some text: the preview is reset before the fallback's
    text, which is then shown alone, and the final text is the fallback's alone."""
    dead = "dead model words " * 4
    primary.script(Reply(text=dead, reasoning=None, stall_after=3))
    sink = RecordingPreview()
    async with failover_client(primary, backup, events.log, api=api, timeout_s=0.6) as client:
        completion = await client.complete(instructions="be brief", turns=HELLO, preview=sink)
    assert completion.text == "from backup"
    reset = sink.kinds.index("reset")
    before = [text for kind, text in sink.calls[:reset] if kind == "text"]
    after = [text for kind, text in sink.calls[reset:] if kind == "text"]
    assert before
    assert all(dead.startswith(text) for text in before)
    assert all("from backup".startswith(text) for text in after)
    assert after[-1] == "from backup"


async def test_an_unclosed_think_previews_nothing(
    primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """A chat-completions answer that opens <think> and never closes it shows no text (it is
    "thinking"); it has no final text, so the fallback answers, and only its text is shown."""
    primary.script(Reply(text="<think>SECRET still reasoning about it all", reasoning=None))
    sink = RecordingPreview()
    async with failover_client(primary, backup, events.log, api="openai-completions") as client:
        completion = await client.complete(instructions="be brief", turns=HELLO, preview=sink)
    assert completion.text == "from backup"
    assert sink.kinds[:2] == ["thinking", "reset"]  # the primary's "thinking", then void
    assert all("from backup".startswith(text) for text in sink.texts)


@pytest.fixture
async def app(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> AsyncIterator[App]:  # fmt: skip
    settings = Settings(redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None)  # type: ignore[call-arg]
    config = gateway_config(primary.base_url, backup.base_url)
    async with open_app(settings, config, events.log) as running:
        yield running


async def run_with(app: App, sender: PreviewSender, text: str, n: int) -> None:
    """One turn of `text` through intake and a worker whose console channel is `sender`."""
    worker = Worker(
        redis=app.redis.client, agent=app.agent, memory=app.memory,
        senders={"console": sender}, log=app.log,
    )  # fmt: skip
    assert await app.intake.accept(inbound(text, n=n))
    assert await worker.process("console:tester")


async def test_the_worker_previews_a_turn_for_a_channel_that_offers_it(
    app: App, primary: FakeOpenAI
) -> None:
    """A channel with previews gets one per turn: the final text as it grows, then closed
    when the turn ends, and the reply itself sent once."""
    primary.script(Reply(text=ANSWER))
    sender = PreviewSender()
    await run_with(app, sender, "hi", 1)
    [preview] = sender.previews
    assert [m.text for m in sender.sent] == [ANSWER]
    assert preview.texts[-1] == ANSWER
    assert preview.kinds[-1] == "close"


async def test_a_failing_preview_changes_nothing_else(
    app: App, primary: FakeOpenAI, events: CapturedEvents
) -> None:
    """A preview whose every call raises: the reply is the same, sent once, and the failure
    is one warning for the turn (the rest debug)."""
    primary.script(Reply(text=ANSWER), Reply(text=ANSWER))
    working, broken = PreviewSender(), PreviewSender(fail=True)
    await run_with(app, working, "hi", 1)
    await run_with(app, broken, "hi again", 2)
    assert [m.text for m in broken.sent] == [m.text for m in working.sent] == [ANSWER]
    assert len(broken.previews[0].calls) == len(working.previews[0].calls)  # it kept trying
    failed = events.events("preview_failed")
    assert [e["level"] for e in failed].count("warning") == 1
    assert events.events("turn_crashed") == []

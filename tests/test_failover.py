"""Failover with a shared breaker: classification, skipping open models, probes, timeouts."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.errors import AllModelsFailed, ContextOverflow, Severity
from bot.llm.breaker import READ_EVERY, RedisBreaker, breaker_key
from bot.llm.failover import FailoverClient
from bot.messages import Turn
from bot.reads import fetch
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import (
    LLAMACPP_ITEM_MESSAGE,
    FakeOpenAI,
    Reply,
    context_overflow,
    error_reply,
    llamacpp_refusal,
    model_not_loaded,
    server_error,
    unauthorized,
)
from tests.helpers import Clock, eventually, failover_client, gateway_config_text

HELLO = [Turn(role="user", text="hello", ts=0.0)]
PRIMARY, BACKUP = "local/local-model", "backup/backup-model"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def failover(
    primary: FakeOpenAI, backup: FakeOpenAI, redis: aioredis.Redis, events: CapturedEvents,
    *, breaker: bool = True, **options: Any,
) -> AbstractAsyncContextManager[FailoverClient]:  # fmt: skip
    """The two fakes behind failover, with the breaker in Redis unless `breaker` is False."""
    return failover_client(primary, backup, events.log, redis=redis if breaker else None, **options)


async def ask(client: FailoverClient) -> str:
    return (await client.complete(instructions="be brief", turns=HELLO)).text


@pytest.fixture
async def client(
    primary: FakeOpenAI,
    backup: FakeOpenAI,
    redis_client: aioredis.Redis,
    events: CapturedEvents,
    clock: Clock,
) -> AsyncIterator[FailoverClient]:
    async with failover(primary, backup, redis_client, events, clock=clock) as made:
        yield made


@pytest.mark.parametrize(
    "failure",
    [server_error(), error_reply(429, "slow down"), unauthorized(), error_reply(402, "pay"),
     error_reply(403, "no"), error_reply(404, "no such model"), model_not_loaded(),
     Reply(text="", reasoning="only thinking")],
    ids=["500", "429", "401", "402", "403", "404", "lmstudio-not-loaded", "empty-final-text"],
)  # fmt: skip
async def test_unavailable_answers_fall_back(
    client: FailoverClient, primary: FakeOpenAI, failure: Reply
) -> None:
    """Every 'this model cannot answer now' answer hands the turn to the next model."""
    primary.script(failure)
    assert await ask(client) == "from backup"


@pytest.mark.parametrize("lmstudio", [True, False], ids=["lmstudio", "openai"])
async def test_context_overflow_is_its_own_error(
    client: FailoverClient, primary: FakeOpenAI, backup: FakeOpenAI, lmstudio: bool
) -> None:
    """A prompt over the window raises ContextOverflow (for compaction), with no fallback."""
    primary.script(context_overflow(lmstudio=lmstudio))
    with pytest.raises(ContextOverflow):
        await ask(client)
    assert backup.requests_to("/responses") == []


async def test_a_refused_request_goes_to_the_next_model_and_leaves_the_breaker_closed(
    client: FailoverClient, primary: FakeOpenAI, redis_client: aioredis.Redis,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """llama.cpp's 400 hands each turn to the next model; the refusing server is up, so its
    breaker never opens (its next turn calls it again), and one event per refusal names the
    model and what it said, with the status once."""
    primary.script(*[llamacpp_refusal()] * 4)
    for _ in range(4):  # past the breaker's threshold of three failures in a row
        assert await ask(client) == "from backup"
    assert len(primary.requests_to("/responses")) == 4
    assert not events.events("breaker_opened")
    assert await redis_client.exists(breaker_key(PRIMARY)) == 0
    told = [e for e in events.events() if LLAMACPP_ITEM_MESSAGE in str(e.get("error", ""))]
    assert len(told) == 4
    assert {(e["event"], e["model"], e["outcome"]) for e in told} == {
        ("model_attempt", PRIMARY, "refused")
    }
    assert told[0]["error"] == (f"{PRIMARY}: refused the request: HTTP 400 {LLAMACPP_ITEM_MESSAGE}")
    [fallback, *_] = events.events("model_fallback")
    assert (fallback["model"], fallback["to"]) == (PRIMARY, BACKUP)


@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_names_its_status_once(
    client: FailoverClient, primary: FakeOpenAI, backup: FakeOpenAI, status: int
) -> None:
    """A server whose error code repeats the status (llama.cpp's `"code": 400`) still reads
    "HTTP 400 <message>", never "HTTP 400 400"."""
    error = {"code": status, "message": "went wrong", "type": "invalid_request_error"}
    primary.script(Reply(status=status, error=error))
    backup.script(Reply(status=status, error=error))
    with pytest.raises(AllModelsFailed) as failed:
        await ask(client)
    assert f"HTTP {status} went wrong" in str(failed.value)
    assert f"{status} {status}" not in str(failed.value)


async def test_a_strict_server_takes_every_turn_of_a_conversation(
    client: FailoverClient, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """History with the assistant's turns goes in the explicit item form, which a server
    holding llama.cpp's rules answers: the second turn is the primary's too."""
    history = [
        *HELLO,
        Turn(role="assistant", text="hi there", ts=1.0),
        Turn(role="user", text="and again", ts=2.0),
    ]
    answer = await client.complete(instructions="be brief", turns=history)
    assert answer.text == "from primary"
    assert backup.requests_to("/responses") == []
    [request] = primary.requests_to("/responses")
    assert request.turn_texts == ["hello", "hi there", "and again"]


async def test_every_model_refusing_says_so(
    client: FailoverClient, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """When every model refused the request itself, AllModelsFailed says it was refused (so
    the person is asked to rephrase, not to wait)."""
    primary.script(error_reply(400, "invalid 'input'"))
    backup.script(error_reply(400, "invalid 'input'"))
    with pytest.raises(AllModelsFailed) as failed:
        await ask(client)
    assert failed.value.refused


async def test_a_probe_the_server_refuses_still_closes_the_breaker(
    client: FailoverClient, primary: FakeOpenAI, events: CapturedEvents, clock: Clock
) -> None:
    """A recovering server that answers the probe with a 400 is up: its breaker closes."""
    await primary.stop_listening()
    assert await ask(client) == "from backup"
    await primary.start_listening()
    primary.script(llamacpp_refusal())
    clock.now += 0.35  # past the test breaker's cooldown (0.3 s)
    assert await ask(client) == "from backup"  # and the probe starts
    await eventually(lambda: bool(events.events("breaker_closed")))
    assert await ask(client) == "from primary"


async def test_refused_primary_is_skipped_until_it_comes_back(
    client: FailoverClient, primary: FakeOpenAI, events: CapturedEvents, clock: Clock
) -> None:
    """A refused connection opens the breaker at once; later turns skip the primary without a
    call; after the cooldown a background probe (no person waits on it) finds it back and it
    serves again."""
    await primary.stop_listening()
    assert await ask(client) == "from backup"
    [opened] = events.events("breaker_opened")
    assert opened["model"] == PRIMARY
    for _ in range(5):
        assert await ask(client) == "from backup"
    skipped = [e for e in events.events("model_skipped") if e["model"] == PRIMARY]
    assert len(skipped) == 5
    await primary.start_listening()
    clock.now += 0.35  # past the test breaker's cooldown (0.3 s)
    assert await ask(client) == "from backup"  # and the probe starts
    await eventually(lambda: bool(events.events("breaker_closed")))
    [probe] = events.events("model_probe")
    assert probe["outcome"] == "ok"
    assert primary.requests_to("/responses")[-1].json["max_output_tokens"] == 16
    assert await ask(client) == "from primary"


async def test_breaker_decisions_read_with_the_turn_state(
    client: FailoverClient, primary: FakeOpenAI, redis_client: aioredis.Redis,
    events: CapturedEvents, clock: Clock,
) -> None:  # fmt: skip
    """The decisions a turn reads up front (no script, no write) say what `check` would:
    clean, closed after a failure, open while cooling down, due after it. Given to complete(),
    open skips the primary without a request; due lets this caller probe, in the background."""
    read = client.read_breakers()
    assert read is not None

    async def decisions() -> dict[str, str]:
        return await fetch(redis_client, read, what="reading the breakers")

    assert (await decisions())[PRIMARY] == "clean"
    primary.script(server_error())
    await ask(client)
    assert (await decisions())[PRIMARY] == "closed"
    await primary.stop_listening()
    await ask(client)
    ahead = await decisions()
    assert ahead[PRIMARY] == "open"
    await primary.start_listening()
    calls = len(primary.requests)
    answer = await client.complete(instructions="be brief", turns=HELLO, breakers=ahead)
    assert answer.text == "from backup"
    assert len(primary.requests) == calls
    clock.now += 0.35  # past the test breaker's cooldown (0.3 s)
    ahead = await decisions()
    assert ahead[PRIMARY] == "due"
    answer = await client.complete(instructions="be brief", turns=HELLO, breakers=ahead)
    assert answer.text == "from backup"
    await eventually(lambda: bool(events.events("model_probe")))
    assert (await decisions())[PRIMARY] == "clean"
    answer = await client.complete(instructions="be brief", turns=HELLO, breakers=ahead)
    assert answer.text == "from primary"


async def test_a_busy_process_reads_the_breakers_once_a_period(
    redis_client: aioredis.Redis, events: CapturedEvents, clock: Clock
) -> None:
    """A process reads the shared breakers from Redis at most every READ_EVERY s (a read in
    between costs no command): another process's opening is seen that much later, this
    process's own change at once."""
    mine, theirs = (RedisBreaker(redis_client, log=events.log, clock=clock) for _ in range(2))

    async def decision() -> tuple[str, int]:
        read = mine.read_decisions([PRIMARY])
        return (await fetch(redis_client, read, what="reading"))[PRIMARY], read.count

    assert await decision() == ("clean", 1)
    await theirs.failure(PRIMARY, severity=Severity.DOWN, probe=False)
    clock.now += READ_EVERY / 2
    assert await decision() == ("clean", 0)  # as a turn that started before the opening
    clock.now += READ_EVERY / 2
    assert await decision() == ("open", 1)
    await mine.success(PRIMARY, probe=False)
    assert await decision() == ("clean", 1)
    await mine.failure(PRIMARY, severity=Severity.DOWN, probe=False)
    assert await decision() == ("open", 1)
    assert await decision() == ("open", 0)


async def test_hanging_primary_costs_one_timeout_then_nothing(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A primary that accepts and never answers costs the first turn its timeout; while the
    breaker is open it sees no request at all."""
    primary.default = Reply(hang=True)
    async with failover(
        primary, backup, redis_client, events, timeout_s=0.5, cooldown=30
    ) as client:
        assert await ask(client) == "from backup"
        assert "timed out" in events.events("model_fallback")[0]["error"]
        seen = len(primary.requests)
        for _ in range(10):
            assert await ask(client) == "from backup"
        assert len(primary.requests) == seen


async def test_a_failed_probe_doubles_the_cooldown(
    client: FailoverClient, primary: FakeOpenAI, redis_client: aioredis.Redis,
    events: CapturedEvents, clock: Clock,
) -> None:  # fmt: skip
    """A probe that fails re-opens the breaker for twice as long."""
    await primary.stop_listening()
    await ask(client)
    clock.now += 0.35  # past the cooldown
    await ask(client)  # starts the probe, refused again
    await eventually(lambda: len(events.events("breaker_opened")) == 2)
    cooldowns = [e["cooldown_s"] for e in events.events("breaker_opened")]
    assert cooldowns == [0.3, 0.6]
    assert events.events("breaker_opened")[1]["probe"] is True


async def test_failing_model_opens_after_three_in_a_row(
    client: FailoverClient, primary: FakeOpenAI, events: CapturedEvents
) -> None:
    """Two 5xx leave the breaker closed; the third in a row opens it."""
    primary.script(server_error(), server_error())
    await ask(client)
    await ask(client)
    assert events.events("breaker_opened") == []
    primary.script(server_error())
    await ask(client)
    assert len(events.events("breaker_opened")) == 1
    calls = len(primary.requests)
    await ask(client)
    assert len(primary.requests) == calls


async def test_a_success_resets_the_failure_count(
    client: FailoverClient, primary: FakeOpenAI, redis_client: aioredis.Redis,
    events: CapturedEvents,
) -> None:  # fmt: skip
    """Failures must be in a row: a success in between starts the count again. A model with no
    failure on record has no breaker key at all (a success then costs no write)."""
    await ask(client)
    assert await redis_client.exists(breaker_key(PRIMARY)) == 0
    primary.script(server_error(), server_error())
    await ask(client)
    await ask(client)
    assert await redis_client.exists(breaker_key(PRIMARY)) == 1
    assert await ask(client) == "from primary"
    assert await redis_client.exists(breaker_key(PRIMARY)) == 0
    primary.script(server_error(), server_error())
    await ask(client)
    await ask(client)
    assert events.events("breaker_opened") == []


async def test_every_model_open_still_gets_an_answer(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """With every breaker open the chain is tried anyway, in order, rather than answer nothing."""
    async with failover(primary, backup, redis_client, events, cooldown=30) as client:
        primary.script(server_error(), server_error(), server_error())
        backup.script(server_error(), server_error(), server_error())
        for _ in range(3):
            with pytest.raises(AllModelsFailed):
                await ask(client)
        assert len(events.events("breaker_opened")) == 2
        assert await ask(client) == "from primary"


async def test_a_live_stream_is_not_cut_but_a_stalled_one_is(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Streaming: a server sending tokens slower than the timeout in total is not cut off;
    one that goes silent mid-answer times out and the fallback answers."""
    async with failover(primary, backup, redis_client, events, timeout_s=0.6) as client:
        primary.script(Reply(text="a slow but steady answer " * 4, token_delay=0.1))
        assert (await ask(client)).startswith("a slow but steady answer")
        primary.script(Reply(text="this answer stops half way " * 4, stall_after=2))
        assert await ask(client) == "from backup"


async def test_turns_start_at_their_own_model(
    client: FailoverClient, primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """Failover is turn-local: after a fallback, the next turn starts at the primary again."""
    primary.script(server_error())
    assert await ask(client) == "from backup"
    assert await ask(client) == "from primary"


async def test_two_processes_share_the_breaker(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_url: str, redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A breaker opened by one `bot chat` process makes another skip the primary: no call."""
    primary.default = Reply(hang=True)
    text = gateway_config_text(
        primary.base_url, backup.base_url, fallback_api="openai-responses", provider_timeout=0.5
    )
    config = tmp_path / "bot.json5"
    config.write_text(text)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "BOT_CONFIG": str(config),
           "REDIS_URL": redis_url}  # fmt: skip
    for n in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "chat", "-m", f"hi {n}", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode() == "from backup\n"
    assert len(primary.requests_to("/responses")) == 1


async def test_a_silent_primary_hands_over_after_its_first_token_time(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A primary that accepts the request and never starts answering (a model stuck loading)
    is given its firstTokenSeconds, not its 120 s silence limit nor the whole turn: the fallback
    answers, the timeout opens the breaker, and the next turn sends it nothing."""
    primary.default = Reply(prefill=math.inf)
    async with failover(
        primary, backup, redis_client, events, timeout_s=120, first_token=0.5, cooldown=30
    ) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await client.complete(instructions="be brief", turns=HELLO, deadline=started + 120)
        assert answer.text == "from backup"
        assert loop.time() - started < 5
        [fallback] = events.events("model_fallback")
        assert "did not start answering within 0.5 s" in fallback["error"]
        assert [e["model"] for e in events.events("breaker_opened")] == [PRIMARY]
        seen = len(primary.requests)
        assert await ask(client) == "from backup"
        assert len(primary.requests) == seen


async def test_a_slow_reader_that_starts_in_time_is_never_cut_off(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A model that reads the prompt for a while, starts within its first-token time and then
    streams slowly, past both that time and the turn's deadline, answers in full."""
    async with failover(
        primary, backup, redis_client, events, timeout_s=2, first_token=1
    ) as client:
        primary.script(Reply(text="slow and steady wins " * 4, prefill=0.3, token_delay=0.1))
        deadline = asyncio.get_running_loop().time() + 1
        answer = await client.complete(instructions="be brief", turns=HELLO, deadline=deadline)
        assert answer.text.startswith("slow and steady wins")
        assert not backup.requests


async def test_the_last_model_gets_the_rest_of_the_turn(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Silent everywhere: the first model gets its first-token time, the last one what is
    left of the turn's budget, and the turn ends at its deadline with both breakers opened."""
    primary.default = backup.default = Reply(prefill=math.inf)
    async with failover(
        primary, backup, redis_client, events, timeout_s=120, first_token=0.3, cooldown=30
    ) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AllModelsFailed):
            await client.complete(instructions="be brief", turns=HELLO, deadline=started + 1.2)
        assert 1.1 < loop.time() - started < 5
        waited = [e["ms"] for e in events.events("model_attempt")]
        assert waited[0] == pytest.approx(300, abs=150)
        assert waited[1] == pytest.approx(900, abs=200)
        assert {e["model"] for e in events.events("breaker_opened")} == {PRIMARY, BACKUP}


async def test_a_model_cut_short_by_the_turn_is_not_blamed(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """A model given less than its first-token time because the turn ran out does not open its
    breaker: the silence was the turn's budget, not proof the model is down."""
    primary.default = Reply(prefill=math.inf)
    async with failover(
        primary, backup, redis_client, events, timeout_s=120, first_token=5, cooldown=30
    ) as client:
        deadline = asyncio.get_running_loop().time() + 0.3
        with pytest.raises(AllModelsFailed, match="the turn's time was spent"):
            await client.complete(instructions="be brief", turns=HELLO, deadline=deadline)
        assert not events.events("breaker_opened")
        assert not backup.requests


async def test_a_probe_of_a_silent_model_fails_without_a_person_waiting(
    primary: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, events: CapturedEvents,
    clock: Clock,
) -> None:  # fmt: skip
    """After the cooldown of a hung model, turns are answered by the fallback at once while
    the background probe waits on the hung model; the probe's failure re-opens the breaker."""
    primary.default = Reply(prefill=math.inf)
    async with failover(
        primary, backup, redis_client, events, timeout_s=0.6, first_token=0.3, cooldown=0.3,
        clock=clock,
    ) as client:  # fmt: skip
        assert await ask(client) == "from backup"
        clock.now += 0.35  # past the cooldown
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):
            assert await ask(client) == "from backup"
        assert loop.time() - started < 0.5  # none waited on the probe
        await eventually(lambda: len(events.events("breaker_opened")) == 2)
        [probe] = events.events("model_probe")
        assert probe["outcome"] == "unavailable"

"""Chat commands and access control through the real agent, Redis and fake models."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.access import RedisAccess, rate_key
from bot.app import App
from bot.commands import parse_command
from bot.config import ChannelsConfig, CommandsConfig
from bot.llm.choice import READ_EVERY, RedisModelChoice
from bot.llm.types import ModelRef
from bot.messages import InboundMessage
from bot.reads import fetch
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import Clock, bot_env, open_gateway, provider_block, run_bot, run_turn

ADMIN = "whatsapp:+15550000001"
USER = "whatsapp:+15550000002"
OTHER = "whatsapp:+15550000003"
IDS = itertools.count(1)


def config_text(local: FakeOpenAI, backup: FakeOpenAI, *, extra: str = "", policy: str = "open",
                allow: str = "[]") -> str:  # fmt: skip
    return f"""{{
      agents: {{ defaults: {{
        model: {{ primary: "local/local-model", fallbacks: [] }},
        models: {{ "local/local-model": {{ alias: "Local" }},
                   "backup/backup-model": {{ alias: "Backup" }} }},
      }} }},
      models: {{ mode: "replace", providers: {{
        local: {provider_block(local.base_url)},
        backup: {provider_block(backup.base_url, model="backup-model")},
      }} }},
      channels: {{ whatsapp: {{ dmPolicy: "{policy}", allowFrom: {allow} }} }},
      commands: {{ admins: ["{ADMIN}"] }},
      {extra}
    }}"""


def wa(text: str, sender: str = USER) -> InboundMessage:
    n = next(IDS)
    return InboundMessage(channel="whatsapp", conversation=sender, sender=sender, text=text,
                          platform_id=f"SM{n}", ts=float(n))  # fmt: skip


@pytest.fixture
async def local() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="local says hi")) as f:
        yield f


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["backup-model"], default=Reply(text="backup says hi")) as f:
        yield f


@asynccontextmanager
async def gateway(text: str, redis_url: str, tmp_path: Path, events: CapturedEvents
                  ) -> AsyncIterator[App]:  # fmt: skip
    async with open_gateway(text, redis_url=redis_url, data_dir=tmp_path, log=events.log) as app:
        yield app


@pytest.fixture
async def app(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> AsyncIterator[App]:  # fmt: skip
    async with gateway(config_text(local, backup), redis_url, tmp_path, events) as running:
        yield running


async def say(app: App, message: InboundMessage) -> str | None:
    """One turn through intake and a worker (`run_turn`); the reply text (None: nothing sent)."""
    sent = await run_turn(app, message)
    assert len(sent) <= 1
    return sent[0].text if sent else None


def test_command_parsing() -> None:
    """`/Model@bot Opus` is the model command; plain text and a lone slash are not commands."""
    assert parse_command("/Model@switchboard_bot Opus 4") == ("model", "Opus 4")
    assert parse_command("  /help") == ("help", "")
    assert parse_command("hello /help") is None
    assert parse_command("/ spaced") is None


async def test_admin_switches_the_conversation_model(
    app: App, local: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """An admin's /model Backup sends that conversation's next turn to the backup model."""
    reply = await say(app, wa("/model Backup", ADMIN))
    assert reply == "This conversation now uses Backup (backup/backup-model)."
    assert await say(app, wa("hello", ADMIN)) == "backup says hi"
    assert local.requests_to("/responses") == []
    assert await say(app, wa("hello", USER)) == "local says hi"  # other conversations unchanged
    [changed] = events.events("model_changed")
    assert (changed["by"], changed["after"]) == ("whatsapp:+1555•••0001", "backup/backup-model")


async def test_non_admin_model_change_is_refused_and_changes_nothing(
    app: App, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """/model and /model default from a non-admin are refused, logged, and change nothing."""
    assert await say(app, wa("/model Backup")) == "Only admins can change the model."
    assert await say(app, wa("/model default Backup")) == (
        "Only admins can change everyone's default model."
    )
    assert await say(app, wa("/approve ABCDEFGH")) == "Only admins can use /approve."
    assert len(events.events("command_refused")) == 3
    assert await say(app, wa("hello")) == "local says hi"
    assert await app.choice.history() == []


async def test_model_switch_everyone_opens_only_the_conversation_switch(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """With modelSwitch: everyone anyone may switch their conversation, not the default."""
    text = config_text(local, backup).replace(
        f'commands: {{ admins: ["{ADMIN}"] }}',
        f'commands: {{ admins: ["{ADMIN}"], modelSwitch: "everyone" }}',
    )
    async with gateway(text, redis_url, tmp_path, events) as app:
        assert "now uses Backup" in (await say(app, wa("/model 2")) or "")
        assert (await say(app, wa("/model default Backup")) or "").startswith("Only admins")


async def test_default_model_moves_everyone_and_survives_a_restart(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """/model default Backup moves every conversation without an override, after a restart too;
    a conversation's own choice still wins, and /model reset returns to the default."""
    text = config_text(local, backup)
    async with gateway(text, redis_url, tmp_path, events) as app:
        await say(app, wa("/model Local", ADMIN))
        assert (await say(app, wa("/model default backup", ADMIN)) or "").endswith(
            "Backup (backup/backup-model)."
        )
    async with gateway(text, redis_url, tmp_path, events) as restarted:
        assert await say(restarted, wa("hi", USER)) == "backup says hi"
        assert await say(restarted, wa("hi", ADMIN)) == "local says hi"
        await say(restarted, wa("/model reset", ADMIN))
        assert await say(restarted, wa("hi", ADMIN)) == "backup says hi"
        status = await say(restarted, wa("/status", ADMIN)) or ""
    assert "Model: Backup (backup/backup-model) (from the global default)" in status
    assert "default: local/local-model → backup/backup-model by " + ADMIN in status


async def test_model_menu_numbers_and_did_you_mean(app: App) -> None:
    """/model lists numbered aliases; a number picks one; a typo gets a suggestion."""
    menu = await say(app, wa("/model", ADMIN)) or ""
    assert "Now: Local (local/local-model) (from the config)." in menu
    assert "2. Backup — backup/backup-model" in menu
    assert "now uses Backup" in (await say(app, wa("/model 2", ADMIN)) or "")
    assert "did you mean 'Backup'?" in (await say(app, wa("/model Bakup", ADMIN)) or "")


async def test_information_commands(app: App) -> None:
    """/help, /whoami, /models and /status answer without a model; unknown ones get help."""
    assert "/model" in (await say(app, wa("/help")) or "")
    assert "/approve" not in (await say(app, wa("/help")) or "")  # admin-only, hidden
    assert await say(app, wa("/whoami")) == f"You are {USER} (user), time zone UTC."
    assert await say(app, wa("/whoami", ADMIN)) == f"You are {ADMIN} (admin), time zone UTC."
    models = await say(app, wa("/models")) or ""
    assert "backup/backup-model (Backup) — openai-responses" in models
    status = await say(app, wa("/status")) or ""
    assert "Model: Local (local/local-model) (from the config)" in status
    assert "Breakers: all closed" in status
    unknown = await say(app, wa("/modle")) or ""
    assert unknown.startswith("Unknown command /modle. Did you mean /model?")


async def test_commands_never_reach_a_model_or_memory(app: App, local: FakeOpenAI) -> None:
    """Commands are answered here: no model call, nothing stored in history."""
    for text in ("/help", "/whoami", "/status", "/models", "/model"):
        await say(app, wa(text))
    assert local.requests == []
    assert await app.memory.load(USER) == []


async def test_new_forgets_and_compact_reports(app: App, local: FakeOpenAI) -> None:
    """/new clears the conversation; /compact reports tokens before and after."""
    for n in range(8):
        await say(app, wa(f"fact {n}: " + "blah " * 200))
    report = await say(app, wa("/compact the facts")) or ""
    assert report.startswith("Condensed: about ")
    summary_prompt = local.requests_to("/responses")[-1].prompt
    assert "Focus the summary on: the facts" in summary_prompt
    assert await say(app, wa("/new")) == (
        "Started a new conversation: I have forgotten everything before this."
    )
    assert (await app.memory.state(USER)).turns == []
    assert (await app.memory.state(USER)).summary is None


async def test_a_burst_with_a_command_answers_both(app: App, backup: FakeOpenAI) -> None:
    """A command and a question in one burst: the command applies first, then the model."""
    [reply] = await run_turn(app, wa("/model Backup", ADMIN), wa("and now?", ADMIN))
    assert reply.text.endswith("backup says hi")
    remembered = (await app.memory.state(ADMIN)).turns
    assert [t.text for t in remembered] == ["and now?", "backup says hi"]


async def test_pairing_end_to_end(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """A stranger gets one code and no model answer; an admin approves it; then answers flow."""
    async with gateway(
        config_text(local, backup, policy="pairing"), redis_url, tmp_path, events
    ) as app:
        first = await say(app, wa("hi, who are you?")) or ""
        code = first.split("approve code ")[1].split(" ")[0]
        assert len(code) == 8
        assert not set(code) & set("IL01O")
        assert await say(app, wa("hello??")) is None  # one reply per pending code
        assert local.requests == []
        assert await say(app, wa(f"/approve {code.lower()}", ADMIN)) == f"Approved {USER}."
        assert await say(app, wa("hello again")) == "local says hi"
        assert await say(app, wa(f"/approve {code}", ADMIN)) == (
            f"No pending request with code {code} (expired?)."
        )
    assert events.events("pairing_requested")[0]["code"] == code
    assert events.events("pairing_approved")


async def test_at_most_three_pairing_requests_wait(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """A fourth stranger while three codes wait gets no reply at all."""
    async with gateway(
        config_text(local, backup, policy="pairing"), redis_url, tmp_path, events
    ) as app:
        replies = [await say(app, wa("hi", f"whatsapp:+1555777000{n}")) for n in range(4)]
        assert [r is not None for r in replies] == [True, True, True, False]
        assert len(await app.access.pending()) == 3


@pytest.mark.parametrize(
    ("policy", "sender", "answered"),
    [("allowlist", OTHER, True), ("allowlist", USER, False), ("disabled", USER, False),
     ("disabled", ADMIN, True), ("open", USER, True)],
)  # fmt: skip
async def test_dm_policies(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents, policy: str, sender: str, answered: bool,
) -> None:  # fmt: skip
    """allowlist lets allowFrom (and admins) in, disabled only admins, open everyone; the
    rest get no reply at all."""
    text = config_text(local, backup, policy=policy, allow=json.dumps([OTHER]))
    async with gateway(text, redis_url, tmp_path, events) as app:
        reply = await say(app, wa("hello", sender))
    assert (reply == "local says hi") is answered
    assert (reply is None) is not answered


async def test_rate_limit_notices_once_then_drops(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """Past the per-sender limit: one notice, then silent drops, all logged."""
    text = config_text(local, backup, extra="session: { rateLimitPerMinute: 3 },")
    async with gateway(text, redis_url, tmp_path, events) as app:
        replies = [await say(app, wa(f"msg {n}")) for n in range(6)]
        assert await say(app, wa("hi", OTHER)) == "local says hi"  # per sender
    assert replies[:3] == ["local says hi"] * 3
    assert "faster than I can answer (3 a minute)" in (replies[3] or "")
    assert replies[4:] == [None, None]
    assert len(events.events("rate_limited")) == 3
    assert len(local.requests_to("/responses")) == 4


async def test_a_sender_past_the_limit_is_let_in_again_as_the_bucket_refills(
    redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """The bucket refills at the limit's rate: a minute after a burst that was told off, the
    sender has the whole limit again, and the next burst past it is told once more."""
    now = [1_700_000_000.0]
    access = RedisAccess(
        redis_client, channels=ChannelsConfig(), commands=CommandsConfig(), rate_per_minute=2,
        log=events.log, clock=lambda: now[0],
    )  # fmt: skip
    sender = f"whatsapp:+1555{uuid.uuid4().int % 10**7:07d}"

    async def burst(count: int) -> list[int]:
        read = access.read_sender
        return [(await fetch(redis_client, read("whatsapp", sender), what="rate")).rate
                for _ in range(count)]  # fmt: skip

    assert await burst(4) == [1, 1, 0, -1]  # two allowed, one notice, then silence
    now[0] += 30  # half a minute: one token back, and the notice may be given again
    assert await burst(3) == [1, 0, -1]
    now[0] += 3600  # an hour idle: full, never past capacity
    assert await burst(3) == [1, 1, 0]
    assert 0 < await redis_client.ttl(rate_key(sender)) <= 120  # an idle sender's bucket goes


async def test_strangers_over_the_rate_limit_still_get_no_reply(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """The limit is checked with the policy, but a sender the policy refuses never hears from
    the gateway, not even a rate-limit notice; under pairing, one code, then silence."""
    limit = "session: { rateLimitPerMinute: 2 },"
    async with gateway(config_text(local, backup, extra=limit, policy="allowlist"), redis_url,
                       tmp_path, events) as app:  # fmt: skip
        assert [await say(app, wa(f"m{n}")) for n in range(5)] == [None] * 5
    async with gateway(config_text(local, backup, extra=limit, policy="pairing"), redis_url,
                       tmp_path, events) as app:  # fmt: skip
        replies = [await say(app, wa(f"m{n}", OTHER)) for n in range(5)]
    assert "approve code" in (replies[0] or "")
    assert replies[1:] == [None] * 4
    assert local.requests_to("/responses") == []


async def test_a_command_in_a_burst_runs_before_the_model_reads_history(
    app: App, local: FakeOpenAI
) -> None:
    """ "/new" then a question, answered as one turn: the model sees no earlier history."""
    await say(app, wa("remember the number 42"))
    assert len(await run_turn(app, wa("/new"), wa("what was the number?"))) == 1
    assert local.requests_to("/responses")[-1].turn_texts == ["what was the number?"]


async def test_pairing_cli_lists_and_approves(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """`bot pairing list` shows the waiting code; `bot pairing approve CODE` lets them in;
    `bot model history` shows audited changes."""
    text = config_text(local, backup, policy="pairing")
    (tmp_path / "bot.json5").write_text(text)
    async with gateway(text, redis_url, tmp_path, events) as app:
        first = await say(app, wa("hi")) or ""
        code = first.split("approve code ")[1].split(" ")[0]
        await say(app, wa("/model default Backup", ADMIN))
    env = bot_env(tmp_path, REDIS_URL=redis_url, BOT_CONFIG=str(tmp_path / "bot.json5"))

    async def bot(*args: str) -> tuple[int, str]:
        result = await run_bot(*args, env=env, cwd=tmp_path)
        return result.code, result.out

    code_listed, listing = await bot("pairing", "list")
    assert code_listed == 0
    assert code in listing
    assert USER in listing
    approved, output = await bot("pairing", "approve", code)
    assert (approved, output.strip()) == (0, f"approved {USER}")
    _, history = await bot("model", "history")
    assert "default: local/local-model -> backup/backup-model  by " + ADMIN in history
    async with gateway(text, redis_url, tmp_path, events) as app:
        assert await say(app, wa("hello")) == "backup says hi"


async def test_status_and_model_show_other_peoples_ids_to_admins_only(
    local: FakeOpenAI, backup: FakeOpenAI, redis_client: aioredis.Redis, redis_url: str,
    tmp_path: Path, events: CapturedEvents,
) -> None:  # fmt: skip
    """A non-admin's /status and /model name no other sender (only "you"); an admin's name
    who changed a model and whose conversation it was."""
    admin2 = "whatsapp:+15550000009"
    text = config_text(local, backup).replace(
        f'commands: {{ admins: ["{ADMIN}"] }}',
        f'commands: {{ admins: ["{ADMIN}", "{admin2}"], modelSwitch: "everyone" }}',
    )
    async with gateway(text, redis_url, tmp_path, events) as app:
        await say(app, wa("/model default Backup", admin2))
        await say(app, wa("/model Local", OTHER))
        await say(app, wa("/model Local", USER))
        user_status = await say(app, wa("/status", USER)) or ""
        user_model = await say(app, wa("/model", USER)) or ""
        await say(app, wa("/model reset", USER))
        user_menu_default = await say(app, wa("/model", USER)) or ""
        admin_status = await say(app, wa("/status", ADMIN)) or ""
        admin_model = await say(app, wa("/model", ADMIN)) or ""
    for reply in (user_status, user_model, user_menu_default):
        assert admin2 not in reply
        assert OTHER not in reply
    assert "this conversation: backup/backup-model → local/local-model by you" in user_status
    assert "default: local/local-model → backup/backup-model" in user_status
    assert "(from the conversation's choice, set by you)" in user_model
    assert "(from the global default)." in user_menu_default
    assert f"{OTHER}: backup/backup-model → local/local-model by {OTHER}" in admin_status
    assert f"{USER}: local/local-model → (reset) by {USER}" in admin_status
    assert f"(from the global default, set by {admin2})." in admin_model


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("openrouter/", "'openrouter/' (write a ref as provider/model, no spaces); did you mean "),
        ("/x", "'/x' (write a ref as provider/model, no spaces); did you mean 'Local' or "),
        ("a/b/c", "'a/b/c' (no provider 'a'; providers: local, backup); did you mean 'Local' or "),
        ("local/", "; did you mean 'Local' or 'local/local-model'?"),
        ("local / local-model", "; did you mean 'local/local-model'?"),
        ("99", "'99'; did you mean a number from 1 to 2?"),
        ("0", "'0'; did you mean a number from 1 to 2?"),
        ("9" * 5000, "99…'; did you mean "),
    ],
    ids=["provider-only", "model-only", "unknown-provider", "local-slash", "spaces",
         "number-too-big", "number-zero", "huge-number"],
)  # fmt: skip
async def test_model_with_a_malformed_name_answers_unknown_model_with_a_suggestion(
    app: App, name: str, hint: str
) -> None:
    """/model and /model default with a malformed or unknown name answer one line, "unknown
    model …; did you mean …", and change nothing."""
    for command in (f"/model {name}", f"/model default {name}"):
        reply = await say(app, wa(command, ADMIN)) or ""
        assert reply.startswith("unknown model '")
        assert hint in reply
        assert "\n" not in reply
        assert len(reply) < 400
    assert await app.choice.history() == []
    assert await say(app, wa("hello", ADMIN)) == "local says hi"


async def test_conversation_model_expires_with_the_conversation(
    app: App, redis_client: aioredis.Redis
) -> None:
    """A conversation's model choice gets the conversation's idle TTL when set and is refreshed
    by each turn like its history; everyone's default never expires."""
    ttl = app.memory.ttl_seconds
    key = f"conv:{{{ADMIN}}}:model"
    await say(app, wa("/model Backup", ADMIN))
    assert ttl - 5 <= await redis_client.ttl(key) <= ttl
    await redis_client.expire(key, 100)
    assert await say(app, wa("hello", ADMIN)) == "backup says hi"
    assert ttl - 5 <= await redis_client.ttl(key) <= ttl
    turns_ttl = await redis_client.ttl(f"conv:{{{ADMIN}}}:turns")
    assert abs(await redis_client.ttl(key) - turns_ttl) <= 5
    await say(app, wa("/model default Backup", ADMIN))
    assert await redis_client.ttl("settings:model:default") == -1


async def test_a_busy_process_reads_the_default_model_once_a_period(
    app: App, redis_client: aioredis.Redis
) -> None:
    """Everyone's default is read from Redis at most every READ_EVERY s (a read in between
    costs no command): another process's /model default is seen that much later, this
    process's own at once."""
    clock = Clock(0.0)
    mine, theirs = (
        RedisModelChoice(redis_client, app.choice.registry, ttl_seconds=60, clock=clock)
        for _ in range(2)
    )
    backup = ModelRef.parse("backup/backup-model")

    async def default() -> tuple[str | None, int]:
        read = mine.read_default()
        return await fetch(redis_client, read, what="reading"), read.count

    assert await default() == (None, 1)
    await theirs.set("default", backup, who=ADMIN)
    clock.now += READ_EVERY / 2
    assert await default() == (None, 0)  # as a turn that started before the change
    clock.now += READ_EVERY / 2
    assert await default() == (str(backup), 1)
    await mine.set("default", None, who=ADMIN)
    assert await default() == (None, 0)
    assert await redis_client.exists("settings:model:default") == 0


async def test_a_stored_choice_that_is_no_ref_falls_back_instead_of_crashing(
    app: App, redis_client: aioredis.Redis
) -> None:
    """A conversation or default value in Redis that does not parse as a ref is passed over:
    turns and /status still work, on the config's model."""
    await redis_client.set(f"conv:{{{USER}}}:model", "openrouter/")
    await redis_client.set("settings:model:default", "/x")
    assert await say(app, wa("hello")) == "local says hi"
    assert "Model: Local (local/local-model) (from the config)" in (
        await say(app, wa("/status")) or ""
    )

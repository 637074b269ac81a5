"""The `bot` command as a person runs it: real processes, real Redis, fake model servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pty
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.delivery import outbox_key
from bot.intake import READY_STREAM, inbox_key
from bot.memory import RedisMemory, conversation_key
from bot.wakeups import batch_key, lease_key
from channels.console import ConsoleChannel
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, closed_port, unauthorized
from tests.helpers import (
    bot_env,
    eventually,
    gateway_config_text,
    open_gateway,
    run_bot,
)
from tests.test_console import screen

SEEDS = ["seed-local-stack.json5", "seed-hybrid.json5", "seed-other-proxy.json5"]
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-SECRET-0123456789",
    "OPENAI_API_KEY": "sk-openai-SECRET-0123456789",
    "TELEGRAM_BOT_TOKEN": "123456:SECRET-telegram-token",
    "TWILIO_AUTH_TOKEN": "SECRET-twilio-auth-token",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"]) as server:
        yield server


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.json5"
    path.write_text(text)
    return path


async def test_chat_prints_only_the_final_text(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat -m hi` prints the final text alone, as it is (Markdown left raw for scripts);
    reasoning is in no output at all."""
    fake.script(Reply(text="**Hello** there!", reasoning="HIDDEN-REASONING"))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("chat", "-m", "hi", "-v", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out == "**Hello** there!\n"
    assert "HIDDEN-REASONING" not in result.out + result.err


async def test_memory_outlives_the_process(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """A second `bot chat -m` in the same conversation sends the first exchange to the model."""
    fake.script(Reply(text="Noted: blue."), Reply(text="You said blue."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    first = await run_bot("chat", "-m", "my colour is blue", "--user", "ada", env=env, cwd=tmp_path)
    second = await run_bot("chat", "-m", "what colour?", "--user", "ada", env=env, cwd=tmp_path)
    assert (first.code, second.code) == (0, 0), first.err + second.err
    assert second.out == "You said blue.\n"
    prompt = fake.requests_to("/responses")[1].prompt
    assert "my colour is blue" in prompt
    assert "Noted: blue." in prompt


async def test_memory_survives_an_embedded_redis_restart(fake: FakeOpenAI, tmp_path: Path) -> None:
    """With no REDIS_URL each run starts and stops the embedded Redis; history persists."""
    fake.script(Reply(text="Noted."), Reply(text="Recalled."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    env = bot_env(tmp_path, BOT_CONFIG=str(config))
    first = await run_bot("chat", "-m", "remember 42", env=env, cwd=tmp_path)
    second = await run_bot("chat", "-m", "what number?", env=env, cwd=tmp_path)
    assert (first.code, second.code) == (0, 0), first.err + second.err
    assert "remember 42" in fake.requests_to("/responses")[1].prompt
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists()


async def test_closed_primary_port_falls_back_with_an_event(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """With the primary's port closed the fallback answers and model_fallback is logged."""
    fake.models = ["backup-model"]
    fake.script(Reply(text="fallback answer"))
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    config = write_config(
        tmp_path, gateway_config_text(dead, fake.base_url, fallback_api="openai-responses")
    )
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("chat", "-m", "hi", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out == "fallback answer\n"
    assert "model_fallback" in result.err


async def test_no_model_answering_exits_1_with_a_reason(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """When no model answers, exit 1 and say why on stderr; stdout stays empty."""
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    config = write_config(tmp_path, gateway_config_text(dead))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("chat", "-m", "hi", env=env, cwd=tmp_path)
    assert result.code == 1
    assert result.out == ""
    assert "no model answered" in result.err
    assert "cannot connect" in result.err
    assert "Traceback" not in result.err


async def test_secrets_never_appear_in_any_output(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """With every secret set and a provider rejecting its key, no secret is printed."""
    fake.script(unauthorized())
    text = gateway_config_text(fake.base_url).replace('"sk-test-local"', '"${OPENAI_API_KEY}"')
    config = write_config(tmp_path, text)
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url, **SECRETS)
    result = await run_bot("chat", "-m", "hi", "-v", env=env, cwd=tmp_path)
    assert result.code == 1
    assert "HTTP 401" in result.err
    for secret in SECRETS.values():
        assert secret not in result.out + result.err
    [request] = fake.requests_to("/responses")
    assert request.headers["authorization"] == f"Bearer {SECRETS['OPENAI_API_KEY']}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_config_check_accepts_each_seed_block(
    seed: str, tmp_path: Path, data_dir: Path
) -> None:
    """`bot config check` passes each seed block and prints its chain."""
    result = await run_bot(
        "config", "check", str(data_dir / "config" / seed), env=bot_env(tmp_path), cwd=tmp_path
    )
    assert result.code == 0, result.err
    assert "chain" in result.out
    assert "contextWindow=" in result.out


async def test_config_check_shows_the_hybrid_chain_in_order(tmp_path: Path, data_dir: Path) -> None:
    """The hybrid seed's chain is Sonnet, then local MiniMax, then Opus, with aliases."""
    path = data_dir / "config" / "seed-hybrid.json5"
    result = await run_bot("config", "check", str(path), env=bot_env(tmp_path), cwd=tmp_path)
    lines = [line for line in result.out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert [line.split()[1] for line in lines] == [
        "anthropic/claude-sonnet-4-5",
        "lmstudio/minimax-m2.1-gs32",
        "anthropic/claude-opus-4-5",
    ]
    assert "alias=MiniMax" in lines[1]


async def test_config_check_warns_when_max_tokens_fills_the_window(
    tmp_path: Path, data_dir: Path
) -> None:
    """`contextWindow: 4096` with the seed's `maxTokens: 8192` loads, with a warning that says
    what happens and what to change; the seed itself gets none."""
    seed = (data_dir / "config" / "seed-local-stack.json5").read_text()
    clean = await run_bot("config", "check", str(write_config(tmp_path, seed)),
                          env=bot_env(tmp_path), cwd=tmp_path)  # fmt: skip
    assert "warning" not in clean.out
    small = write_config(tmp_path, seed.replace("contextWindow: 196608", "contextWindow: 4096"))
    result = await run_bot("config", "check", str(small), env=bot_env(tmp_path), cwd=tmp_path)
    assert result.code == 0, result.err
    [warning] = [line for line in result.out.splitlines() if line.startswith("warning:")]
    assert "models.providers.lmstudio.models[0] (minimax-m2.1-gs32)" in warning
    assert "maxTokens 8192 ≥ contextWindow 4096" in warning
    assert "1024 tokens" in warning


async def test_config_check_shows_pictures_and_voice_notes(tmp_path: Path, data_dir: Path) -> None:
    """A model marked `input: ["text", "image"]` and agents.defaults.media are accepted and
    shown: which models take pictures, the size cap, the transcription model."""
    seed = (data_dir / "config" / "seed-local-stack.json5").read_text()
    media = 'media: { maxBytes: 5000000, transcriptionModel: "lmstudio/whisper" },'
    text = seed.replace('input: ["text"]', 'input: ["text", "image"]')
    text = text.replace("defaults: {", "defaults: {\n      " + media, 1)
    config = write_config(tmp_path, text)
    result = await run_bot("config", "check", str(config), env=bot_env(tmp_path), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "input=text,image" in result.out
    assert "maxBytes=5000000" in result.out
    assert "voice notes=lmstudio/whisper" in result.out


async def test_config_check_names_a_misspelt_key(tmp_path: Path, data_dir: Path) -> None:
    """A misspelt key exits 2 with the file, the line and the key path."""
    seed = (data_dir / "config" / "seed-local-stack.json5").read_text()
    config = write_config(tmp_path, seed.replace("baseUrl", "basUrl"))
    result = await run_bot("config", "check", str(config), env=bot_env(tmp_path), cwd=tmp_path)
    assert result.code == 2
    line = next(n for n, text in enumerate(seed.splitlines(), 1) if "baseUrl" in text)
    assert f"{config}:{line}" in result.err
    assert "models.providers.lmstudio.basUrl" in result.err
    assert "baseUrl" in result.err


async def test_serve_answers_healthz_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`bot serve` answers /healthz and /readyz, and on SIGTERM stops its embedded Redis, exit 0."""
    port = closed_port()
    env = bot_env(tmp_path, BOT_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        started = await asyncio.wait_for(_until(proc.stdout, b"server_started"), 30)
        assert b'"role": "all"' in started
        assert b"config_default" in started  # no config file: the built-in default, said once
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as health:
                assert health.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                assert ready.status == 200
                assert (await ready.json())["checks"]["redis"] == "ok"
        assert (tmp_path / "var" / "redis" / "redis.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"server_stopped" in out
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists()


async def _until(stream: asyncio.StreamReader, marker: bytes) -> bytes:
    """Everything the stream printed up to and including the line holding `marker`."""
    seen = b""
    while line := await stream.readline():
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"the process ended before printing {marker!r}")


def test_help_lists_every_command() -> None:
    """`bot` runs exactly the documented subcommands, and `bot --help` lists each on a line of
    its own (not just somewhere in other text: "usage" and "model" are in every help)."""
    from bot.cli import build_parser

    parser = build_parser()
    commands = {"serve", "chat", "config", "telegram", "pairing", "model", "doctor", "logs",
                "dead-letters", "usage", "tools", "console", "reminders"}  # fmt: skip
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subparsers.choices) == commands
    listed = re.findall(r"^    (\S+)", parser.format_help(), flags=re.MULTILINE)
    assert sorted(listed) == sorted(commands)
    serve = parser.parse_args(["serve", "--procs", "3"])
    assert (serve.role, serve.procs) == ("all", 3)
    usage = parser.parse_args(["usage", "--by", "model", "--since", "7d", "--json"])
    assert (usage.by, usage.since, usage.json) == ("model", "7d", True)


async def test_worker_role_runs_turns_without_listening(tmp_path: Path, redis_url: str) -> None:
    """`bot serve --role worker` starts a worker, opens no port, and exits 0 on SIGTERM."""
    port = closed_port()
    env = bot_env(tmp_path, BOT_PORT=str(port), REDIS_URL=redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--role", "worker", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        started = await asyncio.wait_for(_until(proc.stdout, b"worker_started"), 30)
        assert b'"role": "worker"' in started
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http:
                await http.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


async def test_console_user_is_the_owner(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """In `bot chat` the local user is an admin and commands work without a model."""
    config = write_config(tmp_path, gateway_config_text(f"http://127.0.0.1:{closed_port()}/v1"))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("chat", "-m", "/whoami", "--user", "ada", env=env, cwd=tmp_path)
    assert (result.code, result.out) == (0, "You are console:ada (admin), time zone UTC.\n")


async def ready_conversations(redis: aioredis.Redis) -> list[str]:
    """The conversations of every wake-up on the ready stream."""
    return [fields["conversation"] for _, fields in await redis.xrange(READY_STREAM)]


async def test_chat_turn_is_leased_and_committed_like_a_workers(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat -m` goes through intake (its dedupe marker, no wake-up on the ready stream)
    and a worker's turn (leased, COMMIT into memory, delivered from the outbox): nothing of
    the turn is left in Redis but the exchange in memory."""
    fake.script(Reply(text="Hi Ada."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    result = await run_bot("chat", "-m", "hello", "--user", "ada", "-v", env=env, cwd=tmp_path)
    assert (result.code, result.out) == (0, "Hi Ada.\n"), result.err
    conversation = "console:ada"
    for key in (inbox_key, batch_key, lease_key, outbox_key):
        assert not await redis_client.exists(key(conversation)), key.__name__
    assert len(await redis_client.keys(conversation_key(conversation, "seen:console:*"))) == 1
    turns = await RedisMemory(redis_client).load(conversation)
    assert [(t.role, t.text) for t in turns] == [("user", "hello"), ("assistant", "Hi Ada.")]
    assert conversation not in await ready_conversations(redis_client)
    assert "message_received" in result.err
    assert "reply_sent" in result.err


async def test_a_turn_left_by_a_killed_chat_is_answered_by_the_next(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """A `bot chat` killed mid-turn leaves its batch (and its lease, until it ends); the next
    `bot chat` of the same user resumes it, prints its reply, then answers its own message."""
    fake.script(Reply(hang=True), Reply(text="About the first."), Reply(text="About the second."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url, lease_seconds=1))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    args = ["-m", "bot", "chat", "-m", "first question", "--user", "ada"]
    pipe = asyncio.subprocess.PIPE
    killed = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=tmp_path, stdout=pipe, stderr=pipe
    )
    try:
        await eventually(lambda: len(fake.requests_to("/responses")) == 1)
    finally:
        killed.kill()
        await killed.communicate()
    assert await redis_client.exists(batch_key("console:ada"))
    result = await run_bot("chat", "-m", "second question", "--user", "ada", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out == "About the first.\nAbout the second.\n"
    assert "turn_resumed" in result.err
    first, second = fake.requests_to("/responses")[1:]
    assert "first question" in first.prompt
    assert "second question" not in first.prompt
    assert "About the first." in second.prompt  # the resumed turn was committed to memory
    assert not await redis_client.exists(batch_key("console:ada"), inbox_key("console:ada"))


def _takes_ctrl_c() -> None:
    """In the child before exec: SIGINT back to its default, as in a terminal. A test run
    started as a background job (`cmd &` without job control) ignores SIGINT, and a child
    would inherit that and never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_a_chat_interrupted_mid_turn_lets_the_next_answer_at_once(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Ctrl-C (SIGINT) in the `bot chat` REPL while the model holds its answer releases the
    conversation's lease (a 60 s one): the next `bot chat -m` does not wait it out, resumes
    the interrupted question first, then answers its own."""
    fake.script(Reply(hang=True), Reply(text="About the first."), Reply(text="About the second."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url, lease_seconds=60))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    pipe = asyncio.subprocess.PIPE
    interrupted = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "chat", "--user", "ada",
        env=env, cwd=tmp_path, stdin=pipe, stdout=pipe, stderr=pipe, preexec_fn=_takes_ctrl_c,
    )  # fmt: skip
    try:
        assert interrupted.stdin is not None
        interrupted.stdin.write(b"first question\n")
        await interrupted.stdin.drain()
        await eventually(lambda: len(fake.requests_to("/responses")) == 1)
        assert await redis_client.exists(lease_key("console:ada"))
        interrupted.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(interrupted.communicate(), 30)
    finally:
        if interrupted.returncode is None:
            interrupted.kill()
            await interrupted.wait()
    assert interrupted.returncode == 130, err.decode()
    assert "bot: interrupted" in err.decode()
    assert "Traceback" not in err.decode()
    assert not await redis_client.exists(lease_key("console:ada"))
    assert await redis_client.exists(batch_key("console:ada"))  # kept for the next chat
    async with asyncio.timeout(20):  # far below the lease: it was not waited out
        result = await run_bot(
            "chat", "-m", "second question", "--user", "ada", env=env, cwd=tmp_path
        )
    assert result.code == 0, result.err
    assert result.out == "About the first.\nAbout the second.\n"
    assert "busy in another process" not in result.err
    first, second = fake.requests_to("/responses")[1:]
    assert "first question" in first.prompt
    assert "About the first." in second.prompt
    assert not await redis_client.exists(batch_key("console:ada"), inbox_key("console:ada"))


async def test_a_workers_sweep_never_wakes_a_console_conversation(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, events: CapturedEvents
) -> None:
    """Waiting messages with no wake-up: the serve worker's sweep wakes a WhatsApp
    conversation's, never a console one's (only its `bot chat` can print the reply)."""
    text = gateway_config_text(f"http://127.0.0.1:{closed_port()}/v1")
    async with open_gateway(text, redis_url=redis_url, data_dir=tmp_path, log=events.log) as app:
        console = ConsoleChannel(user="ada")
        number = "whatsapp:+15550001"
        whatsapp = dataclasses.replace(
            console.message("hi"), channel="whatsapp", conversation=number, sender=number
        )
        for message in (console.message("hi"), whatsapp):
            assert await app.intake.accept(message, wake=False)
        assert await ready_conversations(redis_client) == []
        assert await app.worker().sweeper.sweep(force=True) == 1
    assert await ready_conversations(redis_client) == [number]


async def test_the_repl_answers_each_line_before_the_next_prompt(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat` without -m: each line is answered before the next prompt; /quit leaves."""
    fake.script(Reply(text="One."), Reply(text="Two."))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    pipe = asyncio.subprocess.PIPE
    args = ["-m", "bot", "chat", "--user", "ada"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=tmp_path, stdin=pipe, stdout=pipe, stderr=pipe
    )
    out, err = await asyncio.wait_for(proc.communicate(b"first\nsecond\n/quit\nnever\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "you> One.\nyou> Two.\nyou> "
    assert "Chatting as console:ada" in err.decode()
    turns = await RedisMemory(redis_client).load("console:ada")
    assert [t.text for t in turns] == ["first", "One.", "second", "Two."]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
COLUMNS = 200  # the width of the pseudo-terminal, as $COLUMNS tells the process


class Terminal:
    """A `bot` process whose stdin, stdout and stderr are a pseudo-terminal, as a person's
    shell gives it; what it prints is collected as it comes."""

    def __init__(self) -> None:
        self.output = b""
        self.proc: asyncio.subprocess.Process | None = None
        self._master, self._slave = pty.openpty()

    async def start(self, *args: str, env: dict[str, str], cwd: Path) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._read)
        env = {**env, "COLUMNS": str(COLUMNS), "TERM": "xterm"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, env=env,
            cwd=cwd, stdin=self._slave, stdout=self._slave, stderr=self._slave,
        )  # fmt: skip
        os.close(self._slave)

    def _read(self) -> None:
        try:
            self.output += os.read(self._master, 65536)
        except OSError:  # the process is gone (EIO)
            asyncio.get_running_loop().remove_reader(self._master)

    @property
    def text(self) -> str:
        """What the terminal shows, without its control sequences."""
        return ANSI.sub("", self.output.decode(errors="replace"))

    @property
    def screen(self) -> str:
        """What the terminal shows now, row by row (tests.test_console.screen)."""
        return screen(self.output.decode(errors="replace"), width=COLUMNS)

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    async def say(self, line: str, *args: str, env: dict[str, str], cwd: Path) -> int:
        """Start `bot chat ARGS`, type `line` at its prompt, wait for the next prompt, then end
        it; its exit code."""
        await self.start("chat", *args, env=env, cwd=cwd)
        try:
            await eventually(lambda: "you> " in self.text)
            self.type(f"{line}\n")
            await eventually(lambda: self.text.count("you> ") == 2)
        finally:
            code = await self.close()
        return code

    async def close(self) -> int:
        """End the input (Ctrl-D), wait for the process to end (killing it after 30 s); its
        exit code."""
        assert self.proc is not None
        with contextlib.suppress(OSError):  # it may be gone already
            self.type("\x04")
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
        assert self.proc.returncode is not None
        return self.proc.returncode


STREAMED = "This answer is printed word by word as the model writes it."


async def test_chat_on_a_terminal_shows_the_answer_growing_then_once(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat` on a terminal prints the answer as it streams: its first words show while
    the model still holds the rest back, and the whole answer is on the screen once."""
    gate = asyncio.Event()
    fake.script(Reply(text=STREAMED, reasoning="HIDDEN-REASONING", hold_after=3, gate=gate))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    terminal = Terminal()
    await terminal.start("chat", env=bot_env(tmp_path, BOT_CONFIG=str(config),
                                             REDIS_URL=redis_url), cwd=tmp_path)  # fmt: skip
    try:
        await eventually(lambda: "you> " in terminal.text)
        terminal.type("hello\n")
        first_words = " ".join(STREAMED.split()[:3])
        await eventually(lambda: first_words in terminal.text.split("hello", 1)[-1])
        assert STREAMED not in terminal.text  # the model holds the rest: the text grows
        gate.set()
        await eventually(lambda: terminal.text.count("you> ") == 2)
    finally:
        gate.set()
        code = await terminal.close()
    assert code == 0, terminal.text
    shown = terminal.screen
    assert shown.count(STREAMED) == 1, shown
    assert f"you> hello\n{STREAMED}\nyou>" in shown, shown
    assert "HIDDEN-REASONING" not in terminal.text


async def test_chat_on_a_terminal_shows_log_events_as_readable_lines(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat -m hello` on a terminal with the model server down: its warnings are one
    readable line each, as `bot logs` shows them, then why; no JSON."""
    config = write_config(tmp_path, gateway_config_text(f"http://127.0.0.1:{closed_port()}/v1"))
    terminal = Terminal()
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    await terminal.start("chat", "-m", "hello", env=env, cwd=tmp_path)
    code = await terminal.close()
    lines = [line for line in terminal.text.splitlines() if line.strip()]
    assert code == 1, terminal.text
    assert not any(line.lstrip().startswith("{") for line in lines), terminal.text
    assert any(re.search(r"\bWARNI\s+model_attempt\s", line) for line in lines), terminal.text
    assert lines[-1].startswith("bot: no model answered"), terminal.text


async def test_chat_on_a_terminal_erases_a_dead_models_words_before_the_fallbacks(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """A model that goes silent mid-answer on a terminal: its words are erased (the line
    cleared) as soon as it fails, and the fallback's answer is printed once, after the
    fallback's warnings."""
    dead = "these words come from a model about to die"
    fake.script(Reply(text=dead, reasoning=None, stall_after=4))
    async with FakeOpenAI(models=["backup-model"], default=Reply(text=STREAMED)) as backup:
        text = gateway_config_text(fake.base_url, backup.base_url, provider_timeout=1)
        config = write_config(tmp_path, text)
        terminal = Terminal()
        env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
        code = await terminal.say("hello", env=env, cwd=tmp_path)
    assert code == 0, terminal.text
    raw = terminal.output.decode()
    first_words = " ".join(dead.split()[:4])
    warned = raw.index("WARNI", raw.index(first_words))
    assert first_words not in screen(raw[:warned], COLUMNS)  # erased as soon as the model failed
    assert "words" not in raw[warned:]
    lines = terminal.screen.splitlines()
    after = lines[lines.index("you> hello") + 1 :]  # the fallback's warnings, then its answer
    assert after[-2:] == [STREAMED, "you>"], terminal.screen
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} WARNI ", line) for line in after[:-2])


MARKDOWN = "**Status:** ok\n\n## Next steps\n\n- check the `logs`\n- restart the *worker*"


async def test_chat_on_a_terminal_renders_a_markdown_answer(
    fake: FakeOpenAI, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat` on a terminal shows a Markdown answer rendered (bold, a heading, a list),
    without its markers, once; the conversation keeps the Markdown text, and `bot chat -m` on
    a terminal prints it raw, for scripts."""
    fake.script(Reply(text=MARKDOWN), Reply(text=MARKDOWN))
    config = write_config(tmp_path, gateway_config_text(fake.base_url))
    terminal = Terminal()
    env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
    code = await terminal.say("status?", "--user", "ada", env=env, cwd=tmp_path)
    assert code == 0, terminal.text
    lines = terminal.screen.splitlines()
    answer = [line.strip() for line in lines[lines.index("you> status?") + 1 :] if line.strip()]
    expected = ["Status: ok", "Next steps", "• check the logs", "• restart the worker", "you>"]
    assert answer == expected, terminal.screen
    assert not any(marker in terminal.text for marker in ("**", "##", "`")), terminal.text
    turns = await RedisMemory(redis_client).load("console:ada")
    assert [t.text for t in turns] == ["status?", MARKDOWN]
    once = Terminal()
    await once.start("chat", "--user", "ada", "-m", "again?", env=env, cwd=tmp_path)
    assert await once.close() == 0, once.text
    assert once.output.decode().replace("\r\n", "\n") == MARKDOWN + "\n"

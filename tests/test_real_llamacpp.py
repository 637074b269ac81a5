"""Three turns with a real llama.cpp `llama-server` through `bot chat -m`, over both APIs.

Opt-in: `make test-real` builds the server and fetches its small model into var/real/
(tests/real/prepare.sh); without them these tests are skipped. The hosted fallback is a fake
that must never be called: every turn is answered by llama.cpp itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.agent import APOLOGY, REFUSED
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import bot_env, provider_block, run_bot

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(os.environ.get("REAL_DIR", ROOT / "var" / "real"))
SERVER = REAL / "bin" / "llama-server"
MODELS = sorted((REAL / "model").glob("*.gguf")) if (REAL / "model").is_dir() else []
MODEL_ID = "gemma-3-270m"
START_SECONDS = 120.0  # loading a 250 MB model on a busy 2-core machine

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        not (SERVER.is_file() and MODELS),
        reason=f"no llama-server and model under {REAL}: run `make test-real` to build them",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A llama-server on a free port with the small model, greedy (temperature 0) so its
    answers are the same every run; yields its base URL (…/v1)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(SERVER), "-m", str(MODELS[0]), "--alias", MODEL_ID,
             "--host", "127.0.0.1", "--port", str(port), "-c", "4096", "-np", "1",
             "-t", "2", "--temp", "0", "--seed", "1", "--no-webui"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _healthy(url):  # polling a starting server, with a deadline
            assert proc.poll() is None, f"llama-server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"llama-server not up: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def real_config(llama_url: str, api: str, hosted_url: str) -> str:
    """The seed's "other OpenAI-compatible proxies" block pointing at llama-server, with a
    hosted-style fallback behind it."""
    local = json.loads(provider_block(llama_url, api, MODEL_ID, timeout=120, window=(4096, 48)))
    local["models"][0] |= {"name": "Local Model", "reasoning": False, "input": ["text"]}
    hosted = provider_block(hosted_url, "openai-completions", "hosted-model")
    return f"""{{
      agents: {{ defaults: {{
        model: {{ primary: "local/{MODEL_ID}", fallbacks: ["hosted/hosted-model"] }},
        systemPrompt: "You are a helpful assistant. Answer in one short sentence.",
        timeoutSeconds: 180,
      }} }},
      models: {{ mode: "replace", providers: {{ local: {json.dumps(local)}, hosted: {hosted} }} }},
    }}"""


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
async def test_three_turns_are_each_answered_by_llamacpp(
    llama_server: str, api: str, tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot chat -m` three times in one conversation: llama.cpp answers each turn (the later
    ones carry the assistant's earlier turns), with no apology and no fallback."""
    async with FakeOpenAI(models=["hosted-model"], default=Reply(text="FROM-HOSTED")) as hosted:
        config = tmp_path / "bot.json5"
        config.write_text(real_config(llama_server, api, hosted.base_url))
        env = bot_env(tmp_path, BOT_CONFIG=str(config), REDIS_URL=redis_url)
        for message in ["Hello, who are you?", "What is the capital of France?", "Thank you!"]:
            result = await run_bot("chat", "-m", message, "--user", "ada", "-v", env=env, cwd=ROOT)
            assert result.code == 0, result.err
            reply = result.out.strip()
            assert reply, result.err
            assert reply not in (APOLOGY, REFUSED, "FROM-HOSTED"), result.err
            attempts = [e for e in _events(result.err) if e.get("event") == "model_attempt"]
            assert [(e["model"], e["outcome"]) for e in attempts] == [
                (f"local/{MODEL_ID}", "ok")
            ], result.err
        assert hosted.requests == []


def _events(stderr: str) -> list[dict[str, object]]:
    """The JSON events `bot chat -v` wrote to stderr."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found

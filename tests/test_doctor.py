"""`bot doctor`: each check against real Redis and fake LM Studio / Bot API servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bot.config import Config, parse_config
from bot.doctor import Check, diagnose, render
from bot.redisdb import too_old
from bot.settings import Settings
from tests.fakes.lmstudio_server import FakeLMStudio
from tests.fakes.mcp_server import stdio_block
from tests.fakes.openai_server import FakeOpenAI, closed_port
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.twilio_server import FakeTwilio, TwilioReply, method_not_allowed, new_api_key
from tests.helpers import gateway_config_text, provider_block

PUBLIC = "https://bot.example.com"


def settings(tmp_path: Path, redis_url: str | None, **values: Any) -> Settings:
    """Settings with every optional secret unset unless given (the environment is ignored)."""
    blank = {
        "bot_public_url": None,
        "twilio_account_sid": None,
        "twilio_auth_token": None,
        "twilio_whatsapp_from": None,
        "twilio_api_key_sid": None,
        "twilio_api_key_secret": None,
        "telegram_bot_token": None,
        "telegram_webhook_secret": None,
        "anthropic_api_key": None,
        "openai_api_key": None,
        "openrouter_api_key": None,
    }
    return Settings(  # type: ignore[call-arg]
        redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None, **(blank | values)
    )


def config(model_url: str, *, channels: str = "", **kwargs: Any) -> Config:
    text = gateway_config_text(model_url, **kwargs).rstrip().rstrip("}")
    return parse_config(text + f"channels: {{ {channels} }} }}", source="t", env={})


def named(checks: list[Check], prefix: str) -> list[Check]:
    return [c for c in checks if c.name.startswith(prefix)]


def report(checks: list[Check]) -> str:
    out = io.StringIO()
    render(checks, out, color=False)
    return out.getvalue()


@contextlib.asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[str]:
    """A one-route server answering GET /v1/models with `handler`; yields its /v1 base URL."""
    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
async def lmstudio() -> AsyncIterator[FakeOpenAI]:
    """A fake LM Studio with `local-model` loaded."""
    async with FakeOpenAI(models=["local-model"]) as fake:
        yield fake


async def set_webhook(fake: FakeTelegram, url: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.base_url}/bot{fake.token}/setWebhook", json={"url": url}) as response,
    ):
        assert response.status == 200


# -- the whole report --------------------------------------------------------------------------


async def test_healthy_setup_is_all_ok(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, lmstudio: FakeOpenAI
) -> None:
    """A running server with the model loaded and a reachable Redis: every check ok, exit 0."""
    checks = await diagnose(settings(tmp_path, redis_url), config(lmstudio.base_url))
    assert [c.name for c in checks] == [
        "config",
        "redis",
        "model local/local-model",
        "whatsapp",
        "telegram",
        "public url",
    ]
    assert all(c.status == "ok" for c in checks), checks
    assert checks[0].detail == "t; chain: local/local-model"
    version = (await redis_client.info("server"))["redis_version"]
    assert checks[1].detail.endswith(f"answers PING (Redis {version})")
    assert "contextWindow 32000, maxTokens 1024" in checks[2].detail
    auth = lmstudio.requests_to("/models")[0].headers["Authorization"]
    assert auth == "Bearer sk-test-local"
    assert render(checks, io.StringIO(), color=False) == 0


async def test_the_chain_lists_fallbacks_in_order(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """The config check shows the resolved chain, and each provider is asked once."""
    async with FakeOpenAI(models=["backup-model"]) as backup:
        cfg = config(lmstudio.base_url, fallback_url=backup.base_url)
        checks = await diagnose(settings(tmp_path, redis_url), cfg)
    assert checks[0].detail == "t; chain: local/local-model → backup/backup-model"
    assert [c.status for c in named(checks, "model ")] == ["ok", "ok"]
    assert len(lmstudio.requests_to("/models")) == len(backup.requests_to("/models")) == 1


# -- models ------------------------------------------------------------------------------------


async def test_server_down_says_how_to_start_it(tmp_path: Path, redis_url: str) -> None:
    """A refused connection fails with the start-the-server hint and the curl for its port."""
    port = closed_port()
    checks = await diagnose(settings(tmp_path, redis_url), config(f"http://127.0.0.1:{port}/v1"))
    (model,) = named(checks, "model ")
    assert model.status == "fail"
    assert f"cannot connect to http://127.0.0.1:{port}/v1" in model.detail
    assert model.fix is not None
    assert "Start server" in model.fix
    assert f"curl http://127.0.0.1:{port}/v1/models" in model.fix
    assert render(checks, io.StringIO(), color=False) == 1


async def test_unloaded_model_is_named_with_lms_load(tmp_path: Path, redis_url: str) -> None:
    """A server listing other models fails naming the missing id, what is loaded, and lms load."""
    async with FakeOpenAI(models=["other-model"]) as fake:
        checks = await diagnose(settings(tmp_path, redis_url), config(fake.base_url))
    (model,) = named(checks, "model ")
    assert model.status == "fail"
    assert model.detail == "model 'local-model' is not loaded (loaded: other-model)"
    assert model.fix is not None
    assert "lms load local-model" in model.fix


async def test_lm_studio_names_the_loaded_context_and_the_window_used(
    tmp_path: Path, redis_url: str
) -> None:
    """LM Studio loaded the model with 8,192 tokens while the config says 32,000: doctor warns
    and names both numbers and the window the gateway uses."""
    async with FakeLMStudio(model="local-model", loaded_context=8192) as fake:
        checks = await diagnose(settings(tmp_path, redis_url), config(fake.base_url))
    (model,) = named(checks, "model ")
    assert model.status == "warn"
    assert model.detail == (
        "loaded with 8192 tokens of context; the config says 32000; using 8192 "
        "(answers up to 1024 tokens)"
    )
    assert model.fix is not None
    assert "lms load local-model --context-length 32000" in model.fix


async def test_lm_studio_model_not_loaded_says_it_loads_on_demand(
    tmp_path: Path, redis_url: str
) -> None:
    """A model LM Studio has on disk but not loaded: a warning that JIT loads it, with the
    command to load it now."""
    async with FakeLMStudio(model="local-model", loaded_context=None) as fake:
        checks = await diagnose(settings(tmp_path, redis_url), config(fake.base_url))
        assert not fake.loads  # doctor never loads a model
    (model,) = named(checks, "model ")
    assert model.status == "warn"
    assert model.detail.startswith("not loaded: LM Studio loads it on the first request (JIT)")


async def test_max_tokens_over_the_window_warns(tmp_path: Path, redis_url: str) -> None:
    """maxTokens ≥ contextWindow on a loaded LM Studio model warns to lower maxTokens."""
    async with FakeLMStudio(model="local-model", loaded_context=32000) as fake:
        cfg = config(fake.base_url, window=(4096, 8192))
        checks = await diagnose(settings(tmp_path, redis_url), cfg)
    (model,) = named(checks, "model ")
    assert model.status == "warn"
    assert "maxTokens 8192 ≥ contextWindow 4096" in model.detail
    assert "answers up to 1024 tokens" in model.detail


async def test_refused_key_names_where_the_key_comes_from(tmp_path: Path, redis_url: str) -> None:
    """A 401 from /models fails and points at the provider's apiKey."""

    async def refuse(request: web.Request) -> web.Response:
        error = {"message": "Incorrect API key provided.", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)

    async with serving(refuse) as url:
        checks = await diagnose(settings(tmp_path, redis_url), config(url))
    (model,) = named(checks, "model ")
    assert model.status == "fail"
    assert "refused the API key" in model.detail
    assert model.fix == "check models.providers.local.apiKey"


async def test_silent_server_times_out_with_the_cold_start_hint(
    tmp_path: Path, redis_url: str
) -> None:
    """A server that never answers fails after http_timeout and mentions cold starts."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"data": []})

    async with serving(hang) as url:
        try:
            checks = await diagnose(settings(tmp_path, redis_url), config(url), http_timeout=0.3)
        finally:
            release.set()
    (model,) = named(checks, "model ")
    assert model.status == "fail"
    assert "did not answer within 0.3 s" in model.detail
    assert "cold start" in model.detail


async def test_small_context_room_warns(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """contextWindow barely above maxTokens warns to raise the context length or lower maxTokens."""
    checks = await diagnose(
        settings(tmp_path, redis_url), config(lmstudio.base_url, window=(8192, 6000))
    )
    (model,) = named(checks, "model ")
    assert model.status == "warn"
    assert "little room" in model.detail
    assert model.fix is not None
    assert "lower maxTokens" in model.fix


async def test_missing_hosted_key_warns_and_is_not_called(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """An anthropic fallback without ANTHROPIC_API_KEY warns that it is skipped; exit stays 0."""
    text = json.dumps(
        {
            "agents": {
                "defaults": {
                    "model": {
                        "primary": "local/local-model",
                        "fallbacks": ["anthropic/claude-sonnet-4-5"],
                    }
                }
            },
            "models": {
                "mode": "merge",
                "providers": {"local": json.loads(provider_block(lmstudio.base_url))},
            },
        }
    )
    cfg = parse_config(text, source="t", env={})
    checks = await diagnose(settings(tmp_path, redis_url), cfg)
    local, anthropic = named(checks, "model ")
    assert local.status == "ok"
    assert anthropic.name == "model anthropic/claude-sonnet-4-5"
    assert anthropic.status == "warn"
    assert anthropic.detail == "ANTHROPIC_API_KEY is not set: this fallback is skipped"
    assert anthropic.fix is not None
    assert "set ANTHROPIC_API_KEY in .env" in anthropic.fix
    assert render(checks, io.StringIO(), color=False) == 0


# -- Redis -------------------------------------------------------------------------------------


async def test_unreachable_redis_fails(tmp_path: Path, lmstudio: FakeOpenAI) -> None:
    """REDIS_URL at a closed port fails with the start-or-fix hint, and the exit code is 1."""
    url = f"redis://user:hunter22@127.0.0.1:{closed_port()}/0"
    checks = await diagnose(settings(tmp_path, url), config(lmstudio.base_url))
    (redis,) = named(checks, "redis")
    assert redis.status == "fail"
    assert redis.fix is not None
    assert redis.fix.startswith("start Redis or fix REDIS_URL (redis://***@127.0.0.1:")
    assert "hunter22" not in report(checks)
    assert render(checks, io.StringIO(), color=False) == 1


def embedded_socket(data_dir: Path) -> Path:
    return data_dir.resolve() / "redis" / "redis.sock"


async def test_embedded_redis_is_started_and_reported(tmp_path: Path, lmstudio: FakeOpenAI) -> None:
    """Without REDIS_URL the embedded server is started, pinged, reported with its version,
    and stopped again."""
    checks = await diagnose(settings(tmp_path, None), config(lmstudio.base_url))
    (redis,) = named(checks, "redis")
    socket = embedded_socket(tmp_path)
    assert redis.status == "ok"
    assert re.fullmatch(
        rf"embedded Redis at {re.escape(str(socket))} \(Redis \d+\.\d+\S*\)", redis.detail
    )
    assert not socket.exists()


# -- channels ----------------------------------------------------------------------------------


async def test_whatsapp_half_configured_names_the_missing_variables(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """A SID without token and sender fails naming both, and BOT_PUBLIC_URL is asked for."""
    env = settings(tmp_path, redis_url, twilio_account_sid="AC123")
    checks = await diagnose(env, config(lmstudio.base_url))
    (whatsapp,) = named(checks, "whatsapp")
    assert whatsapp.status == "fail"
    assert "TWILIO_AUTH_TOKEN, TWILIO_WHATSAPP_FROM not set" in whatsapp.detail
    (public,) = named(checks, "public url")
    assert public.status == "warn"
    assert public.fix is not None
    assert "BOT_PUBLIC_URL" in public.fix


def twilio_settings(tmp_path: Path, redis_url: str, twilio: FakeTwilio, **values: Any) -> Settings:
    """A configured WhatsApp whose REST calls go to the fake `twilio`."""
    return settings(
        tmp_path,
        redis_url,
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_whatsapp_from="whatsapp:+14155238886",
        twilio_api_base_url=twilio.base_url,
        bot_public_url=PUBLIC,
        **values,
    )


async def test_whatsapp_risky_settings_warn(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, twilio: FakeTwilio
) -> None:
    """verifySignature false and an open dmPolicy each warn on a configured WhatsApp."""
    env = twilio_settings(tmp_path, redis_url, twilio)
    channels = 'whatsapp: { verifySignature: false, dmPolicy: "open" }'
    checks = await diagnose(env, config(lmstudio.base_url, channels=channels))
    whatsapp = named(checks, "whatsapp")
    assert [c.status for c in whatsapp] == ["warn", "warn"]
    assert "verifySignature" in whatsapp[0].detail
    assert "dmPolicy is open" in whatsapp[1].detail
    assert named(checks, "public url")[0].status == "ok"


async def test_twilio_with_the_auth_token_and_a_readable_list_is_ok(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, twilio: FakeTwilio
) -> None:
    """Without a key doctor says REST calls use the auth token, and reads one message of the
    list (PageSize=1) to show exact-once resends work."""
    checks = await diagnose(twilio_settings(tmp_path, redis_url, twilio), config(lmstudio.base_url))
    (rest,) = named(checks, "twilio")
    assert rest.status == "ok"
    assert rest.detail == (
        "REST calls use the auth token; the Messages list is readable (exact-once resends)"
    )
    [lookup] = twilio.requests
    assert (lookup.method, lookup.form, lookup.user) == (
        "GET",
        {"PageSize": "1"},
        twilio.account_sid,
    )


async def test_twilio_restricted_key_without_messages_read_warns_with_the_permission(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """A restricted API key whose list answers 403: doctor names the key masked (SK…), the
    status and Twilio's code, and the permission to grant; no secret and no full key SID."""
    key = new_api_key(list_messages=False)
    async with FakeTwilio(api_keys=(key,)) as twilio:
        env = twilio_settings(
            tmp_path,
            redis_url,
            twilio,
            twilio_api_key_sid=key.sid,
            twilio_api_key_secret=key.secret,
        )
        checks = await diagnose(env, config(lmstudio.base_url))
    (rest,) = named(checks, "twilio")
    assert rest.status == "warn"
    assert rest.detail.startswith(f"REST calls use API key SK…{key.sid[-4:]}; ")
    assert "HTTP 403 (code 20003)" in rest.detail
    assert rest.fix is not None
    assert '"Messages: read"' in rest.fix
    assert [r.user for r in twilio.requests] == [key.sid]
    text = report(checks)
    assert key.secret not in text
    assert key.sid not in text
    assert named(checks, "whatsapp")[0].status == "ok"


@pytest.mark.parametrize(
    ("refusal", "status", "words"),
    [
        (method_not_allowed(), "warn", "let GET"),
        (TwilioReply(status=401, code=20003, message="Authenticate"), "fail", "check TWILIO_"),
    ],
    ids=["proxy-405", "refused-401"],
)
async def test_twilio_list_refusals_say_what_to_fix(
    tmp_path: Path,
    redis_url: str,
    lmstudio: FakeOpenAI,
    twilio: FakeTwilio,
    refusal: TwilioReply,
    status: str,
    words: str,
) -> None:
    """A 405 (a proxy passing only POST) warns with the GET to let through; a 401 fails and
    names the credential variables."""
    twilio.refuse_list(refusal)
    checks = await diagnose(twilio_settings(tmp_path, redis_url, twilio), config(lmstudio.base_url))
    (rest,) = named(checks, "twilio")
    assert rest.status == status
    assert f"HTTP {refusal.status}" in rest.detail
    assert rest.fix is not None
    assert words in rest.fix


async def test_telegram_webhook_set_is_ok(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, telegram: FakeTelegram
) -> None:
    """A valid token, a secret and the webhook at BOT_PUBLIC_URL: ok, naming the bot."""
    await set_webhook(telegram, f"{PUBLIC}/webhooks/telegram")
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=telegram.token,
        telegram_webhook_secret="s3cret-value",
        telegram_api_base_url=telegram.base_url,
        bot_public_url=PUBLIC,
    )
    checks = await diagnose(env, config(lmstudio.base_url))
    (tg,) = named(checks, "telegram")
    assert tg.status == "ok"
    assert tg.detail == f"@{telegram.username} via webhook {PUBLIC}/webhooks/telegram"
    assert all(c.status == "ok" for c in checks), checks
    assert telegram.token not in report(checks)


async def test_telegram_without_webhook_says_set_webhook(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, telegram: FakeTelegram
) -> None:
    """Webhook mode with no webhook registered warns with `bot telegram set-webhook`."""
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=telegram.token,
        telegram_webhook_secret="s3cret-value",
        telegram_api_base_url=telegram.base_url,
        bot_public_url=PUBLIC,
    )
    checks = await diagnose(env, config(lmstudio.base_url))
    (tg,) = named(checks, "telegram")
    assert tg.status == "warn"
    assert tg.fix == "run: bot telegram set-webhook"
    assert telegram.token not in report(checks)


async def test_telegram_webhook_elsewhere_and_no_secret(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, telegram: FakeTelegram
) -> None:
    """A missing TELEGRAM_WEBHOOK_SECRET fails; a webhook at another URL warns."""
    await set_webhook(telegram, "https://old.example.com/hook")
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=telegram.token,
        telegram_api_base_url=telegram.base_url,
        bot_public_url=PUBLIC,
    )
    checks = await diagnose(env, config(lmstudio.base_url))
    secret, elsewhere = named(checks, "telegram")
    assert secret.status == "fail"
    assert "webhook mode refuses to start without it" in secret.detail
    assert elsewhere.status == "warn"
    assert f"not {PUBLIC}/webhooks/telegram" in elsewhere.detail


async def test_telegram_polling_with_a_webhook_warns(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, telegram: FakeTelegram
) -> None:
    """Polling mode with a webhook still registered warns that it will be deleted."""
    await set_webhook(telegram, f"{PUBLIC}/webhooks/telegram")
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=telegram.token,
        telegram_api_base_url=telegram.base_url,
    )
    checks = await diagnose(
        env, config(lmstudio.base_url, channels='telegram: { mode: "polling" }')
    )
    (tg,) = named(checks, "telegram")
    assert tg.status == "warn"
    assert "deletes it when polling starts" in tg.detail
    assert named(checks, "public url")[0].status == "ok"


async def test_wrong_telegram_token_fails_without_printing_it(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI, telegram: FakeTelegram
) -> None:
    """A token the Bot API refuses fails with the BotFather hint; the token is never shown."""
    wrong = "999999:WRONG-token-value"
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=wrong,
        telegram_webhook_secret="s3cret-value",
        telegram_api_base_url=telegram.base_url,
        bot_public_url=PUBLIC,
    )
    checks = await diagnose(env, config(lmstudio.base_url))
    (tg,) = named(checks, "telegram")
    assert tg.status == "fail"
    assert tg.fix == "TELEGRAM_BOT_TOKEN is wrong (BotFather /token)"
    assert wrong not in report(checks)
    assert "s3cret-value" not in report(checks)


async def test_unreachable_bot_api_fails_without_the_token(
    tmp_path: Path, redis_url: str, lmstudio: FakeOpenAI
) -> None:
    """A Bot API that refuses connections fails; the URL with the token is not printed."""
    token = "123456:TEST-token"
    env = settings(
        tmp_path,
        redis_url,
        telegram_bot_token=token,
        telegram_webhook_secret="s3cret-value",
        telegram_api_base_url=f"http://127.0.0.1:{closed_port()}",
        bot_public_url=PUBLIC,
    )
    checks = await diagnose(env, config(lmstudio.base_url))
    (tg,) = named(checks, "telegram")
    assert tg.status == "fail"
    assert "cannot reach the Bot API" in tg.detail
    assert token not in report(checks)


# -- render ------------------------------------------------------------------------------------


def test_render_exit_codes_and_mentions_every_check() -> None:
    """render returns 1 only when a check failed and prints every name, detail and fix."""
    checks = [
        Check(name="config", status="ok", detail="t; chain: a/b"),
        Check(name="redis", status="warn", detail="slow", fix="look at it"),
    ]
    out = io.StringIO()
    assert render(checks, out, color=False) == 0
    text = out.getvalue()
    assert all(word in text for word in ("config", "t; chain: a/b", "redis", "fix: look at it"))
    assert "\x1b[" not in text

    failed = [*checks, Check(name="telegram", status="fail", detail="bad", fix="do this")]
    out = io.StringIO()
    assert render(failed, out, color=True) == 1
    assert "telegram" in out.getvalue()
    assert "fix: do this" in out.getvalue()
    assert "\x1b[" in out.getvalue()


async def test_chain_without_any_key_fails(tmp_path: Path, redis_url: str) -> None:
    """When no model in the chain has a key the report fails; alias-only models are checked too."""
    text = """{
      agents: { defaults: {
        model: { primary: "anthropic/claude-sonnet-4-5" },
        models: { "openai/gpt-5.1": { alias: "GPT" } },
      } },
    }"""
    checks = await diagnose(settings(tmp_path, redis_url), parse_config(text, source="t", env={}))
    primary, extra = named(checks, "model ")
    assert primary.status == "fail"
    assert primary.detail == (
        "ANTHROPIC_API_KEY is not set: the primary is skipped, and no model in the chain can answer"
    )
    assert extra.name == "model openai/gpt-5.1"
    assert extra.status == "warn"
    assert extra.detail == "OPENAI_API_KEY is not set: this model cannot be used"
    assert render(checks, io.StringIO(), color=False) == 1


async def test_tools_servers_allow_lists_and_models_that_refused_tools_are_reported(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, lmstudio: FakeOpenAI
) -> None:
    """A working MCP server (its tools and how many are allowed), one that cannot start (with
    its stderr), an allowed tool no server offers, and a model a gateway noted as refusing
    tools: each is one line that says what to do."""
    broken = {"command": sys.executable, "args": ["-c", "import sys; sys.exit('no such db')"]}
    tools = {
        "mcp": {"orders": stdio_block(), "broken": broken},
        "allow": ["orders.lookup_order", "orders.track_parcel"],
    }
    await redis_client.set("llm:tools-refused:local/local-model", "1", ex=60)
    cfg = config(lmstudio.base_url, sections=f"tools: {json.dumps(tools)},")
    checks = named(await diagnose(settings(tmp_path, redis_url), cfg), "tools")
    by_name = {c.name: c for c in checks if c.name != "tools"}
    assert by_name["tools orders"].status == "ok"
    assert "2 allowed" not in by_name["tools orders"].detail
    assert "1 allowed" in by_name["tools orders"].detail
    assert by_name["tools broken"].status == "fail"
    assert "no such db" in by_name["tools broken"].detail
    warnings = [c.detail for c in checks if c.name == "tools"]
    assert any("track_parcel" in w for w in warnings)
    assert any("local/local-model refused a request with tools" in w for w in warnings)


def test_a_redis_older_than_6_2_is_too_old() -> None:
    """The turn's GETEX, GETDEL and LPOP with a count came with Redis 6.2: doctor fails older
    servers, and lets through a version it cannot read rather than guess."""
    assert [too_old(v) for v in ("5.0.7", "6.0.16", "6.2.0", "7.0.15", "8.2.1")] == [
        True, True, False, False, False,
    ]  # fmt: skip
    assert not too_old("")
    assert not too_old("unstable")

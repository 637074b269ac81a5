"""Composition root: builds every piece from Settings + Config and closes them in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from bot.access import RedisAccess
from bot.agent import Agent
from bot.commands import Commands
from bot.config import CATALOG_KEYS, Config
from bot.console import ConsoleParts, console_problems, make_console_app
from bot.delivery import ReplySender
from bot.intake import READY_STREAM, RedisIntake
from bot.llm.breaker import RedisBreaker
from bot.llm.choice import RedisModelChoice
from bot.llm.failover import FailoverClient
from bot.llm.lmstudio import LMStudioModels
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.llm.toolsupport import REFUSED_KEY as TOOLS_REFUSED_KEY
from bot.llm.toolsupport import ToolSupport
from bot.llm.transcription import OpenAITranscriber
from bot.llm.types import ModelRef
from bot.logs import EventHub, Logger, RedisStreamSink
from bot.media import MediaFetcher, MediaReader
from bot.memory import Compactor, RedisMemory
from bot.metrics import Metrics
from bot.poller import Poller
from bot.redisdb import RedisHandle, is_cluster, open_redis
from bot.reminders import RedisReminders, RemindTool
from bot.settings import Settings
from bot.spool import SpillIntake, Spool, SpoolDrainer, SpooledIntake
from bot.tools import BuiltinToolbox, McpToolbox, combined, tool_warnings
from bot.usage import Prices, RedisUsage
from bot.web import make_web_app
from bot.worker import Worker
from channels.base import Channel
from channels.console import ConsoleChannel
from channels.telegram import TelegramChannel, TelegramMediaFetcher
from channels.whatsapp import TwilioMediaFetcher, WhatsAppChannel

if TYPE_CHECKING:
    from bot.tools.mcp import McpHub


@dataclass(frozen=True, slots=True, kw_only=True)
class App:
    """The running gateway's parts, shared by the web server, the worker and the CLI."""

    settings: Settings
    config: Config
    log: Logger
    redis: RedisHandle
    registry: ModelRegistry
    llm: FailoverClient
    memory: RedisMemory
    agent: Agent
    access: RedisAccess
    choice: RedisModelChoice
    intake: RedisIntake
    spool: Spool
    breaker: RedisBreaker
    local: LMStudioModels | None  # what LM Studio has loaded, when a local provider is configured
    metrics: Metrics
    whatsapp: WhatsAppChannel | None
    telegram: TelegramChannel | None
    background: tuple[asyncio.Task[None], ...] = ()  # tasks that must run as long as the app
    usage: RedisUsage  # tokens and cost per sender, model and conversation; daily budgets
    tools: McpHub | None = None  # the MCP servers' sessions, when tools are configured here
    compactor: Compactor | None = None  # the console's "compact now" (the agent holds its own)
    reminders: RedisReminders | None = None  # fired by workers through the outbox

    @property
    def senders(self) -> dict[str, Channel]:
        """Every channel this process can reply on, by name."""
        return {c.name: c for c in (self.whatsapp, self.telegram) if c is not None}

    @property
    def webhook_channels(self) -> list[Channel]:
        """The channels whose webhooks this process serves (Telegram only in webhook mode)."""
        telegram = (
            self.telegram if self.telegram and self.telegram.config.mode == "webhook" else None
        )
        return [c for c in (self.whatsapp, telegram) if c is not None]

    def worker(self, extra: Mapping[str, ReplySender] | None = None) -> Worker:
        """A turn runner for this process, configured from agents.defaults. `extra`: more
        channels to reply on (`bot chat` adds the console). Its sweep never wakes a console
        conversation: only the `bot chat` at that terminal can print the reply."""
        defaults = self.config.agents.defaults
        return Worker(
            redis=self.redis.client,
            agent=self.agent,
            memory=self.memory,
            senders={**self.senders, **(extra or {})},
            log=self.log,
            lease_seconds=defaults.lease_seconds,
            max_concurrent=defaults.max_concurrent,
            drain_seconds=defaults.timeout_seconds,
            retry_seconds=min(5.0, defaults.lease_seconds),  # waits on a Redis that is down
            delivery_retry_seconds=defaults.delivery_retry_seconds,
            sweep_skip=(f"{ConsoleChannel.name}:",),
            reminders=self.reminders,
        )

    def web_app(self) -> web.Application:
        """The HTTP application: health routes and every enabled channel's webhooks."""
        return make_web_app(
            redis=self.redis.client,
            intake=SpooledIntake(self.intake, self.spool, log=self.log),
            channels=self.webhook_channels,
            public_url=self.settings.bot_public_url,
            metrics_body=self.metrics_body,
            log=self.log,
            max_inflight=self.settings.bot_max_inflight,
            spill=SpillIntake(self.spool, log=self.log, reason="busy"),
        )

    def console_app(self) -> web.Application:
        """The operator console (its own listener: BOT_CONSOLE_HOST:BOT_CONSOLE_PORT)."""
        assert self.compactor is not None, "open_app builds the compactor"
        return make_console_app(
            ConsoleParts(
                settings=self.settings,
                config=self.config,
                log=self.log,
                redis=self.redis.client,
                registry=self.registry,
                breaker=self.breaker,
                choice=self.choice,
                memory=self.memory,
                compactor=self.compactor,
                access=self.access,
                usage=self.usage,
                local=self.local,
                reminders=self.reminders,
            )
        )

    async def metrics_body(self) -> bytes:
        """The metrics, with inbox depth and breaker states read from Redis now."""
        try:
            inbox = await self.redis.client.xlen(READY_STREAM)
            states = await self.breaker.states([str(m.ref) for m in self.registry.chain()])
        except (RedisError, OSError):
            return self.metrics.render()
        self.metrics.set_state(inbox=inbox, breakers={s.model: s.state for s in states})
        return self.metrics.render()

    def spool_drainer(self) -> SpoolDrainer:
        """The web role's task that moves spooled messages into Redis once it answers. Files
        left by dead processes are adopted now, so new messages queue behind them."""
        with contextlib.suppress(OSError):  # the drainer reports it (spool_failed)
            self.spool.adopt()
        return SpoolDrainer(spool=self.spool, intake=self.intake, log=self.log)

    def poller(self) -> Poller | None:
        """The Telegram long-poller, when channels.telegram.mode is polling."""
        if self.telegram is None or self.telegram.config.mode != "polling":
            return None
        return Poller(
            redis=self.redis.client, intake=self.intake, source=self.telegram, log=self.log
        )

    def problems(self) -> list[str]:
        """Set-up errors that stop the web role from starting."""
        found = self.telegram.startup_problems() if self.telegram else []
        return found + console_problems(self.settings)

    def warnings(self) -> list[str]:
        """Set-up problems an operator should see at every start."""
        found = [w for c in (self.whatsapp, self.telegram) if c for w in c.startup_warnings()]
        if self.tools is not None:
            listed = {s.name: s.tools for s in self.tools.statuses() if s.up}
            found += tool_warnings(self.config.tools, listed)
        if self.webhook_channels and not self.settings.bot_public_url:
            found.append(
                "BOT_PUBLIC_URL is not set: webhook signatures are checked against the "
                "socket address, which fails behind a proxy or tunnel"
            )
        return found


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings,
    config: Config,
    log: Logger,
    hub: EventHub | None = None,
    *,
    tools: bool = True,
) -> AsyncIterator[App]:
    """Connect Redis, build providers, channels and the agent; close everything on exit.

    A channel is built when it is enabled and its credentials are in the environment. With
    `tools` (a process that runs turns) and `tools.mcp` configured, the MCP servers are
    started for the life of the app; with `tools`, the built-in tools `tools.allow` names
    (`builtin.remind`) are offered too. Neither: no toolbox, a turn as without tools.
    """
    metrics = Metrics()
    async with open_redis(
        settings.redis_url, settings.bot_data_dir, cluster=settings.redis_cluster
    ) as redis:
        stream = RedisStreamSink(redis.client, max_len=config.logging.stream_max_len)
        if hub is not None:
            hub.add(metrics.observe)
            hub.add(stream)
            stream.start()
        providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, connect=10))
        channels = config.channels
        whatsapp = (
            WhatsAppChannel(settings=settings, config=channels.whatsapp, log=log)
            if channels.whatsapp.enabled
            and (settings.twilio_account_sid or settings.twilio_auth_token)
            else None
        )
        telegram = (
            TelegramChannel(settings=settings, config=channels.telegram, http=http, log=log)
            if channels.telegram.enabled and settings.telegram_bot_token
            else None
        )
        local_providers = {
            pid: pc for pid, pc in config.providers().items() if pid not in CATALOG_KEYS
        }
        local = (
            LMStudioModels(redis=redis.client, providers=local_providers, http=http, log=log)
            if local_providers
            else None
        )
        registry = ModelRegistry(config, local)
        breaker = RedisBreaker(redis.client, log=log)
        usage = RedisUsage(redis.client, prices=Prices(config), log=log)
        llm = FailoverClient(
            registry=registry,
            providers=providers,
            log=log,
            breaker=breaker,
            local=local,
            usage=usage,
            tool_support=ToolSupport(note=tools_refused_note(redis.client)),
        )
        servers = start_tools(config, log) if tools and config.tools.mcp else None
        content = config.logging.include_content
        mcp_toolbox = (
            McpToolbox(servers, config.tools, log, include_content=content)
            if servers is not None
            else None
        )
        spool = Spool(Path(settings.bot_data_dir) / "spool", log=log)
        media_config = config.agents.defaults.media
        heard = media_config.transcription_model
        transcriber = (
            OpenAITranscriber(
                ModelRef.parse(heard), config.providers()[ModelRef.parse(heard).provider]
            )
            if heard
            else None
        )
        fetchers: dict[str, MediaFetcher] = {}
        if whatsapp is not None:
            fetchers[whatsapp.name] = TwilioMediaFetcher(settings=settings, http=http)
        if telegram is not None:
            fetchers[telegram.name] = TelegramMediaFetcher(telegram)
        try:
            if servers is not None:
                await servers.start()
            defaults = config.agents.defaults
            memory = RedisMemory(redis.client, idle_days=config.session.idle_days)
            compactor = Compactor(memory=memory, llm=llm, config=defaults.compaction, log=log)
            choice = RedisModelChoice(redis.client, registry, ttl_seconds=memory.ttl_seconds)
            access = RedisAccess(
                redis.client,
                channels=config.channels,
                commands=config.commands,
                rate_per_minute=config.session.rate_limit_per_minute,
                log=log,
            )
            reminders = RedisReminders(
                redis.client,
                log=log,
                default_zone=defaults.timezone,
                admins=frozenset(config.commands.admins),
            )
            window_hint = (
                frozenset({"whatsapp"})
                if not channels.whatsapp.reminder_template_sid
                else frozenset()
            )
            reminder_channels = frozenset(
                name
                for name, channel in (
                    ("whatsapp", channels.whatsapp),
                    ("telegram", channels.telegram),
                )
                if channel.enabled
            )
            # MCP servers' tools and/or allowed built-in ones; neither: no toolbox at all.
            builtins = BuiltinToolbox(
                [RemindTool(reminders, channels=reminder_channels, window_hint=window_hint)],
                config.tools,
                log,
                include_content=content,
            )
            toolbox = combined([mcp_toolbox, builtins if tools else None])
            commands = Commands(
                choice=choice,
                registry=registry,
                memory=memory,
                compactor=compactor,
                access=access,
                breaker=breaker,
                model_switch=config.commands.model_switch,
                log=log,
                usage=usage,
                daily_token_budget=config.session.daily_token_budget,
                tools=toolbox,
                reminders=reminders,
                reminder_window_hint=window_hint,
                reminder_channels=reminder_channels,
            )
            agent = Agent(
                redis=redis.client,
                llm=llm,
                compactor=compactor,
                access=access,
                commands=commands,
                choice=choice,
                system_prompt=defaults.system_prompt,
                turn_timeout=defaults.timeout_seconds,
                max_inbound_chars=defaults.max_inbound_chars,
                log=log,
                usage=usage,
                daily_token_budget=config.session.daily_token_budget,
                media=MediaReader(
                    fetchers=fetchers,
                    transcriber=transcriber,
                    max_bytes=media_config.max_bytes,
                    log=log,
                    usage=usage,
                ),
                replied={whatsapp.name: whatsapp} if whatsapp is not None else None,
                toolbox=toolbox,
                max_tool_steps=defaults.max_tool_steps,
            )
            yield App(
                settings=settings,
                config=config,
                log=log,
                redis=redis,
                registry=registry,
                llm=llm,
                memory=memory,
                agent=agent,
                access=access,
                choice=choice,
                intake=RedisIntake(redis.client, log=log, ordered=not is_cluster(redis.client)),
                spool=spool,
                breaker=breaker,
                local=local,
                metrics=metrics,
                whatsapp=whatsapp,
                telegram=telegram,
                background=(stream.task,) if stream.task is not None else (),
                usage=usage,
                tools=servers,
                compactor=compactor,
                reminders=reminders,
            )
        finally:
            if servers is not None:
                await servers.close()
            spool.close()
            if whatsapp is not None:
                await whatsapp.close()
            await http.close()
            if hub is not None:
                hub.remove(stream)
                hub.remove(metrics.observe)
                await stream.close()
            await llm.close()
            if transcriber is not None:
                await transcriber.close()
            for provider in providers.values():
                await provider.close()


def start_tools(config: Config, log: Logger) -> McpHub:
    """The MCP servers' sessions (the SDK is imported only by a process that has tools)."""
    from bot.tools.mcp import McpHub

    return McpHub(config.tools.mcp, log)


def tools_refused_note(redis: aioredis.Redis) -> Callable[[str, float], Awaitable[None]]:
    """Keep in Redis, for `bot doctor`, that a model refused tools (for as long as it is sent
    none); best-effort: a Redis that fails here changes nothing."""

    async def note(model: str, seconds: float) -> None:
        with contextlib.suppress(RedisError, OSError):
            await redis.set(f"{TOOLS_REFUSED_KEY}{model}", "1", ex=max(1, int(seconds)))

    return note


def freeze_startup_heap() -> None:
    """Take everything built so far (modules, config, the App and its clients) out of the
    garbage collector's sight for the rest of the process. It lives as long as the process
    anyway; left in, every full collection rescans it (one took up to 80 ms under load in
    bench.pipeline, stalling every request in flight). Call once, when serving begins."""
    gc.collect()
    gc.freeze()

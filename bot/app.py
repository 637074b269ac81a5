"""Composition root: builds every piece from Settings + Config and closes them in order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from bot.agent import Agent
from bot.config import Config
from bot.intake import RedisIntake
from bot.llm.failover import FailoverClient
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.logs import Logger
from bot.memory import RedisMemory
from bot.redisdb import RedisHandle, open_redis
from bot.settings import Settings
from bot.web import make_web_app
from bot.worker import Worker
from channels.whatsapp import WhatsAppChannel


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
    intake: RedisIntake
    whatsapp: WhatsAppChannel | None

    @property
    def channels(self) -> dict[str, WhatsAppChannel]:
        """The webhook channels enabled in the config, by name."""
        return {c.name: c for c in (self.whatsapp,) if c is not None}

    def worker(self) -> Worker:
        """A turn runner for this process, configured from agents.defaults."""
        defaults = self.config.agents.defaults
        return Worker(
            redis=self.redis.client,
            agent=self.agent,
            memory=self.memory,
            senders=self.channels,
            log=self.log,
            lease_seconds=defaults.lease_seconds,
            max_concurrent=defaults.max_concurrent,
            drain_seconds=defaults.timeout_seconds,
        )

    def web_app(self) -> web.Application:
        """The HTTP application: health routes and every enabled channel's webhooks."""
        return make_web_app(
            redis=self.redis.client,
            intake=self.intake,
            channels=self.channels.values(),
            public_url=self.settings.bot_public_url,
            log=self.log,
        )

    def warnings(self) -> list[str]:
        """Set-up problems an operator should see at every start."""
        found = [w for c in self.channels.values() for w in c.startup_warnings()]
        if self.channels and not self.settings.bot_public_url:
            found.append(
                "BOT_PUBLIC_URL is not set: webhook signatures are checked against the "
                "socket address, which fails behind a proxy or tunnel"
            )
        return found


@contextlib.asynccontextmanager
async def open_app(settings: Settings, config: Config, log: Logger) -> AsyncIterator[App]:
    """Connect Redis, build providers, channels and the agent; close everything on exit."""
    registry = ModelRegistry(config)
    async with open_redis(settings.redis_url, settings.bot_data_dir) as redis:
        providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
        whatsapp = (
            WhatsAppChannel(settings=settings, config=config.channels.whatsapp, log=log)
            if config.channels.whatsapp.enabled
            else None
        )
        try:
            llm = FailoverClient(registry=registry, providers=providers, log=log)
            defaults = config.agents.defaults
            memory = RedisMemory(
                redis.client, max_turns=config.session.max_turns, idle_days=config.session.idle_days
            )
            agent = Agent(
                llm=llm,
                memory=memory,
                system_prompt=defaults.system_prompt,
                turn_timeout=defaults.timeout_seconds,
                log=log,
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
                intake=RedisIntake(redis.client, log=log),
                whatsapp=whatsapp,
            )
        finally:
            if whatsapp is not None:
                await whatsapp.close()
            for provider in providers.values():
                await provider.close()

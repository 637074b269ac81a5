"""Composition root: builds every piece from Settings + Config and closes them in order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
from bot.worker import ReplySender, Worker


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
    senders: dict[str, ReplySender]

    def worker(self) -> Worker:
        """A turn runner for this process, configured from agents.defaults."""
        defaults = self.config.agents.defaults
        return Worker(
            redis=self.redis.client,
            agent=self.agent,
            memory=self.memory,
            senders=self.senders,
            log=self.log,
            lease_seconds=defaults.lease_seconds,
            max_concurrent=defaults.max_concurrent,
            drain_seconds=defaults.timeout_seconds,
        )


@contextlib.asynccontextmanager
async def open_app(settings: Settings, config: Config, log: Logger) -> AsyncIterator[App]:
    """Connect Redis, build providers and the agent; close everything on exit."""
    registry = ModelRegistry(config)
    async with open_redis(settings.redis_url, settings.bot_data_dir) as redis:
        providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
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
                senders={},
            )
        finally:
            for provider in providers.values():
                await provider.close()

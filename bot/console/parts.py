"""What the console reads and acts on: the gateway's stores, handed over by the composition
root (bot.app), so the console builds nothing itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web

from bot.access import RedisAccess
from bot.config import Config
from bot.console.auth import Sessions
from bot.llm.breaker import RedisBreaker
from bot.llm.choice import RedisModelChoice
from bot.llm.lmstudio import LMStudioModels
from bot.llm.registry import ModelRegistry
from bot.logs import Logger
from bot.memory import Compactor, RedisMemory
from bot.reminders import RedisReminders
from bot.settings import Settings
from bot.usage import RedisUsage

OPERATOR = "console"  # who the audit says made a change from the console


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleParts:
    """The gateway's pieces the console pages use."""

    settings: Settings
    config: Config
    log: Logger
    redis: aioredis.Redis
    registry: ModelRegistry
    breaker: RedisBreaker
    choice: RedisModelChoice
    memory: RedisMemory
    compactor: Compactor
    access: RedisAccess
    usage: RedisUsage
    local: LMStudioModels | None = None
    reminders: RedisReminders | None = None  # pending ones are listed per conversation

    @property
    def show_text(self) -> bool:
        """Message text is shown only where the config logs it (`logging.includeContent`)."""
        return self.config.logging.include_content


PARTS = web.AppKey("console_parts", ConsoleParts)
SESSIONS = web.AppKey("console_sessions", Sessions)
STOPPING = web.AppKey("console_stopping", asyncio.Event)  # set on shutdown: SSE streams end
CSRF = web.RequestKey("console_csrf", str)  # the signed-in session's CSRF token

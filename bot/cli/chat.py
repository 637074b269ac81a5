"""`bot chat`: talk to the gateway's models from this terminal (one message or a REPL)."""

from __future__ import annotations

import asyncio
import sys

from bot.app import App, open_app
from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.config import Config
from bot.errors import AllModelsFailed, BotError, ModelError
from bot.logs import EventHub, Logger
from bot.settings import Settings
from channels.console import ConsoleChannel


async def chat(
    settings: Settings,
    config: Config,
    log: Logger,
    message: str | None,
    user: str | None,
    hub: EventHub | None = None,
) -> int:
    """One message (`-m`) or a REPL; replies go to stdout, events to stderr."""
    console = ConsoleChannel(user=user)
    try:
        async with open_app(settings, config, log, hub) as app:
            if app.local is not None:
                await app.local.refresh()
            if message is not None:
                return await chat_once(app, console, message)
            print(f"Chatting as {console.conversation}. /quit leaves.", file=sys.stderr)
            while True:
                line = await asyncio.to_thread(_read_line)
                if line is None or line.strip() in ("/quit", "/exit"):
                    return EXIT_OK
                if line.strip():
                    result = await app.agent.run_turn([console.message(line.strip())])
                    await app.memory.append(console.conversation, result.remember)
                    if result.reply is not None:
                        await console.send(result.reply)
    except BotError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def chat_once(app: App, console: ConsoleChannel, message: str) -> int:
    """Send one message; print only the reply (exit 0), or why no model answered (exit 1)."""
    try:
        result = await app.agent.answer([console.message(message)])
    except (AllModelsFailed, ModelError) as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    await app.memory.append(console.conversation, result.remember)
    if result.reply is not None:
        await console.send(result.reply)
    return EXIT_OK


def _read_line() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None

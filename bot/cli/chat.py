"""`bot chat`: talk to the gateway's models from this terminal (one message or a REPL).

The console is a channel like the others: each typed line goes through intake into the
conversation's inbox, and a worker in this process runs the conversation (the lease, the
turn, the fenced COMMIT into memory and the outbox, delivery, which prints the reply). Intake
sends no wake-up for it, and the `bot serve` workers' sweep skips console conversations: only
this process can print the reply. A turn left by a `bot chat` that was killed is resumed, and
its reply printed, by the next `bot chat` of the same user (once the dead one's lease ends;
a `bot chat` stopped with Ctrl-C releases its lease on the way out, so the next one starts at
once).
"""

from __future__ import annotations

import asyncio
import sys

from redis.exceptions import RedisError

from bot.app import App, open_app
from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.config import Config
from bot.errors import BotError
from bot.intake import inbox_key
from bot.logs import EventHub, Logger
from bot.settings import Settings
from bot.wakeups import batch_key, lease_key
from bot.worker import Worker
from channels.console import ConsoleChannel

EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by SIGINT
BUSY_POLL = 0.2  # seconds between tries while another process holds the conversation's lease


async def chat(
    settings: Settings,
    config: Config,
    log: Logger,
    message: str | None,
    user: str | None,
    hub: EventHub | None = None,
) -> int:
    """One message (`-m`) or a REPL; replies go to stdout, events and failures to stderr.
    In a REPL on a terminal, the answer is rendered as Markdown as it is written; otherwise
    the reply's text is printed as it is."""
    console = ConsoleChannel(user=user, stream=message is None and sys.stdout.isatty())
    try:
        async with open_app(settings, config, log, hub) as app:
            if app.local is not None:
                await app.local.refresh()
            worker = app.worker({console.name: console})
            if message is not None:
                return await chat_once(app, worker, console, message)
            print(f"Chatting as {console.conversation}. /quit leaves.", file=sys.stderr)
            await run_conversation(app, worker, console.conversation)  # a turn left earlier
            while True:
                line = await asyncio.to_thread(_read_line)
                if line is None or line.strip() in ("/quit", "/exit"):
                    return EXIT_OK
                if line.strip():
                    await say(app, worker, console, line.strip())
    except BotError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RedisError as exc:
        print(f"bot: Redis failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except asyncio.CancelledError:  # Ctrl-C: the event loop's runner cancels this task
        print("bot: interrupted", file=sys.stderr)  # a turn it left: the next chat answers it
        return EXIT_INTERRUPTED


async def chat_once(app: App, worker: Worker, console: ConsoleChannel, message: str) -> int:
    """Send one message; print only the reply (exit 0), or why no model answered (exit 1)."""
    failures = console.failures
    await say(app, worker, console, message)
    return EXIT_FAILED if console.failures > failures else EXIT_OK


async def say(app: App, worker: Worker, console: ConsoleChannel, text: str) -> None:
    """One typed line, stored by intake as any channel's message (with no wake-up: no other
    process may take it), then its conversation run here until its work is done."""
    await app.intake.accept(console.message(text), wake=False)
    await run_conversation(app, worker, console.conversation)


async def run_conversation(app: App, worker: Worker, conversation: str) -> None:
    """Run the conversation's turns (a left batch first) until nothing waits in its inbox or
    batch. While another process holds its lease (another `bot chat` of the same user, or a
    killed one until its lease ends) try again every BUSY_POLL seconds."""
    redis = app.redis.client
    told = False
    while True:
        await worker.process(conversation)
        if not await redis.exists(inbox_key(conversation), batch_key(conversation)):
            return
        if not told and await redis.exists(lease_key(conversation)):
            told = True
            lease = app.config.agents.defaults.lease_seconds
            print(
                f"bot: {conversation} is busy in another process (another `bot chat`, or one "
                f"that stopped mid-turn: its lease ends within {lease:g} s); waiting",
                file=sys.stderr,
            )
        await asyncio.sleep(BUSY_POLL)


def _read_line() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None

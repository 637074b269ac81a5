"""`bot …` subcommands: argument parsing, then hand-off to the composition root."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from dotenv import dotenv_values
from pydantic import ValidationError

from bot import __version__
from bot.app import App, open_app
from bot.config import Config, load_config
from bot.errors import AllModelsFailed, BotError, ConfigError, ModelError
from bot.llm.registry import ModelRegistry
from bot.logs import Logger, make_logger
from bot.settings import Settings
from channels.console import ConsoleChannel

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bot",
        description="Switchboard: a gateway between WhatsApp/Telegram and language models.",
        epilog="Settings come from the environment and .env (see .env.example); "
        "the gateway config from BOT_CONFIG (default ./bot.json5).",
    )
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (HTTP server and turn workers)")
    serve.add_argument(
        "--role",
        choices=["all", "web", "worker"],
        default="all",
        help="all (default): both in one process; web: HTTP intake only; worker: turns only",
    )

    chat = commands.add_parser("chat", help="talk to the gateway's models from this terminal")
    chat.add_argument("-m", "--message", help="send one message, print only the reply, exit")
    chat.add_argument("--user", help="conversation name (default: your login): console:<user>")
    chat.add_argument("-v", "--verbose", action="store_true", help="show every event on stderr")

    config = commands.add_parser("config", help="inspect the gateway config")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a config and print its model chain")
    check.add_argument("file", nargs="?", help="config file (default: BOT_CONFIG or ./bot.json5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"bot: invalid environment setting:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        return config_check(settings, args.file)
    try:
        config = load_settings_config(settings)
    except ConfigError as exc:
        print(f"bot: the config cannot be used:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        log = make_logger(
            level=config.logging.level,
            secrets=settings.secrets(),
            include_content=config.logging.include_content,
        )
        announce_config(log, config)
        return asyncio.run(serve(settings, config, log, args.role))
    log = make_logger(
        level="debug" if args.verbose else "warning",
        stream=sys.stderr,
        secrets=settings.secrets(),
        include_content=config.logging.include_content,
    )
    announce_config(log, config)
    return asyncio.run(chat(settings, config, log, args.message, args.user))


def load_settings_config(settings: Settings, file: str | None = None) -> Config:
    """The config named by `file` or BOT_CONFIG; the built-in default when neither exists."""
    env = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    env.update(os.environ)
    env.update(settings.config_env())
    path = file or settings.bot_config
    explicit = file is not None or "bot_config" in settings.model_fields_set
    if not explicit and not Path(path).exists():
        return load_config(None, env)
    return load_config(path, env)


def announce_config(log: Logger, config: Config) -> None:
    if config.source == "<built-in default>":
        log.warning(
            "config_default",
            error="no config file found (BOT_CONFIG, default ./bot.json5): using the built-in "
            "local-first config (LM Studio at 127.0.0.1:1234, hosted fallbacks)",
        )


def config_check(settings: Settings, file: str | None) -> int:
    """Print the resolved chain of a config, or every error in it (exit 2)."""
    try:
        config = load_settings_config(settings, file)
    except ConfigError as exc:
        print(f"{len(exc.issues)} problem(s) in the config:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    registry = ModelRegistry(config)
    print(f"config: {config.source} (models.mode: {config.models.mode})")
    print("chain (each turn tries these in order):")
    for n, info in enumerate(registry.chain(), 1):
        print(
            f"  {n}. {info.ref}  alias={info.alias or '-'}  api={info.api}  "
            f"baseUrl={info.base_url}  contextWindow={info.context_window}  "
            f"maxTokens={info.max_tokens}" + ("" if info.listed else "  (not listed: defaults)")
        )
    return EXIT_OK


async def serve(settings: Settings, config: Config, log: Logger, role: str) -> int:
    """Run the role until SIGTERM or SIGINT; then stop intake, drain turns, close, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_app(settings, config, log) as app:
            runner: web.AppRunner | None = None
            worker: asyncio.Task[None] | None = None
            try:
                for warning in app.warnings():
                    log.warning("setup_warning", error=warning)
                if role in ("all", "web"):
                    runner = web.AppRunner(app.web_app(), access_log=None)
                    await runner.setup()
                    await web.TCPSite(runner, settings.bot_host, settings.bot_port).start()
                if role in ("all", "worker"):
                    worker = asyncio.create_task(app.worker().run(stop))
                listening = {"url": f"http://{settings.bot_host}:{settings.bot_port}"}
                log.info(
                    "server_started",
                    role=role,
                    redis=app.redis.where,
                    **(listening if runner else {}),
                )
                await stop.wait()
                log.info("server_stopping", role=role)
            finally:
                if runner is not None:
                    await runner.cleanup()
                if worker is not None:
                    stop.set()
                    await worker
    except BotError as exc:
        log.error("server_failed", error=str(exc))
        return EXIT_FAILED
    except OSError as exc:
        log.error("server_failed", error=f"cannot listen: {exc}")
        return EXIT_FAILED
    log.info("server_stopped", role=role)
    return EXIT_OK


async def chat(
    settings: Settings, config: Config, log: Logger, message: str | None, user: str | None
) -> int:
    """One message (`-m`) or a REPL; replies go to stdout, events to stderr."""
    console = ConsoleChannel(user=user)
    try:
        async with open_app(settings, config, log) as app:
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
    await console.send(result.reply)
    return EXIT_OK


def _read_line() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None

"""`bot …` argument parsing, and `main`: which subcommand module runs (each body lives in
the module named for it: serve, chat, admin, deadletters, usage, telegram, logs, doctor,
tools, config, console, reminders).

`main` imports a subcommand's module only when it runs: the gateway's parts (the openai SDK
above all) take about two seconds to import, which `bot --help` and `bot config check` never
need."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot import __version__
from bot.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    announce_config,
    load_settings_config,
    log_path,
    run_async,
)
from bot.errors import ConfigError
from bot.logs import EventHub, FileSink, make_logger
from bot.settings import Settings


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
    serve.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="N",
        help="run N processes of the role under one parent that restarts any that die; "
        "web and all share BOT_PORT (SO_REUSEPORT) (default 1)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    chat = commands.add_parser(
        "chat", help="talk to the gateway's models from this terminal (answers stream as written)"
    )
    chat.add_argument("-m", "--message", help="send one message, print only the reply, exit")
    chat.add_argument("--user", help="conversation name (default: your login): console:<user>")
    chat.add_argument("-v", "--verbose", action="store_true", help="show every event on stderr")

    telegram = commands.add_parser("telegram", help="manage the Telegram bot's webhook")
    telegram_commands = telegram.add_subparsers(
        dest="telegram_command", required=True, metavar="ACTION"
    )
    telegram_commands.add_parser(
        "set-webhook",
        help="point Telegram at BOT_PUBLIC_URL/webhooks/telegram with TELEGRAM_WEBHOOK_SECRET",
    )
    telegram_commands.add_parser("delete-webhook", help="remove the webhook (polling mode)")
    telegram_commands.add_parser("info", help="show the bot (getMe) and its webhook status")

    commands.add_parser(
        "doctor", help="check config, Redis, every model server and the channels; name the fixes"
    )

    logs = commands.add_parser(
        "logs", help="the deployment's events (Redis stream; this machine's file if unreachable)"
    )
    logs.add_argument("-n", type=int, default=50, help="how many recent events (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep showing new events")
    logs.add_argument(
        "--level",
        choices=["debug", "info", "warning", "error"],
        help="only events at or above this level",
    )
    logs.add_argument(
        "--event",
        action="append",
        default=[],
        help="only this event (repeat or comma-separate for several)",
    )
    logs.add_argument("--channel", help="only this channel (whatsapp, telegram, console)")
    logs.add_argument("--conversation", help="only this conversation, e.g. whatsapp:+15551234567")
    logs.add_argument("--since", help="only events newer than this: 30s, 10m, 2h, 1d")
    logs.add_argument("--json", action="store_true", help="JSON lines instead of columns")

    pairing = commands.add_parser("pairing", help="people waiting for access (dmPolicy pairing)")
    pairing_commands = pairing.add_subparsers(
        dest="pairing_command", required=True, metavar="ACTION"
    )
    pairing_commands.add_parser("list", help="pending pairing codes")
    approve = pairing_commands.add_parser("approve", help="let the person with CODE in")
    approve.add_argument("code")

    dead = commands.add_parser(
        "dead-letters", help="turns that failed too often to retry by themselves"
    )
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dead_commands.add_parser("list", help="show them, oldest first: ID, conversation, error")
    retry = dead_commands.add_parser(
        "retry", help="put ID's messages back at the front of its conversation and run them"
    )
    retry.add_argument("id")
    drop = dead_commands.add_parser("drop", help="forget ID (its messages stay unanswered)")
    drop.add_argument("id")

    reminder = commands.add_parser("reminders", help="pending reminders (set with /remind)")
    reminder_commands = reminder.add_subparsers(
        dest="reminders_command", required=True, metavar="ACTION"
    )
    listing = reminder_commands.add_parser("list", help="every pending one, soonest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per reminder")
    cancel = reminder_commands.add_parser("cancel", help="cancel the reminder ID")
    cancel.add_argument("id")

    model = commands.add_parser("model", help="model choices")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    history = model_commands.add_parser("history", help="the latest model changes (audit)")
    history.add_argument("-n", type=int, default=20, help="how many (default 20)")

    usage = commands.add_parser(
        "usage", help="tokens and cost by sender, model or day (from the gateway's Redis)"
    )
    usage.add_argument(
        "--by",
        choices=["sender", "model", "day"],
        default="sender",
        help="one row per sender (default), model or UTC day",
    )
    usage.add_argument(
        "--since", default="7d", help="the last N days (UTC, today included): 1d, 7d (default)"
    )
    usage.add_argument(
        "--json", action="store_true", help="one JSON object per row (tokens_in, tokens_out, cost)"
    )

    commands.add_parser(
        "console",
        help="print the operator console's sign-in URL (served by `bot serve` on "
        "BOT_CONSOLE_HOST:BOT_CONSOLE_PORT)",
    )

    tools = commands.add_parser("tools", help="the MCP servers of tools.mcp and their tools")
    tools_commands = tools.add_subparsers(dest="tools_command", required=True, metavar="ACTION")
    tools_commands.add_parser(
        "list",
        help="start each server, show its tools (allowed or not) and why one could not start; "
        "exit 1 if one could not",
    )

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
        from bot.cli.config import config_check

        return config_check(settings, args.file)
    try:
        config = load_settings_config(settings)
        if args.command == "telegram":
            from bot.cli.telegram import telegram_admin

            return run_async(telegram_admin(settings, config, args.telegram_command))
        if args.command == "doctor":
            from bot.cli.doctor import run_doctor

            return run_async(run_doctor(settings, config))
        if args.command == "logs":
            from bot.cli.logs import tail_logs

            try:
                return run_async(tail_logs(settings, config, args))
            except KeyboardInterrupt:
                return EXIT_OK
        if args.command == "console":
            from bot.cli.console import console_url

            return run_async(console_url(settings))
        if args.command == "dead-letters":
            from bot.cli.deadletters import dead_letters

            return run_async(dead_letters(settings, args))
        if args.command == "reminders":
            from bot.cli.reminders import reminders

            return run_async(reminders(settings, args))
        if args.command == "tools":
            from bot.cli.tools import tools_list

            # The servers' failures are printed by the command itself, with their stderr.
            log = make_logger(level="error", stream=sys.stderr, secrets=settings.secrets())
            return run_async(tools_list(config, log))
        if args.command == "usage":
            from bot.cli.usage import usage_report

            log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
            return run_async(usage_report(settings, config, log, args))
        if args.command in ("pairing", "model"):
            from bot.cli.admin import admin

            log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
            return run_async(admin(settings, config, log, args))
    except ConfigError as exc:
        print(f"bot: the config cannot be used:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    hub = EventHub()
    file_sink = FileSink(log_path(settings, config))
    hub.add(file_sink)
    serving = args.command == "serve"
    renderer = None
    if not serving and sys.stderr.isatty():  # `bot chat` on a terminal: lines as `bot logs`
        from bot.logreader import ReadableRenderer

        renderer = ReadableRenderer(color=True)
    log = make_logger(
        level="debug" if not serving and args.verbose else config.logging.level,
        stream=None if serving else sys.stderr,
        console_level=None if serving or args.verbose else "warning",
        secrets=settings.secrets(),
        include_content=config.logging.include_content,
        hub=hub,
        renderer=renderer,
    )
    announce_config(log, config)
    try:
        if serving:
            from bot.cli.serve import serve, serve_procs

            if args.procs > 1:
                return run_async(serve_procs(settings, config, log, args.role, args.procs))
            return run_async(serve(settings, config, log, args.role, hub, args.reuse_port))
        from bot.cli.chat import chat

        return run_async(chat(settings, config, log, args.message, args.user, hub))
    finally:
        file_sink.close()

"""`bot …` subcommands: argument parsing, then hand-off to the composition root."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from dotenv import dotenv_values
from pydantic import ValidationError
from redis.exceptions import RedisError

from bot import __version__
from bot.app import App, open_app
from bot.config import Config, load_config
from bot.deadletters import DeadLetterError, RedisDeadLetters
from bot.doctor import diagnose, render
from bot.errors import AllModelsFailed, BotError, ChannelSendError, ConfigError, ModelError
from bot.llm.registry import ModelRegistry
from bot.logreader import Filters, Printer, parse_since, show_logs
from bot.logs import EventHub, FileSink, Logger, make_logger
from bot.procs import ProcessGroup, child_argv, child_env
from bot.redisdb import EmbeddedRedis, answers, connect, open_redis
from bot.settings import Settings
from bot.usage import Totals
from channels.console import ConsoleChannel
from channels.telegram import ALLOWED_UPDATES, TelegramChannel

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
    serve.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="N",
        help="run N processes of the role under one parent that restarts any that die; "
        "web and all share BOT_PORT (SO_REUSEPORT) (default 1)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    chat = commands.add_parser("chat", help="talk to the gateway's models from this terminal")
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
    logs.add_argument("--level", choices=["debug", "info", "warning", "error"],
                      help="only events at or above this level")  # fmt: skip
    logs.add_argument("--event", action="append", default=[],
                      help="only this event (repeat or comma-separate for several)")  # fmt: skip
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

    model = commands.add_parser("model", help="model choices")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    history = model_commands.add_parser("history", help="the latest model changes (audit)")
    history.add_argument("-n", type=int, default=20, help="how many (default 20)")

    usage = commands.add_parser(
        "usage", help="tokens and cost by sender, model or day (from the gateway's Redis)"
    )
    usage.add_argument(
        "--by", choices=["sender", "model", "day"], default="sender",
        help="one row per sender (default), model or UTC day",
    )  # fmt: skip
    usage.add_argument(
        "--since", default="7d", help="the last N days (UTC, today included): 1d, 7d (default)"
    )
    usage.add_argument(
        "--json", action="store_true", help="one JSON object per row (tokens_in, tokens_out, cost)"
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
        return config_check(settings, args.file)
    try:
        config = load_settings_config(settings)
        if args.command == "telegram":
            return run_async(telegram_admin(settings, config, args.telegram_command))
        if args.command == "doctor":
            return run_async(run_doctor(settings, config))
        if args.command == "logs":
            try:
                return run_async(tail_logs(settings, config, args))
            except KeyboardInterrupt:
                return EXIT_OK
        if args.command == "dead-letters":
            return run_async(dead_letters(settings, args))
        if args.command == "usage":
            log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
            return run_async(usage_report(settings, config, log, args))
        if args.command in ("pairing", "model"):
            log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
            return run_async(admin(settings, config, log, args))
    except ConfigError as exc:
        print(f"bot: the config cannot be used:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    hub = EventHub()
    file_sink = FileSink(log_path(settings, config))
    hub.add(file_sink)
    serving = args.command == "serve"
    log = make_logger(
        level="debug" if not serving and args.verbose else config.logging.level,
        stream=None if serving else sys.stderr,
        console_level=None if serving or args.verbose else "warning",
        secrets=settings.secrets(),
        include_content=config.logging.include_content,
        hub=hub,
    )
    announce_config(log, config)
    try:
        if serving:
            if args.procs > 1:
                return run_async(serve_procs(settings, config, log, args.role, args.procs))
            return run_async(serve(settings, config, log, args.role, hub, args.reuse_port))
        return run_async(chat(settings, config, log, args.message, args.user, hub))
    finally:
        file_sink.close()


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where it is installed (it cut the gateway's webhook ack p50 from
    about 45 to 13 ms at 250 webhooks/s in bench.pipeline), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def log_path(settings: Settings, config: Config) -> Path:
    """logging.file, or <BOT_DATA_DIR>/log/bot.jsonl."""
    return Path(config.logging.file or Path(settings.bot_data_dir) / "log" / "bot.jsonl")


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
            f"maxTokens={info.max_tokens}" + ("  input=text,image" if info.images else "")
            + ("" if info.listed else "  (not listed: defaults)")
        )  # fmt: skip
    media = config.agents.defaults.media
    print(
        f"media: maxBytes={media.max_bytes}  pictures="
        + ("first input=text,image model" if any(m.images for m in registry.chain()) else "off")
        + f"  voice notes={media.transcription_model or 'off'}"
    )
    for warning in config.warnings():
        print(f"warning: {warning}")
    return EXIT_OK


async def serve_procs(settings: Settings, config: Config, log: Logger, role: str, n: int) -> int:
    """`bot serve --procs N`: the children share one Redis (the embedded one started here when
    REDIS_URL is unset) and, for web and all, one port."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded = None if settings.redis_url else EmbeddedRedis(settings.bot_data_dir)
    try:
        if embedded is not None:
            await embedded.start()
        group = ProcessGroup(
            count=n,
            argv=child_argv(role),
            env=child_env(embedded.url if embedded else None),
            log=log,
            grace_seconds=config.agents.defaults.timeout_seconds + 15,
        )
        log.info("server_started", role=role, procs=n, port=settings.bot_port)
        code = await group.run(stop)
    except BotError as exc:
        log.error("server_failed", error=str(exc))
        return EXIT_FAILED
    finally:
        if embedded is not None:
            await embedded.stop()
    log.info("server_stopped", role=role, procs=n)
    return EXIT_OK if code == 0 else EXIT_FAILED


async def serve(
    settings: Settings,
    config: Config,
    log: Logger,
    role: str,
    hub: EventHub | None = None,
    reuse_port: bool = False,
) -> int:
    """Run the role until SIGTERM or SIGINT; then stop intake, drain turns, close, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    web_role, worker_role = role in ("all", "web"), role in ("all", "worker")
    try:
        async with open_app(settings, config, log, hub) as app:
            if web_role and (problems := app.problems()):
                for problem in problems:
                    log.error("setup_error", error=problem)
                return EXIT_CONFIG
            for warning in app.warnings():
                log.warning("setup_warning", error=warning)
            tasks: list[asyncio.Task[None]] = []
            runner: web.AppRunner | None = None
            try:
                if web_role:
                    if app.telegram is not None:
                        await identify_telegram(app.telegram, log)
                    tasks.append(
                        asyncio.create_task(app.spool_drainer().run(stop), name="spool_drainer")
                    )
                    runner = web.AppRunner(app.web_app(), access_log=None)
                    await runner.setup()
                    await web.TCPSite(
                        runner, settings.bot_host, settings.bot_port, reuse_port=reuse_port or None
                    ).start()
                    if (poller := app.poller()) is not None:
                        tasks.append(asyncio.create_task(poller.run(stop), name="poller"))
                if worker_role:
                    tasks.append(asyncio.create_task(app.worker().run(stop), name="worker"))
                    if app.local is not None:  # what LM Studio has loaded, every minute
                        tasks.append(asyncio.create_task(app.local.run(stop), name="lmstudio"))
                listening = {"url": f"http://{settings.bot_host}:{settings.bot_port}"}
                log.info(
                    "server_started",
                    role=role,
                    redis=app.redis.where,
                    channels=sorted(app.senders),
                    **(listening if runner else {}),
                )
                # What startup built (modules, config, clients) lives as long as the process:
                # frozen, the collector stops rescanning it (a full collection took up to
                # 80 ms under load in bench.pipeline, stalling every request in flight).
                gc.collect()
                gc.freeze()
                died = await supervise(stop, [*tasks, *app.background], log)
                log.info("server_stopping", role=role)
            finally:
                stop.set()
                if runner is not None:
                    await runner.cleanup()
                await asyncio.gather(*tasks, return_exceptions=True)
            if died:
                return EXIT_FAILED
    except BotError as exc:
        log.error("server_failed", error=str(exc))
        return EXIT_FAILED
    except OSError as exc:
        log.error("server_failed", error=f"cannot listen: {exc}")
        return EXIT_FAILED
    log.info("server_stopped", role=role)
    return EXIT_OK


async def supervise(stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]], log: Logger) -> bool:
    """Wait until `stop` is set; True if a background task ended first (it crashed, or
    returned when it should run on): the process then exits non-zero so its supervisor
    (systemd, compose) restarts it."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    # A task that returned because `stop` was just set has not died; one that raised has.
    died = [
        task for task in tasks
        if task in done and (task.cancelled() or task.exception() or not stop.is_set())
    ]  # fmt: skip
    for task in died:
        exc = None if task.cancelled() else task.exception()
        log.error(
            "task_failed",
            task=task.get_name(),
            error=f"{type(exc).__name__}: {exc}" if exc else "it stopped",
            exc_info=exc,
        )
    return bool(died)


async def identify_telegram(telegram: TelegramChannel, log: Logger) -> None:
    """Learn the bot's @username (getMe): group messages are answered only when it is used."""
    try:
        me = await telegram.bot_user()
    except ChannelSendError as exc:
        log.warning(
            "setup_warning",
            channel="telegram",
            error=f"getMe failed ({exc}): group mentions cannot be recognised until a restart",
        )
        return
    log.info("telegram_identified", channel="telegram", username=me.get("username"))


async def run_doctor(settings: Settings, config: Config) -> int:
    """`bot doctor`: exit 0 when healthy, 1 when something must be fixed."""
    checks = await diagnose(settings, config)
    return render(checks, sys.stdout, color=sys.stdout.isatty())


async def tail_logs(settings: Settings, config: Config, args: argparse.Namespace) -> int:
    """`bot logs`: recent events, filtered, optionally followed live (Ctrl-C stops)."""
    try:
        since = time.time() - parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    filters = Filters(
        level=args.level,
        events=frozenset(e.strip() for arg in args.event for e in arg.split(",") if e.strip()),
        channel=args.channel,
        conversation=args.conversation,
        since=since,
    )
    url, cluster = settings.redis_url, settings.redis_cluster
    if url is None:  # read the embedded server only if one is running; never start one
        embedded = EmbeddedRedis(settings.bot_data_dir)
        url, cluster = (embedded.url if await answers(embedded.url) else None), False
    redis = (
        connect(url, cluster=cluster, socket_connect_timeout=2, socket_timeout=5) if url else None
    )
    printer = Printer(sys.stdout, as_json=args.json, color=sys.stdout.isatty())
    try:
        return await show_logs(
            redis=redis, file=log_path(settings, config), filters=filters, count=args.n,
            follow=args.follow, printer=printer, notice=sys.stderr,
        )  # fmt: skip
    except asyncio.CancelledError:
        return EXIT_OK


async def admin(settings: Settings, config: Config, log: Logger, args: argparse.Namespace) -> int:
    """`bot pairing list|approve CODE` and `bot model history`, against the gateway's Redis."""
    async with open_app(settings, config, log) as app:
        if args.command == "model":
            for change in await app.choice.history(args.n):
                when = datetime.fromtimestamp(change.ts).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{when}  {change.scope}: {change.before} -> {change.after}  by {change.who}")
            return EXIT_OK
        if args.pairing_command == "list":
            requests = await app.access.pending()
            for request in requests:
                left = max(0, int(request.expires - time.time()) // 60)
                print(f"{request.code}  {request.sender}  {request.name or ''}  ({left} min left)")
            if not requests:
                print("no pending pairing requests")
            return EXIT_OK
        approved = await app.access.approve(args.code, who="cli")
        if approved is None:
            print(f"bot: no pending request with code {args.code.upper()}", file=sys.stderr)
            return EXIT_FAILED
        print(f"approved {approved.sender}")
        return EXIT_OK


async def dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """`bot dead-letters list|retry ID|drop ID` against the gateway's Redis."""
    async with open_redis(
        settings.redis_url, settings.bot_data_dir, cluster=settings.redis_cluster
    ) as redis:
        letters = RedisDeadLetters(redis.client)
        try:
            if args.dead_command == "list":
                found = await letters.list()
                for letter in found:
                    when = datetime.fromtimestamp(letter.ts).strftime("%Y-%m-%d %H:%M:%S")
                    try:
                        what = f"{len(letter.message_bodies())} message(s)"
                    except DeadLetterError:
                        what = "unreadable messages"
                    print(
                        f"{letter.id}  {when}  {letter.conversation}  {what}  "
                        f"attempts={letter.attempts}  {letter.error}"
                    )
                if not found:
                    print("no dead letters")
                return EXIT_OK
            if args.dead_command == "retry":
                letter = await letters.retry(args.id)
                print(f"retrying {letter.id}: back in {letter.conversation}'s inbox")
                return EXIT_OK
            letter = await letters.drop(args.id)
            print(f"dropped {letter.id} ({letter.conversation})")
            return EXIT_OK
        except DeadLetterError as exc:
            print(f"bot: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except (RedisError, OSError) as exc:
            print(f"bot: Redis did not answer ({redis.where}): {exc}", file=sys.stderr)
            return EXIT_FAILED


async def usage_report(
    settings: Settings, config: Config, log: Logger, args: argparse.Namespace
) -> int:
    """`bot usage`: totals of the last days by sender, model or day; full ids (operators)."""
    try:
        days = max(1, math.ceil(parse_since(args.since) / 86400))
    except ValueError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    async with open_app(settings, config, log) as app:
        rows = await app.usage.report(by=args.by, days=days)
    if args.json:
        for row in rows:
            print(json.dumps({args.by: row.key, **row.totals.to_dict()}))
        return EXIT_OK
    if not rows:
        print(f"no usage recorded in the last {days} day(s)")
        return EXIT_OK
    total = Totals()
    for row in rows:
        total.add(row.totals)
    width = max(len(args.by), 5, *(len(row.key) for row in rows))
    head = ("TURNS", "TOKENS_IN", "TOKENS_OUT", "CACHED", "COST_USD", "LOCAL")
    print(f"{args.by.upper():<{width}}  " + "  ".join(f"{h:>10}" for h in head))
    for key, totals in [*((r.key, r.totals) for r in rows), ("total", total)]:
        cells = (totals.turns, totals.tokens_in, totals.tokens_out, totals.cached_in)
        print(
            f"{key:<{width}}  " + "  ".join(f"{c:>10,}" for c in cells)
            + f"  {totals.cost:>10.4f}  {totals.local_share:>10.0%}"
        )  # fmt: skip
    return EXIT_OK


async def telegram_admin(settings: Settings, config: Config, action: str) -> int:
    """`bot telegram set-webhook|delete-webhook|info` against the Bot API."""
    if settings.telegram_bot_token is None:
        print("bot: TELEGRAM_BOT_TOKEN is not set (BotFather gives it)", file=sys.stderr)
        return EXIT_CONFIG
    log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
    async with aiohttp.ClientSession() as http:
        telegram = TelegramChannel(
            settings=settings, config=config.channels.telegram, http=http, log=log, attempts=2
        )
        try:
            if action == "set-webhook":
                return await set_webhook(settings, telegram)
            if action == "delete-webhook":
                await telegram.call("deleteWebhook", drop_pending_updates=False)
                print("webhook deleted: updates now wait for polling (channels.telegram.mode)")
                return EXIT_OK
            me = await telegram.bot_user()
            hook = await telegram.call("getWebhookInfo")
        except ChannelSendError as exc:
            print(f"bot: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(f"bot: @{me.get('username')} (id {me.get('id')}, {me.get('first_name')})")
    print(
        f"groups: can join {me.get('can_join_groups')}, "
        f"reads all messages {me.get('can_read_all_group_messages')} (privacy mode off)"
    )
    print(
        f"webhook: {hook.get('url') or '(none: polling)'}; "
        f"pending updates {hook.get('pending_update_count', 0)}"
    )
    if hook.get("last_error_message"):
        print(f"last webhook error: {hook['last_error_message']}")
    return EXIT_OK


async def set_webhook(settings: Settings, telegram: TelegramChannel) -> int:
    if not settings.bot_public_url or not settings.telegram_webhook_secret:
        print(
            "bot: set BOT_PUBLIC_URL (the https URL Telegram calls) and TELEGRAM_WEBHOOK_SECRET",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = f"{settings.bot_public_url.rstrip('/')}/webhooks/telegram"
    await telegram.call(
        "setWebhook",
        url=url,
        secret_token=settings.telegram_webhook_secret.get_secret_value(),
        allowed_updates=ALLOWED_UPDATES,
    )
    print(f"webhook set: {url}")
    return EXIT_OK


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

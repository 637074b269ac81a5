"""`bot serve`: the gateway's roles until SIGTERM/SIGINT, or `--procs N` children of one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence

from aiohttp import web

from bot import __version__
from bot.app import freeze_startup_heap, open_app
from bot.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from bot.cli.telegram import publish_command_menu
from bot.config import Config
from bot.console import ProcessBeacon, console_problems
from bot.errors import BotError, ChannelSendError
from bot.logs import EventHub, Logger
from bot.procs import ProcessGroup, child_argv, child_env
from bot.redisdb import EmbeddedRedis, open_redis
from bot.settings import Settings
from channels.telegram import TelegramChannel


async def serve_procs(settings: Settings, config: Config, log: Logger, role: str, n: int) -> int:
    """`bot serve --procs N`: the children share one Redis (the embedded one started here when
    REDIS_URL is unset) and, for web and all, one port."""
    if role in ("all", "web") and (problems := console_problems(settings)):
        for problem in problems:  # every child would stop on it: say it once, start none
            log.error("setup_error", error=problem)
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded = None if settings.redis_url else EmbeddedRedis(settings.bot_data_dir)
    try:
        if embedded is not None:
            await embedded.start()
        # Opening Redis refuses one older than MIN_REDIS: said once here, where each child
        # refused for it would be restarted in a loop.
        async with open_redis(
            settings.redis_url, settings.bot_data_dir, cluster=settings.redis_cluster
        ):
            pass
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
        async with open_app(settings, config, log, hub, tools=worker_role) as app:
            if web_role and (problems := app.problems()):
                for problem in problems:
                    log.error("setup_error", error=problem)
                return EXIT_CONFIG
            for warning in app.warnings():
                log.warning("setup_warning", error=warning)
            tasks: list[asyncio.Task[None]] = []
            runner: web.AppRunner | None = None
            console: web.AppRunner | None = None
            beacon = ProcessBeacon(app.redis.client, role=role, version=__version__, log=log)
            tasks.append(asyncio.create_task(beacon.run(stop), name="beacon"))
            try:
                if web_role:
                    if app.telegram is not None:
                        await identify_telegram(app.telegram, log)
                        await publish_command_menu(app.telegram, config.commands.admins, log)
                    tasks.append(
                        asyncio.create_task(app.spool_drainer().run(stop), name="spool_drainer")
                    )
                    runner = web.AppRunner(app.web_app(), access_log=None)
                    await runner.setup()
                    await web.TCPSite(
                        runner, settings.bot_host, settings.bot_port, reuse_port=reuse_port or None
                    ).start()
                    if settings.bot_console_port:
                        console = await start_console(app.console_app(), settings, reuse_port)
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
                    **(
                        {
                            "console": f"http://{settings.bot_console_host}:{settings.bot_console_port}"
                        }
                        if console
                        else {}
                    ),
                )
                freeze_startup_heap()
                died = await supervise(stop, [*tasks, *app.background], log)
                log.info("server_stopping", role=role)
            finally:
                stop.set()
                if console is not None:
                    await console.cleanup()
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


async def start_console(
    console: web.Application, settings: Settings, reuse_port: bool
) -> web.AppRunner:
    """The console on its own listener (never BOT_PORT). With `--procs N` every child binds
    it with SO_REUSEPORT, like BOT_PORT: any child answers, since sessions live in Redis."""
    runner = web.AppRunner(console, access_log=None, shutdown_timeout=5)
    await runner.setup()
    host, port = settings.bot_console_host, settings.bot_console_port
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            f"the console's BOT_CONSOLE_HOST:BOT_CONSOLE_PORT ({host}:{port}): {exc}; "
            "choose another port, or BOT_CONSOLE_PORT=0 to turn the console off"
        ) from exc
    return runner


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
        task
        for task in tasks
        if task in done and (task.cancelled() or task.exception() or not stop.is_set())
    ]
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

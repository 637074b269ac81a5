"""`bot logs`: the deployment's events, filtered, optionally followed."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bot.cli.common import EXIT_CONFIG, EXIT_OK, log_path
from bot.config import Config
from bot.logreader import Filters, Printer, parse_since, show_logs
from bot.redisdb import EmbeddedRedis, answers, connect
from bot.settings import Settings


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
            redis=redis,
            file=log_path(settings, config),
            filters=filters,
            count=args.n,
            follow=args.follow,
            printer=printer,
            notice=sys.stderr,
        )
    except asyncio.CancelledError:
        return EXIT_OK

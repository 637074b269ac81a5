"""`bot pairing`, `bot model history`, `bot dead-letters` and `bot usage`: operator views
and actions against the gateway's Redis."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime

from redis.exceptions import RedisError

from bot.app import open_app
from bot.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from bot.config import Config
from bot.deadletters import DeadLetterError, RedisDeadLetters
from bot.logreader import parse_since
from bot.logs import Logger
from bot.redisdb import open_redis
from bot.settings import Settings
from bot.usage import Totals


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
            f"{key:<{width}}  "
            + "  ".join(f"{c:>10,}" for c in cells)
            + f"  {totals.cost:>10.4f}  {totals.local_share:>10.0%}"
        )
    return EXIT_OK

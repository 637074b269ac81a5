"""`bot dead-letters list|retry ID|drop ID`: the batches that kept failing, for an operator.

Redis only: no model, channel or config is needed, so it starts fast and works while the
gateway's config is broken."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from redis.exceptions import RedisError

from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.deadletters import DeadLetterError, RedisDeadLetters
from bot.redisdb import open_redis
from bot.settings import Settings


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

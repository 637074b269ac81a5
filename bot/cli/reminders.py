"""`bot reminders list [--json]|cancel ID`: every pending reminder, for an operator.

Redis only, like `bot dead-letters`. A reminder's text is the person's message: it is not
printed (its length is), as message text is not logged unless configured."""

from __future__ import annotations

import argparse
import json
import sys
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.redisdb import open_redis
from bot.reminders import RedisReminders, Reminder
from bot.settings import Settings


async def reminders(settings: Settings, args: argparse.Namespace) -> int:
    """`bot reminders list|cancel ID` against the gateway's Redis."""
    async with open_redis(
        settings.redis_url, settings.bot_data_dir, cluster=settings.redis_cluster
    ) as redis:
        store = RedisReminders(redis.client)
        try:
            if args.reminders_command == "list":
                found = await store.everything()
                for reminder in found:
                    print(json.dumps(_row(reminder)) if args.json else _line(reminder))
                if not found and not args.json:
                    print("no reminders pending")
                return EXIT_OK
            target = await store.find(args.id)
            if target is None or not await store.cancel(target.conversation, target.id):
                print(
                    f"bot: no pending reminder {args.id} (see bot reminders list)", file=sys.stderr
                )
                return EXIT_FAILED
            print(f"cancelled {target.id} ({target.conversation})")
            return EXIT_OK
        except (RedisError, OSError) as exc:
            print(f"bot: Redis did not answer ({redis.where}): {exc}", file=sys.stderr)
            return EXIT_FAILED


def _row(reminder: Reminder) -> dict[str, object]:
    """One reminder as `--json` prints it (no text, its length)."""
    return {
        "id": reminder.id,
        "conversation": reminder.conversation,
        "sender": reminder.sender,
        "due": reminder.due_at.isoformat(),
        "zone": reminder.zone,
        "rule": reminder.rule.describe() if reminder.rule else None,
        "chars": len(reminder.text),
    }


def _line(reminder: Reminder) -> str:
    local = reminder.due_at.astimezone(ZoneInfo(reminder.zone)).strftime("%Y-%m-%d %H:%M")
    rule = f"  {reminder.rule.describe()}" if reminder.rule else ""
    return (
        f"{reminder.id}  {local} {reminder.zone}  {reminder.conversation}{rule}  "
        f"({len(reminder.text)} chars)"
    )

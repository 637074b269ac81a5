"""`bot pairing list|approve CODE` and `bot model history`: operator views and actions
against the gateway's Redis."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from bot.app import open_app
from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.config import Config
from bot.logs import Logger
from bot.settings import Settings


async def admin(settings: Settings, config: Config, log: Logger, args: argparse.Namespace) -> int:
    """`bot pairing list|approve CODE` and `bot model history`, against the gateway's Redis."""
    async with open_app(settings, config, log, tools=False) as app:
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

"""`bot usage`: tokens and cost of the last days by sender, model or UTC day."""

from __future__ import annotations

import argparse
import json
import math
import sys

from bot.app import open_app
from bot.cli.common import EXIT_CONFIG, EXIT_OK
from bot.config import Config
from bot.logreader import parse_since
from bot.logs import Logger
from bot.settings import Settings
from bot.usage import Totals


async def usage_report(
    settings: Settings, config: Config, log: Logger, args: argparse.Namespace
) -> int:
    """`bot usage`: totals of the last days by sender, model or day; full ids (operators)."""
    try:
        days = max(1, math.ceil(parse_since(args.since) / 86400))
    except ValueError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    async with open_app(settings, config, log, tools=False) as app:
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

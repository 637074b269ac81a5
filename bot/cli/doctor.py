"""`bot doctor`: check config, Redis, every model server and the channels."""

from __future__ import annotations

import sys

from bot.config import Config
from bot.doctor import diagnose, render
from bot.settings import Settings


async def run_doctor(settings: Settings, config: Config) -> int:
    """`bot doctor`: exit 0 when healthy, 1 when something must be fixed."""
    checks = await diagnose(settings, config)
    return render(checks, sys.stdout, color=sys.stdout.isatty())

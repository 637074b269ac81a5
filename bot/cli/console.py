"""`bot console`: print the operator console's sign-in URL (the token made once and kept in
Redis, unless BOT_CONSOLE_TOKEN sets it)."""

from __future__ import annotations

import sys

from redis.exceptions import RedisError

from bot.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from bot.console import console_problems, console_token, sign_in_url
from bot.redisdb import open_redis
from bot.settings import Settings


async def console_url(settings: Settings) -> int:
    """Print `http://HOST:PORT/login?token=…` (open it in a browser on this machine)."""
    if not settings.bot_console_port:
        print("bot: the console is off (BOT_CONSOLE_PORT=0)", file=sys.stderr)
        return EXIT_CONFIG
    for problem in console_problems(settings):
        print(f"bot: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    async with open_redis(
        settings.redis_url, settings.bot_data_dir, cluster=settings.redis_cluster
    ) as redis:
        try:
            token = await console_token(redis.client, settings)
        except (RedisError, OSError) as exc:
            print(f"bot: Redis did not answer ({redis.where}): {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(sign_in_url(settings, token))
    return EXIT_OK

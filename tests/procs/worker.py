"""A worker process for crash and scale-out tests: the real App and Worker (firing reminders
too); replies are POSTed as JSON to SINK_URL (the test's stand-in for a chat platform).
`serve` runs one with another sink (tests/procs/reminder_worker.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable

import aiohttp

from bot.app import open_app
from bot.config import load_config
from bot.delivery import ReplySender
from bot.logs import make_logger
from bot.messages import OutboundMessage
from bot.settings import Settings
from bot.worker import Worker


class HttpSink:
    """Delivers replies to the test's in-process sink server."""

    def __init__(self, http: aiohttp.ClientSession, url: str, name: str) -> None:
        self.http, self.url, self.name = http, url, name

    async def send(self, message: OutboundMessage) -> None:
        body = {**message.to_dict(), "worker": self.name}
        async with self.http.post(self.url, json=body) as response:
            response.raise_for_status()


Sink = Callable[[aiohttp.ClientSession, str, str], ReplySender]  # (http, SINK_URL, name)


async def serve(sink: Sink) -> None:
    """Run a worker until SIGTERM or SIGINT, its replies going to `sink` on channel "test"."""
    settings = Settings()
    config = load_config(settings.bot_config, os.environ)
    log = make_logger(stream=sys.stdout, as_json=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with open_app(settings, config, log) as app, aiohttp.ClientSession() as http:
        name = os.environ.get("WORKER_NAME", f"w{os.getpid()}")
        worker = Worker(
            redis=app.redis.client,
            agent=app.agent,
            memory=app.memory,
            senders={"test": sink(http, os.environ["SINK_URL"], name)},
            log=log,
            lease_seconds=config.agents.defaults.lease_seconds,
            max_concurrent=config.agents.defaults.max_concurrent,
            name=name,
            reminders=app.reminders,
        )
        await worker.run(stop)


if __name__ == "__main__":
    asyncio.run(serve(HttpSink))

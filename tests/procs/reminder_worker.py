"""A worker process that fires reminders, for the SIGKILL test: the real App and Worker; a
reminder's text is POSTed to SINK_URL/send, and, like WhatsApp's lookup, SINK_URL/accepted
says whether the sink already took it (so a resumed send is not repeated)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from bot.app import open_app
from bot.config import load_config
from bot.logs import make_logger
from bot.messages import OutboundMessage
from bot.settings import Settings
from bot.worker import Worker


class HttpSink:
    """A chunk sender with an acceptance check, backed by the test's sink server."""

    def __init__(self, http: aiohttp.ClientSession, url: str, name: str) -> None:
        self.http, self.url, self.name = http, url, name

    def chunks(self, message: OutboundMessage) -> list[str]:
        return [message.text]

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        body = {**message.to_dict(), "text": chunk, "worker": self.name}
        async with self.http.post(f"{self.url}/send", json=body) as response:
            response.raise_for_status()

    async def accepted(self, message: OutboundMessage, chunk: str, since: float) -> bool:
        query = {"conversation": message.conversation, "text": chunk}
        async with self.http.get(f"{self.url}/accepted", params=query) as response:
            return bool((await response.json())["accepted"])


async def main() -> None:
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
            senders={"test": HttpSink(http, os.environ["SINK_URL"], name)},
            log=log,
            lease_seconds=config.agents.defaults.lease_seconds,
            name=name,
            reminders=app.reminders,
        )
        await worker.run(stop)


if __name__ == "__main__":
    asyncio.run(main())

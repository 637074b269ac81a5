"""A worker process that fires reminders, for the SIGKILL test: the real App and Worker; a
reminder's text is POSTed to SINK_URL/send, and, like WhatsApp's lookup, SINK_URL/accepted
says whether the sink already took it (so a resumed send is not repeated)."""

from __future__ import annotations

import asyncio

import aiohttp

from bot.messages import OutboundMessage
from tests.procs.worker import serve


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


if __name__ == "__main__":
    asyncio.run(serve(HttpSink))

"""The terminal as a channel: `bot chat` reads lines and prints replies."""

from __future__ import annotations

import getpass
import itertools
import sys
import time
from typing import TextIO

from bot.messages import InboundMessage, OutboundMessage
from channels.base import Ack, RawRequest


class ConsoleChannel:
    """Messages typed by the local user, conversation `console:<user>`. A reply that stands
    in for a failed model turn is shown as why (`bot: …` on stderr), and counted."""

    name = "console"
    ack = Ack(content_type="text/plain", body=b"")

    def __init__(
        self, *, user: str | None = None, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.user = user or getpass.getuser()
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.failures = 0  # replies printed as a failure
        self._ids = itertools.count(1)

    @property
    def conversation(self) -> str:
        return f"{self.name}:{self.user}"

    def message(self, text: str) -> InboundMessage:
        """Wrap a typed line as an InboundMessage."""
        now = time.time()
        return InboundMessage(
            channel=self.name,
            conversation=self.conversation,
            sender=self.conversation,
            text=text,
            platform_id=f"{now:.6f}-{next(self._ids)}",
            ts=now,
            sender_name=self.user,
        )

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        text = request.body.decode("utf-8").strip()
        return [self.message(text)] if text else []

    async def send(self, message: OutboundMessage) -> None:
        if message.failure is not None:
            self.failures += 1
            print(f"bot: {message.failure}", file=self.err, flush=True)
            return
        print(message.text, file=self.out, flush=True)

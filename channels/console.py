"""The terminal as a channel: `bot chat` reads lines and prints replies (as they are written,
when it streams to a terminal)."""

from __future__ import annotations

import getpass
import itertools
import math
import shutil
import sys
import time
from typing import TextIO

from bot.messages import InboundMessage, OutboundMessage
from channels.base import Ack, RawRequest

ERASE_LINE = "\r\x1b[2K"  # to the line's start, and clear it
LINE_UP = "\x1b[1A"


class ConsoleChannel:
    """Messages typed by the local user, conversation `console:<user>`. A reply that stands
    in for a failed model turn is shown as why (`bot: …` on stderr), and counted. With
    `stream`, a turn's answer is printed as it is written (`preview`), and the reply then
    completes what was printed instead of printing it again."""

    name = "console"
    ack = Ack(content_type="text/plain", body=b"")

    def __init__(
        self,
        *,
        user: str | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
        stream: bool = False,
    ) -> None:
        self.user = user or getpass.getuser()
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.stream = stream
        self.failures = 0  # replies printed as a failure
        self.shown = ""  # what the terminal shows of the answer being written
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

    def preview(self, message: InboundMessage) -> TerminalPreview | None:
        """The answer printed as it is written, when this console streams."""
        return TerminalPreview(self) if self.stream else None

    async def send(self, message: OutboundMessage) -> None:
        shown, self.shown = self.shown, ""
        if message.failure is not None:
            self.erase(shown)
            self.failures += 1
            print(f"bot: {message.failure}", file=self.err, flush=True)
            return
        if shown and message.text.startswith(shown):  # streamed already: print the rest only
            print(message.text[len(shown) :], file=self.out, flush=True)
            return
        self.erase(shown)
        print(message.text, file=self.out, flush=True)

    def show(self, text: str) -> None:
        """Make the terminal show `text` as the answer so far: print what it adds to what is
        shown, or (when it does not extend it) erase that and print it whole."""
        if not text.startswith(self.shown):
            self.erase(self.shown)
            self.shown = ""
        self.out.write(text[len(self.shown) :])
        self.out.flush()
        self.shown = text

    def erase(self, shown: str) -> None:
        """Clear the terminal lines that `shown` (printed from a line's start) took up."""
        if not shown:
            return
        columns = max(1, shutil.get_terminal_size().columns)
        rows = sum(max(1, math.ceil(len(line) / columns)) for line in shown.split("\n"))
        self.out.write(ERASE_LINE + (LINE_UP + ERASE_LINE) * (rows - 1))
        self.out.flush()


class TerminalPreview:
    """One turn's answer on the terminal as it is written (bot.llm.preview.TurnPreview)."""

    def __init__(self, console: ConsoleChannel) -> None:
        self.console = console

    async def text(self, so_far: str) -> None:
        self.console.show(so_far)

    async def thinking(self) -> None:
        """Nothing to print while the model reasons."""

    async def reset(self) -> None:
        self.console.erase(self.console.shown)
        self.console.shown = ""

    async def close(self) -> None:
        """The reply completes the line (ConsoleChannel.send), from the outbox."""

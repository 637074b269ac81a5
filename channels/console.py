"""The terminal as a channel: `bot chat` reads lines and prints replies (rendered as Markdown
as they are written, when it streams to a terminal; plain text, once, otherwise)."""

from __future__ import annotations

import asyncio
import getpass
import itertools
import sys
import time
from typing import TextIO

from rich.console import Console, RenderableType
from rich.control import Control
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import ControlType

from bot.messages import InboundMessage, OutboundMessage
from channels.base import Ack, RawRequest

REDRAW_SECONDS = 0.1  # at most ten redraws a second while an answer streams


class ConsoleChannel:
    """Messages typed by the local user, conversation `console:<user>`. A reply that stands
    in for a failed model turn is shown as why (`bot: …` on stderr), and counted. With
    `stream` (stdout is a terminal), a turn's answer is rendered as Markdown as it is written
    (`preview`), and the reply then settles what is shown instead of printing it again;
    without it, the reply's text is printed as it is, once."""

    name = "console"
    ack = Ack(content_type="text/plain", body=b"")

    def __init__(
        self,
        *,
        user: str | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
        stream: bool = False,
        console: Console | None = None,
    ) -> None:
        self.user = user or getpass.getuser()
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.stream = stream
        self.failures = 0  # replies printed as a failure
        terminal = console if console is not None else Console(file=self.out, highlight=False)
        self.answer = LiveAnswer(terminal)  # the streamed answer on the terminal
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
        """The answer rendered as it is written, when this console streams."""
        return TerminalPreview(self.answer) if self.stream else None

    async def send(self, message: OutboundMessage) -> None:
        if message.failure is not None:
            self.answer.erase()
            self.failures += 1
            print(f"bot: {message.failure}", file=self.err, flush=True)
            return
        if not self.stream:  # `bot chat -m`, or not a terminal: the text as it is, for scripts
            print(message.text, file=self.out, flush=True)
            return
        self.answer.finish(message.text)


class LiveAnswer:
    """The answer being written, rendered as Markdown in place on a terminal (a rich `Live`
    redrawn as it grows), then left on the screen once or erased."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text = ""  # the answer the terminal shows, or "" when it shows none
        self._live: Live | None = None
        self._redraw: asyncio.TimerHandle | None = None
        self._drawn_at = -REDRAW_SECONDS

    def show(self, text: str) -> None:
        """Show `text` as the answer so far (in place of what is shown), redrawn at most every
        REDRAW_SECONDS: each redraw renders the whole answer again, so drawing every delta of
        a long answer would cost time that grows with the square of its length."""
        self.text = text
        if self._live is None:
            self._live = Live(
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,  # the logger holds stderr itself: nothing to gain
                redirect_stderr=False,
            )
            self._live.start()
        if self._redraw is not None:  # a redraw is due: it draws this text
            return
        loop = asyncio.get_running_loop()
        wait = self._drawn_at + REDRAW_SECONDS - loop.time()
        if wait > 0:
            self._redraw = loop.call_later(wait, self._draw)
        else:
            self._draw()

    def _draw(self) -> None:
        self._redraw = None
        if self._live is not None:
            self._drawn_at = asyncio.get_running_loop().time()
            self._live.update(Markdown(self.text), refresh=True)

    def settle(self) -> None:
        """Stop redrawing: the answer so far stays on the screen, the cursor below it."""
        if self._redraw is not None:
            self._redraw.cancel()
            self._redraw = None
        if self._live is not None:
            self._live.update(Markdown(self.text))
            self._live.stop()
            self._live = None

    def erase(self) -> None:
        """Clear the lines the answer took up (printed from a line's start)."""
        if self._live is not None:  # blanked as it stops (it may be taller than the screen)
            self.text = ""
            self.settle()
        elif self.text:
            self._clear(Markdown(self.text))
        self.text = ""

    def finish(self, text: str) -> None:
        """The reply: leave `text` on the screen once, rendered (what is shown stays when it
        is that text; otherwise it is replaced)."""
        self.settle()
        if text != self.text:
            self.erase()
            self.console.print(Markdown(text))
        self.text = ""

    def _clear(self, shown: RenderableType) -> None:
        """Move up over the lines that `shown` took up above the cursor, clearing each."""
        height = len(self.console.render_lines(shown, pad=False))
        up = ((ControlType.CURSOR_UP, 1), (ControlType.ERASE_IN_LINE, 2)) * height
        self.console.control(Control(ControlType.CARRIAGE_RETURN, *up))


class TerminalPreview:
    """One turn's answer on the terminal as it is written (bot.llm.preview.TurnPreview)."""

    def __init__(self, answer: LiveAnswer) -> None:
        self.answer = answer

    async def text(self, so_far: str) -> None:
        self.answer.show(so_far)

    async def thinking(self) -> None:
        """Nothing to print while the model reasons."""

    async def reset(self) -> None:
        self.answer.erase()

    async def close(self) -> None:
        """The turn is over: the answer so far stays; the reply settles it (ConsoleChannel.send)."""
        self.answer.settle()

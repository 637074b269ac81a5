"""The answer as it is written: what a turn's preview sink is shown of a model's stream.

A provider tells a `StreamPreview` its raw text as it streams; the sink (`types.Preview`)
sees only the final text so far (`reasoning.visible_prefix`), and only when it grew. A model
that dies after showing text, or whose text turns out to be reasoning after all, resets the
sink, so the next text never stands beside the void one. A reasoning model on a
chat-completions server may open its reasoning inside the prompt's template, so its stream is
reasoning up to a bare `</think>`: its text is held until that tag or a reasoning event shows
where the final text starts. `GuardedPreview` keeps a channel's sink from ever failing or
holding up a turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from bot.llm.reasoning import visible_prefix
from bot.llm.types import Preview
from bot.logs import Logger

PREVIEW_SECONDS = 2.0  # at most this long for one call into a sink (but `text`, see below)
# The final text is worked out again (all of it) only once the raw text grew by this much, or
# while none is shown: a sink shows a few updates a second, so every delta would be waste.
PREVIEW_STEP_CHARS = 32
PREVIEW_LAG_SECONDS = 0.1  # text held back by the step is shown after this at the latest
REASONING_END = "</think>"


class TurnPreview(Preview, Protocol):
    """A channel's preview of one turn's answer (what bot.worker asks of a channel that
    offers one), closed when the turn ends."""

    async def close(self) -> None:
        """The turn is over: stop showing (its reply, if any, is sent from the outbox next)."""
        ...


class StreamPreview:
    """One model attempt's feed into the turn's preview (a `types.StreamFeed`)."""

    def __init__(self, sink: Preview, *, hold: bool = False, step_chars: int = 0) -> None:
        """`hold`: show no text until the stream shows where reasoning ends (a `</think>`, or
        a reasoning event: the server keeps reasoning apart), for a model that may reason in
        its text without an opening tag. `step_chars`: work the final text out again only
        once the raw text grew by this much (PREVIEW_STEP_CHARS; `settle` catches up)."""
        self.sink = sink
        self.hold = hold
        self.step_chars = step_chars
        self.raw = ""  # the raw text so far
        self.shown = ""  # the final text the sink was last told
        self.thinking = False  # the sink was told the model is reasoning
        self.seen = 0  # the raw text's length when the final text was last worked out
        self._timer: asyncio.TimerHandle | None = None  # shows what the step held back
        self._late: set[asyncio.Task[None]] = set()

    async def update(self, raw: str) -> None:
        """The attempt's raw text so far: the sink sees its final text when that grew."""
        self.raw = raw
        if self.hold:
            if REASONING_END not in raw:
                await self._think()
                return
            self.hold = False
        if self.shown and 0 <= len(raw) - self.seen < self.step_chars:
            if self._timer is None:  # a model that pauses here still shows what it wrote
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(PREVIEW_LAG_SECONDS, self._catch_up)
            return
        await self._show(raw)

    def _catch_up(self) -> None:
        """PREVIEW_LAG_SECONDS after a held-back delta: show the text if no later one did."""
        self._timer = None
        if self.seen != len(self.raw) and not self.hold:
            task = asyncio.create_task(self._show(self.raw))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    def _stop_catching_up(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._late:
            task.cancel()

    async def _show(self, raw: str) -> None:
        """Tell the sink the final text of `raw`, when that grew (or turned out void)."""
        self.seen = len(raw)
        visible = visible_prefix(raw)
        if visible == self.shown:
            if raw and not visible:
                await self._think()
            return
        if not visible.startswith(self.shown):  # what was shown was not final text after all
            await self.sink.reset()
            self.thinking = False
        self.shown = visible
        if visible:
            await self.sink.text(visible)
        else:
            await self._think()

    async def settle(self) -> None:
        """The attempt answered: show its final text as far as it was held back for speed."""
        self._stop_catching_up()
        if self.seen != len(self.raw) and not self.hold:
            await self._show(self.raw)

    async def reasoning(self) -> None:
        """The model reasons: the sink hears it once, while it shows no text."""
        self.hold = False  # reasoning comes apart from the text: the text is final
        await self._think()

    async def _think(self) -> None:
        """The sink hears once that the model is working, while it shows no text."""
        if not self.shown and not self.thinking:
            self.thinking = True
            await self.sink.thinking()

    async def void(self) -> None:
        """The attempt failed: whatever it showed is void."""
        self._stop_catching_up()
        if self.shown or self.thinking:
            await self.sink.reset()
        self.shown, self.thinking, self.seen, self.raw = "", False, 0, ""


class GuardedPreview:
    """A channel's sink that never fails a turn: an error is logged (a warning the first time
    in the turn, then debug) and otherwise ignored; each call but `text` has PREVIEW_SECONDS.
    `text` comes with every few deltas and must return at once (`types.Preview`: keep the
    text, show it on its own schedule), so it is spared a timer of its own, which would cost
    more than the call."""

    def __init__(self, sink: TurnPreview, *, log: Logger, channel: str, conversation: str) -> None:
        self.sink = sink
        self.log = log
        self.channel = channel
        self.conversation = conversation
        self.failed = False

    async def text(self, so_far: str) -> None:
        try:
            await self.sink.text(so_far)
        except Exception as exc:  # noqa: BLE001 - a best-effort preview never fails the turn
            self._failed("text", exc)

    async def thinking(self) -> None:
        await self._call("thinking", self.sink.thinking())

    async def reset(self) -> None:
        await self._call("reset", self.sink.reset())

    async def close(self) -> None:
        await self._call("close", self.sink.close())

    async def _call(self, what: str, call: Coroutine[Any, Any, None]) -> None:
        try:
            async with asyncio.timeout(PREVIEW_SECONDS):
                await call
        except Exception as exc:  # noqa: BLE001 - a best-effort preview never fails the turn
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        level = self.log.debug if self.failed else self.log.warning
        self.failed = True
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        level(
            "preview_failed",
            channel=self.channel,
            conversation=self.conversation,
            call=what,
            error=error,
        )

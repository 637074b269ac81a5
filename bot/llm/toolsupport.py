"""Which models refused tools lately: a server that answers a request with tools by a 400 such
as "does not support tools" (a model without a tool template, llama.cpp without `--jinja`) is
asked again at once without them, and is sent none for a while, so the person still gets an
answer and later turns do not pay for the refusal again. `bot doctor` names such models (each
process notes them in Redis, `llm:tools-refused:<model>`, for as long as it remembers)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

REMEMBER_SECONDS = 3600.0
REFUSED_KEY = "llm:tools-refused:"
# A refusal that is about tools: "does not support tools", "tools are not supported",
# "tools param requires --jinja flag", "tool use is not enabled"…
_TOOLS_REFUSED = re.compile(
    r"\btool(?:s|_choice| use| calling| calls)?\b.{0,60}"
    r"(?:not (?:supported|enabled|allowed)|unsupported|requires|--jinja)"
    r"|(?:not support|doesn't support|unsupported)\b.{0,40}\btool",
    re.IGNORECASE | re.DOTALL,
)


def refuses_tools(error: str) -> bool:
    """Whether a server's refusal says the model cannot take tools."""
    return _TOOLS_REFUSED.search(error) is not None


class ToolSupport:
    """Models that refused tools within the last `remember_seconds` (in this process);
    `note` is told each new refusal (bot.app writes it to Redis for `bot doctor`)."""

    def __init__(
        self,
        *,
        remember_seconds: float = REMEMBER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        note: Callable[[str, float], Awaitable[None]] | None = None,
    ) -> None:
        self.remember_seconds = remember_seconds
        self.clock = clock
        self.note = note
        self._until: dict[str, float] = {}  # model ref → when it may be offered tools again

    def usable(self, model: str) -> bool:
        """May `model` be offered tools now?"""
        until = self._until.get(model)
        if until is None:
            return True
        if self.clock() >= until:
            del self._until[model]
            return True
        return False

    async def refused(self, model: str) -> None:
        """`model` refused a request for its tools: send it none for a while."""
        self._until[model] = self.clock() + self.remember_seconds
        if self.note is not None:
            await self.note(model, self.remember_seconds)

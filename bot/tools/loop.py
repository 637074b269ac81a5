"""The agent loop of one turn: model steps that call tools, until a step answers in text.

At most `maxToolSteps` model steps; the last is asked without tools, so every turn ends in an
answer. The calls of one step run at once (each within `tools.timeoutSeconds`, an error or a
timeout being an output the model reads). Each step with its outputs is kept with the batch
(`journal`) before the next model step sees it, so a turn resumed after a crash replays the
results and runs no tool twice. Only the last step's final text is the answer: a step's text
beside its calls, the calls and their outputs never reach the person (the preview goes back
to "thinking" while tools run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.llm.types import Completion, Preview, ToolChoice, ToolSpec, ToolStep
from bot.logs import Logger
from bot.tools.journal import JournalStep
from bot.tools.types import Toolbox

MEMORY_LINE_CHARS = 160  # one tool use as the turn's memory keeps it


class Journal(Protocol):
    """Where a turn's tool steps are kept (bot.tools.journal.RedisToolJournal)."""

    @property
    def steps(self) -> tuple[JournalStep, ...]: ...

    async def record(self, index: int, step: JournalStep) -> None: ...


class MemoryJournal:
    """A journal that keeps the steps only in this process (a turn run without a batch)."""

    def __init__(self) -> None:
        self.steps: tuple[JournalStep, ...] = ()

    async def record(self, index: int, step: JournalStep) -> None:
        self.steps = (*self.steps, step)


# One model step: the tools it may call, the steps so far, whether it must answer in text.
Ask = Callable[[Sequence[ToolSpec], Sequence[ToolStep], ToolChoice], Awaitable[Completion]]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopResult:
    """The answering step's completion, and the turn's tool uses as memory lines."""

    completion: Completion
    used: tuple[str, ...]

    def remembered(self) -> str:
        """The answer as the turn's memory keeps it: which tools it used, briefly, first."""
        if not self.used:
            return self.completion.text
        lines = "\n".join(f"[used {line[:MEMORY_LINE_CHARS]}]" for line in self.used)
        return f"{lines}\n{self.completion.text}"


async def run_loop(
    ask: Ask,
    *,
    tools: Sequence[ToolSpec],
    runner: Toolbox,
    journal: Journal,
    max_steps: int,
    admin: bool,
    conversation: str,
    log: Logger,
    preview: Preview | None = None,
    sender: str = "",
    channel: str = "",
) -> LoopResult:
    """Ask, run the calls, ask again with their outputs, until a step answers in text.
    The calls of one step run at once; each gives an output (a tool's own errors included).
    `sender`, `channel`: whose turn it is, for the tools that act for them."""
    kept = journal.steps
    steps = [kept_step.step for kept_step in kept]
    used = [line for kept_step in kept for line in kept_step.summaries]
    if kept:
        log.info("tool_steps_replayed", conversation=conversation, steps=len(kept))
    for index in range(len(steps), max(max_steps, len(steps) + 1)):
        last = index >= max_steps - 1
        completion = await ask((), steps, "none") if last else await ask(tools, steps, "auto")
        if not completion.tool_calls or last:
            if last and steps:  # every step until the cap called tools
                log.info("tool_steps_capped", conversation=conversation, steps=index + 1)
            return LoopResult(completion=completion, used=tuple(used))
        if preview is not None:  # its text (if any) was not the answer; tools run now
            await preview.reset()
            await preview.thinking()
        results = await asyncio.gather(
            *(
                runner.run(
                    call, admin=admin, conversation=conversation, sender=sender, channel=channel
                )
                for call in completion.tool_calls
            )
        )
        step = ToolStep(calls=completion.tool_calls, outputs=tuple(r.output for r in results))
        summaries = tuple(r.summary for r in results)
        await journal.record(index, JournalStep(step=step, summaries=summaries))
        steps.append(step)
        used += summaries
    raise AssertionError("unreachable: the last step answers in text")

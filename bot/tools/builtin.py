"""The gateway's own tools (the server name `builtin`, e.g. `builtin.remind`): offered like an
MCP server's only when `tools.allow` names them, run in-process, framed and logged (`tool_call`)
the same way; and `CombinedToolbox`, several toolboxes offered as one, in one sorted order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from bot.config import ToolsConfig
from bot.llm.types import ToolCall, ToolSpec
from bot.logs import Logger
from bot.tools.policy import BUILTIN, Catalog, OfferedTool, ToolPolicy
from bot.tools.toolbox import run_call, tool_line
from bot.tools.types import CallOutcome, ListedTool, Toolbox, ToolResult


class BuiltinTool(Protocol):
    """One built-in tool: how it is listed, and one run of it for a sender."""

    @property
    def listed(self) -> ListedTool: ...

    async def call(
        self, arguments: Mapping[str, Any], *, conversation: str, sender: str, channel: str
    ) -> CallOutcome:
        """Run it; a refusal is an outcome with `is_error` and a text saying what is accepted."""
        ...


class BuiltinToolbox:
    """`Toolbox` over the built-in tools that `tools.allow` names."""

    def __init__(
        self,
        tools: Sequence[BuiltinTool],
        config: ToolsConfig,
        log: Logger,
        *,
        include_content: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tools = {tool.listed.name: tool for tool in tools}
        self.config = config
        self.log = log
        self.include_content = include_content
        self.clock = clock
        listed = {BUILTIN: [tool.listed for tool in tools]}
        self.catalog: Catalog = ToolPolicy(config).catalog(listed)

    def __bool__(self) -> bool:
        """Whether any built-in tool is allowed at all (else the app builds no toolbox)."""
        return bool(self.catalog.tools)

    def offered(self, *, admin: bool) -> list[ToolSpec]:
        return [tool.spec() for tool in self.catalog.for_sender(admin=admin)]

    def describe(self, *, admin: bool) -> list[str]:
        return [tool_line(tool) for tool in self.catalog.for_sender(admin=admin)]

    async def run(
        self,
        call: ToolCall,
        *,
        admin: bool,
        conversation: str,
        sender: str = "",
        channel: str = "",
    ) -> ToolResult:
        """Run one call of a model; every failure is an error output the model sees."""

        async def invoke(tool: OfferedTool, arguments: Mapping[str, Any]) -> tuple[str, bool, str]:
            limit = self.config.timeout_seconds
            try:
                async with asyncio.timeout(limit):
                    outcome = await self.tools[tool.tool].call(
                        arguments, conversation=conversation, sender=sender, channel=channel
                    )
            except TimeoutError:
                return f"the tool timed out after {limit:g} s", False, "timeout"
            except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's to see
                return (
                    "the tool failed (an error in the gateway)",
                    False,
                    f"{type(exc).__name__}: {exc}",
                )
            return outcome.text, not outcome.is_error, "tool error" if outcome.is_error else ""

        return await run_call(self, self.catalog, call, invoke, admin, conversation)


class CombinedToolbox:
    """Several toolboxes (the MCP servers', the built-in tools) offered as one: the function
    definitions of all, sorted by name (a stable prompt); a call runs in the one offering it."""

    def __init__(self, parts: Sequence[Toolbox]) -> None:
        self.parts = tuple(parts)

    def offered(self, *, admin: bool) -> list[ToolSpec]:
        specs = [spec for part in self.parts for spec in part.offered(admin=admin)]
        return sorted(specs, key=lambda spec: spec.name)

    def describe(self, *, admin: bool) -> list[str]:
        return sorted(line for part in self.parts for line in part.describe(admin=admin))

    async def run(
        self,
        call: ToolCall,
        *,
        admin: bool,
        conversation: str,
        sender: str = "",
        channel: str = "",
    ) -> ToolResult:
        """Run a call in the toolbox that offers its name (else the first, which says that
        no such tool is offered)."""
        chosen = next(
            (p for p in self.parts if any(s.name == call.name for s in p.offered(admin=admin))),
            self.parts[0],
        )
        return await chosen.run(
            call, admin=admin, conversation=conversation, sender=sender, channel=channel
        )


def combined(parts: Sequence[Toolbox | None]) -> Toolbox | None:
    """One toolbox of those given (None and empty built-in ones left out); None when there is
    none, so a turn without tools costs nothing."""
    present = [p for p in parts if p is not None and not (isinstance(p, BuiltinToolbox) and not p)]
    if not present:
        return None
    return present[0] if len(present) == 1 else CombinedToolbox(present)

"""The tool layer (DESIGN §3 "Tools"): MCP servers' tools, narrowed to what the operator
allowed, run for the agent loop with their output treated as data.

Others use: `Toolbox` (the agent loop's contract) and `ToolResult`; `run_loop` (a turn's
model steps and their calls) and `RedisToolJournal` (its steps kept with the batch); `McpHub`
(the sessions: `start`, `close`, `statuses`) and `McpToolbox` (a Toolbox over it), which the
composition root and `bot tools list` build; `BuiltinToolbox` (the gateway's own tools, such as
`builtin.remind`) and `combined` (one toolbox of several, or None); `tool_warnings` (start-up
and `bot doctor`).
`McpHub` is imported on first use: the MCP SDK costs half a second to import, which a
deployment without tools never pays."""

from typing import TYPE_CHECKING, Any

from bot.config import ToolsConfig
from bot.logs import Logger
from bot.tools.builtin import BuiltinTool, BuiltinToolbox, CombinedToolbox, combined
from bot.tools.journal import JournalStep, RedisToolJournal, steps_in
from bot.tools.loop import Journal, LoopResult, MemoryJournal, run_loop
from bot.tools.policy import BUILTIN, BUILTIN_TOOLS, ToolPolicy, function_names, tool_warnings
from bot.tools.toolbox import McpToolbox
from bot.tools.types import (
    CallOutcome,
    ListedTool,
    ServerStatus,
    Toolbox,
    ToolCallFailed,
    ToolResult,
    ToolServers,
    ToolUnavailable,
)
from bot.tools.untrusted import frame, strip_control_tokens

if TYPE_CHECKING:
    from bot.tools.mcp import McpHub


START_WAIT = 45.0  # seconds for every server's first start (a cold `npx` takes a while)


def __getattr__(name: str) -> Any:
    """`McpHub` on first use (the MCP SDK is imported then)."""
    if name == "McpHub":
        from bot.tools.mcp import McpHub

        return McpHub
    raise AttributeError(f"module 'bot.tools' has no attribute {name!r}")


async def probe_servers(
    tools: ToolsConfig, log: Logger, *, wait: float = START_WAIT
) -> list[ServerStatus]:
    """Start every configured MCP server, list its tools, stop them all: what each server
    offers, or why it could not start (`bot tools list`, `bot doctor`)."""
    from bot.tools.mcp import McpHub

    hub = McpHub(tools.mcp, log, ready_wait=0, start_timeout=min(30.0, wait))
    try:
        await hub.start()
        await hub.wait_tried(wait)
        return hub.statuses()
    finally:
        await hub.close()


__all__ = [
    "BUILTIN",
    "BUILTIN_TOOLS",
    "START_WAIT",
    "BuiltinTool",
    "BuiltinToolbox",
    "CallOutcome",
    "CombinedToolbox",
    "Journal",
    "JournalStep",
    "ListedTool",
    "LoopResult",
    "McpHub",
    "McpToolbox",
    "MemoryJournal",
    "RedisToolJournal",
    "ServerStatus",
    "ToolCallFailed",
    "ToolPolicy",
    "ToolResult",
    "ToolServers",
    "ToolUnavailable",
    "Toolbox",
    "combined",
    "frame",
    "function_names",
    "probe_servers",
    "run_loop",
    "steps_in",
    "strip_control_tokens",
    "tool_warnings",
]

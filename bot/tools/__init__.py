"""The tool layer (DESIGN §3 "Tools"): MCP servers' tools, narrowed to what the operator
allowed, run for the agent loop with their output treated as data.

Others use: `Toolbox` (the agent loop's contract) and `ToolResult`; `run_loop` (a turn's
model steps and their calls) and `RedisToolJournal` (its steps kept with the batch); `McpHub`
(the sessions: `start`, `close`, `statuses`) and `McpToolbox` (a Toolbox over it), which the
composition root and `bot tools list` build; `tool_warnings` (start-up and `bot doctor`).
`McpHub` is imported on first use: the MCP SDK costs half a second to import, which a
deployment without tools never pays."""

from typing import TYPE_CHECKING, Any

from bot.tools.journal import JournalStep, RedisToolJournal, steps_in
from bot.tools.loop import Journal, LoopResult, MemoryJournal, run_loop
from bot.tools.policy import ToolPolicy, function_names, tool_warnings
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


def __getattr__(name: str) -> Any:
    """`McpHub` on first use (the MCP SDK is imported then)."""
    if name == "McpHub":
        from bot.tools.mcp import McpHub

        return McpHub
    raise AttributeError(f"module 'bot.tools' has no attribute {name!r}")


__all__ = [
    "CallOutcome",
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
    "frame",
    "function_names",
    "run_loop",
    "steps_in",
    "strip_control_tokens",
    "tool_warnings",
]

"""The tool layer (DESIGN §3 "Tools"): MCP servers' tools, narrowed to what the operator
allowed, run for the agent loop with their output treated as data.

Others use: `Toolbox` (the agent loop's contract) and `ToolResult`; `McpHub` (the sessions:
`start`, `close`, `statuses`) and `McpToolbox` (a Toolbox over it), which the composition
root and `bot tools list` build; `tool_warnings` (start-up and `bot doctor`)."""

from bot.tools.mcp import McpHub
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

__all__ = [
    "CallOutcome",
    "ListedTool",
    "McpHub",
    "McpToolbox",
    "ServerStatus",
    "ToolCallFailed",
    "ToolPolicy",
    "ToolResult",
    "ToolServers",
    "ToolUnavailable",
    "Toolbox",
    "frame",
    "function_names",
    "strip_control_tokens",
    "tool_warnings",
]

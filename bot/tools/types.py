"""The tool layer's values and contracts: what a server lists, what a call gives back, what
the agent loop codes against (`Toolbox`) and what the toolbox needs of the servers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bot.errors import BotError
from bot.llm.types import ToolCall, ToolSpec

Transport = Literal["stdio", "http"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListedTool:
    """One tool as its MCP server lists it: its own name, description and `inputSchema`."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOutcome:
    """What an MCP `tools/call` gave back: its text (non-text parts named, e.g. `[image]`) and
    whether the server marked it an error."""

    text: str
    is_error: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatus:
    """One configured server as the hub sees it now: up or not, the tools it last listed
    (kept while it is down), and why it last failed (with the tail of a stdio server's
    stderr)."""

    name: str
    transport: Transport
    up: bool
    tools: tuple[ListedTool, ...]
    error: str = ""
    stderr: str = ""
    attempts: int = 0  # starts tried, the running one included


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """One tool call's result as the agent loop uses it.

    `output`: what the model is shown (framed, stripped, capped), for errors too; `server`
    and `tool` are "" when the name was not one offered to this sender; `summary`: a brief
    line for the turn's memory, e.g. `orders.lookup_order(A17) → shipped, arrives Tuesday`."""

    output: str
    ok: bool
    server: str
    tool: str
    summary: str
    ms: float


class ToolUnavailable(BotError):
    """A tool's server is not running now (not started yet, failed, or lost): try later."""


class ToolCallFailed(BotError):
    """A tool's server answered a call with a protocol error instead of a result."""


class ToolServers(Protocol):
    """The running MCP servers, as the toolbox needs them (McpHub is the real one)."""

    @property
    def generation(self) -> int:
        """A number that changes whenever any server's tool list or state changes."""
        ...

    def statuses(self) -> list[ServerStatus]: ...

    async def call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the SDK's request timeout: it cancels on the server too
    ) -> CallOutcome:
        """Run one tool; raises ToolUnavailable, ToolCallFailed or TimeoutError."""
        ...


class Toolbox(Protocol):
    """The tools a turn may use: what the agent loop offers a model, and how it runs a call."""

    def offered(self, *, admin: bool) -> list[ToolSpec]:
        """The allowed tools known now, in a stable order; [] when none."""
        ...

    def describe(self, *, admin: bool) -> list[str]:
        """One line per tool this sender may use, for the `/tools` chat command."""
        ...

    async def run(
        self,
        call: ToolCall,
        *,
        admin: bool,
        conversation: str,
        sender: str = "",
        channel: str = "",
    ) -> ToolResult:
        """Run one call of a model; never raises: every failure is an error output. `sender`
        and `channel`: whose turn it is (a built-in tool such as `builtin.remind` acts for
        them; "" when unknown)."""
        ...

"""The toolbox the agent loop uses: the allowed tools of the running MCP servers as function
definitions, and one model call run against them — within the time limit, as data, logged
(`tool_call`), never raising."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from bot.config import ToolsConfig
from bot.llm.types import ToolCall, ToolSpec
from bot.logs import Logger
from bot.tools.policy import BUILTIN, Catalog, OfferedTool, ToolPolicy
from bot.tools.types import ToolCallFailed, ToolResult, ToolServers, ToolUnavailable
from bot.tools.untrusted import frame, strip_control_tokens

SUMMARY_PART = 60  # characters of the arguments, and of the output, in a summary
ERROR_CHARS = 200  # of an error, in the `tool_call` event


def shorten(text: str, limit: int = SUMMARY_PART) -> str:
    """`text` on one line, cut at `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def summarize(label: str, arguments: Mapping[str, Any], output: str, *, ok: bool) -> str:
    """A brief line for the turn's memory: `orders.lookup_order(A17) → shipped, arrives
    Tuesday`; the arguments' values and the output cut to about 60 characters each."""
    values = ", ".join(
        v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in arguments.values()
    )
    result = shorten(strip_control_tokens(output)) or "(no output)"
    return f"{label}({shorten(strip_control_tokens(values))}) → {'' if ok else 'error: '}{result}"


class McpToolbox:
    """`Toolbox` over an McpHub (or any `ToolServers`) and the `tools` config."""

    def __init__(
        self,
        servers: ToolServers,
        config: ToolsConfig,
        log: Logger,
        *,
        include_content: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.servers = servers
        self.config = config
        self.policy = ToolPolicy(config)
        self.log = log
        self.include_content = include_content  # logging.includeContent: arguments, output
        self.clock = clock
        self._catalog = Catalog()
        self._seen = -1  # the servers' generation the catalog was built from

    def catalog(self) -> Catalog:
        """The allowed tools the servers list now; rebuilt only when a list changed."""
        if not self.config.mcp:
            return self._catalog  # no servers: nothing to look at, ever
        generation = self.servers.generation
        if generation != self._seen:
            listed = {s.name: s.tools for s in self.servers.statuses() if s.name != BUILTIN}
            self._catalog, self._seen = self.policy.catalog(listed), generation
        return self._catalog

    def offered(self, *, admin: bool) -> list[ToolSpec]:
        """The function definitions offered to a model in this sender's turn, sorted."""
        return [tool.spec() for tool in self.catalog().for_sender(admin=admin)]

    def describe(self, *, admin: bool) -> list[str]:
        """`orders.lookup_order — Look up an order` per tool this sender may use; a tool whose
        server is down now ends in `(unavailable)`."""
        up = {s.name for s in self.servers.statuses() if s.up}
        return [
            tool_line(tool) + ("" if tool.server in up else " (unavailable)")
            for tool in self.catalog().for_sender(admin=admin)
        ]

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
        return await run_call(self, self.catalog(), call, self._call, admin, conversation)

    async def _call(self, tool: OfferedTool, arguments: Mapping[str, Any]) -> tuple[str, bool, str]:
        """(output text, ok, a short error for the log) of one run on the tool's server."""
        limit = self.config.timeout_seconds
        try:
            outcome = await self.servers.call(tool.server, tool.tool, arguments, timeout=limit)
        except TimeoutError:
            return f"the tool timed out after {limit:g} s", False, "timeout"
        except ToolUnavailable as exc:
            return f"the tool is unavailable right now: {exc}", False, f"unavailable: {exc}"
        except ToolCallFailed as exc:
            return f"the tool failed: {exc}", False, str(exc)
        except Exception as exc:  # noqa: BLE001 - a tool's failure of any kind is the model's to see
            return (
                "the tool failed (an error in the gateway)",
                False,
                f"{type(exc).__name__}: {exc}",
            )
        if outcome.is_error:
            return outcome.text or "the tool reported an error", False, "tool error"
        return outcome.text, True, ""


class Finisher(Protocol):
    """What `finish` reads of a toolbox: its config, log and clock."""

    config: ToolsConfig
    log: Logger
    include_content: bool
    clock: Callable[[], float]


def tool_line(tool: OfferedTool) -> str:
    """`orders.lookup_order — Look up an order`: a tool as /tools lists it."""
    about = shorten(tool.description.splitlines()[0] if tool.description else "", 80)
    return f"{tool.label} — {about}" if about else tool.label


Invoke = Callable[[OfferedTool, Mapping[str, Any]], Awaitable[tuple[str, bool, str]]]


async def run_call(
    box: Finisher,
    catalog: Catalog,
    call: ToolCall,
    invoke: Invoke,
    admin: bool,
    conversation: str,
) -> ToolResult:
    """One model call in any toolbox: a name not offered to this sender, or arguments that
    are not a JSON object, are error outputs and run nothing; else `invoke` runs it and says
    (output text, ok, a short error for the log). Then `finish`."""
    began = box.clock()
    tool = catalog.find(call.name, admin=admin)
    arguments: dict[str, Any] | str = {}
    if tool is None:
        text = f"there is no tool named {call.name!r} here; call only the tools offered"
        text, ok, error = text, False, "not offered"
    elif isinstance(arguments := parse_arguments(call.arguments), str):
        text, ok, error = arguments, False, "bad arguments"
    else:
        text, ok, error = await invoke(tool, arguments)
    given = arguments if isinstance(arguments, dict) else {}
    return finish(
        box, call, tool, given, text, ok=ok, error=error, began=began, conversation=conversation
    )


def finish(
    box: Finisher,
    call: ToolCall,
    tool: OfferedTool | None,
    arguments: Mapping[str, Any],
    text: str,
    *,
    ok: bool,
    error: str,
    began: float,
    conversation: str,
) -> ToolResult:
    """One call's result as the model sees it (framed, capped), logged `tool_call`: the same
    for an MCP tool and a built-in one."""
    ms = round((box.clock() - began) * 1000, 1)
    label = tool.label if tool is not None else strip_control_tokens(call.name)
    output = frame(label, text, max_chars=box.config.max_output_chars, error=not ok)
    fields: dict[str, Any] = {
        "conversation": conversation,
        "server": tool.server if tool is not None else "",
        "tool": tool.tool if tool is not None else call.name,
        "ms": ms,
        "ok": ok,
        "size": len(output),
    }
    if error:
        fields["error"] = shorten(error, ERROR_CHARS)
    if box.include_content:
        fields["arguments"] = call.arguments
        fields["output"] = text
    (box.log.info if ok else box.log.warning)("tool_call", **fields)
    return ToolResult(
        output=output,
        ok=ok,
        server=tool.server if tool is not None else "",
        tool=tool.tool if tool is not None else "",
        summary=summarize(label, arguments, text, ok=ok),
        ms=ms,
    )


def parse_arguments(text: str) -> dict[str, Any] | str:
    """A call's arguments as an object, or the error output that says why they are not one.
    An empty string is `{}` (local models often send nothing for a tool without arguments)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the arguments were not valid JSON: {exc}; call it again with a JSON object"
    if not isinstance(value, dict):
        return (
            f"the arguments were not valid JSON: a {type(value).__name__}, not an object; call "
            "it again with a JSON object"
        )
    return value

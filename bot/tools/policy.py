"""Which tools a model is offered (DESIGN §3 "Tools"): nothing unless `tools.allow` names it,
`tools.adminOnly` ones only in admins' turns; the function names a model sees
(`server__tool`, within `^[a-zA-Z0-9_-]{1,64}$`) and the way back; the warnings an operator
should read at start and in `bot doctor`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.config import ToolsConfig
from bot.llm.types import ToolSpec
from bot.tools.types import ListedTool
from bot.tools.untrusted import strip_control_tokens

MAX_FUNCTION_NAME = 64
NOT_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
HASH_CHARS = 8
EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
BUILTIN = "builtin"  # the server name of the gateway's own tools (bot.tools.builtin)
BUILTIN_TOOLS = ("remind",)  # the built-in tools there are (`builtin.remind`)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pattern:
    """One entry of `tools.allow` or `tools.adminOnly`: `server.tool`, or `server.*`."""

    server: str
    tool: str | None  # None: every tool of the server

    @classmethod
    def parse(cls, text: str) -> Pattern | None:
        """The pattern `text` spells, or None if it is neither form."""
        server, dot, tool = text.strip().partition(".")
        if not dot or not server or not tool or "*" in server:
            return None
        if tool == "*":
            return cls(server=server, tool=None)
        return None if "*" in tool else cls(server=server, tool=tool)

    def matches(self, server: str, tool: str) -> bool:
        return server == self.server and (self.tool is None or tool == self.tool)


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferedTool:
    """An allowed tool under the function name a model calls it by."""

    function: str
    server: str
    tool: str
    description: str
    parameters: Mapping[str, Any]
    admin_only: bool

    @property
    def label(self) -> str:
        """How people and logs name it: `orders.lookup_order`."""
        return f"{self.server}.{self.tool}"

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.function, description=self.description, parameters=self.parameters
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    """Every allowed tool the servers list now, sorted by function name (a stable prompt)."""

    tools: tuple[OfferedTool, ...] = ()

    def for_sender(self, *, admin: bool) -> tuple[OfferedTool, ...]:
        return tuple(t for t in self.tools if admin or not t.admin_only)

    def find(self, function: str, *, admin: bool) -> OfferedTool | None:
        """The tool a model called by `function`, if it is one offered to this sender."""
        for tool in self.tools:
            if tool.function == function and (admin or not tool.admin_only):
                return tool
        return None


def function_names(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The function name of each (server, tool): `server__tool` with every character outside
    `[a-zA-Z0-9_-]` made `_`. A name that is too long, or that two tools would share, is cut
    and ends in `_` and 8 hex digits of a hash of `server.tool`: the same tool gets the same
    name whatever else is listed, and the way back is a lookup."""
    plain = {pair: NOT_NAME_CHARS.sub("_", f"{pair[0]}__{pair[1]}") for pair in set(pairs)}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    names: dict[tuple[str, str], str] = {}
    for pair in sorted(plain):
        name = plain[pair]
        if len(name) > MAX_FUNCTION_NAME or counts[name] > 1:
            digest = hashlib.sha256(f"{pair[0]}.{pair[1]}".encode()).hexdigest()[:HASH_CHARS]
            name = f"{name[: MAX_FUNCTION_NAME - HASH_CHARS - 1]}_{digest}"
        names[pair] = name
    return names


def tool_parameters(schema: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A tool's `inputSchema` as function parameters; none or empty → an object without
    properties (every API accepts that, not every one accepts `{}`)."""
    if not schema:
        return EMPTY_SCHEMA
    parameters = dict(schema)
    parameters.setdefault("type", "object")
    if parameters["type"] == "object":
        parameters.setdefault("properties", {})
    return parameters


class ToolPolicy:
    """`tools.allow` and `tools.adminOnly`, applied to what the servers list."""

    def __init__(self, config: ToolsConfig) -> None:
        self.allow = [p for p in map(Pattern.parse, config.allow) if p is not None]
        self.admin = [p for p in map(Pattern.parse, config.admin_only) if p is not None]

    def allowed(self, server: str, tool: str) -> bool:
        return any(p.matches(server, tool) for p in self.allow)

    def admin_only(self, server: str, tool: str) -> bool:
        return any(p.matches(server, tool) for p in self.admin)

    def catalog(self, listed: Mapping[str, Sequence[ListedTool]]) -> Catalog:
        """The allowed tools among those each server lists, under their function names."""
        chosen = {
            (server, tool.name): tool
            for server, tools in listed.items()
            for tool in tools
            if self.allowed(server, tool.name)
        }
        names = function_names(chosen)
        offered = [
            OfferedTool(
                function=names[pair],
                server=pair[0],
                tool=pair[1],
                description=strip_control_tokens(tool.description),
                parameters=tool_parameters(tool.input_schema),
                admin_only=self.admin_only(*pair),
            )
            for pair, tool in chosen.items()
        ]
        return Catalog(tools=tuple(sorted(offered, key=lambda t: t.function)))


def tool_warnings(
    config: ToolsConfig, listed: Mapping[str, Sequence[ListedTool]] | None = None
) -> list[str]:
    """What in `tools` will not work as its author expects (never a reason to stop).

    `listed`: the tools each server that started lists; with it, an allowed tool that its
    (running) server does not offer is named too."""
    found: list[str] = []
    servers = sorted(config.mcp)
    configured = ", ".join(servers) or "none"
    allow = [Pattern.parse(text) for text in config.allow]
    for key, entries in (("allow", config.allow), ("adminOnly", config.admin_only)):
        for index, text in enumerate(entries):
            where = f"tools.{key}[{index}] ({text!r})"
            pattern = Pattern.parse(text)
            if pattern is None:
                found.append(f"{where}: write server.tool or server.*; this entry matches nothing")
            elif pattern.server == BUILTIN:
                if pattern.tool is not None and pattern.tool not in BUILTIN_TOOLS:
                    found.append(
                        f"{where}: there is no built-in tool {pattern.tool!r} (there are: "
                        f"{', '.join(BUILTIN_TOOLS)}); this entry matches nothing"
                    )
            elif pattern.server not in config.mcp:
                found.append(
                    f"{where}: no server {pattern.server!r} in tools.mcp (configured: "
                    f"{configured}); this entry matches nothing"
                )
            elif key == "adminOnly" and not any(
                (a.server == pattern.server and None in (a.tool, pattern.tool)) or a == pattern
                for a in allow
                if a is not None
            ):
                found.append(
                    f"{where}: not in tools.allow, so it is never offered, not even to admins; "
                    "add it to tools.allow too"
                )
    if BUILTIN in config.mcp:
        found.append(
            f"tools.mcp.{BUILTIN}: that name is kept for the built-in tools, so this server's "
            "tools are never offered; rename the server"
        )
    if not config.allow and config.mcp:
        found.append(
            "tools.allow is empty: no tool of tools.mcp is offered to any model; name the "
            "tools a model may use (server.tool or server.*)"
        )
    for index, pattern in enumerate(allow):
        if pattern is None or listed is None or pattern.server not in listed:
            continue
        names = sorted(tool.name for tool in listed[pattern.server])
        if pattern.tool is not None and pattern.tool not in names:
            found.append(
                f"tools.allow[{index}] ({config.allow[index]!r}): server {pattern.server!r} "
                f"offers no tool {pattern.tool!r} (it offers: {', '.join(names) or 'none'})"
            )
        elif pattern.tool is None and not names:
            found.append(
                f"tools.allow[{index}] ({config.allow[index]!r}): server {pattern.server!r} "
                "offers no tools"
            )
    return found

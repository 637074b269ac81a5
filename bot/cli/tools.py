"""`bot tools list`: the built-in tools (allowed or not); start each MCP server of `tools.mcp`,
show its tools (allowed or not) and why a server could not start, then stop them all."""

from __future__ import annotations

from bot.cli.common import EXIT_FAILED, EXIT_OK
from bot.config import Config
from bot.logs import Logger
from bot.tools import BUILTIN, BUILTIN_TOOLS, START_WAIT, ToolPolicy, probe_servers, tool_warnings


async def tools_list(config: Config, log: Logger) -> int:
    """Print each server and its tools; 1 if a server could not start, else 0."""
    tools = config.tools
    policy = ToolPolicy(tools)
    if not tools.mcp:
        print("no MCP servers configured (tools.mcp is empty)")
        _print_builtins(policy)
        for warning in tool_warnings(tools):
            print(f"warning: {warning}")
        return EXIT_OK
    statuses = await probe_servers(tools, log)
    failed = False
    for status in statuses:
        where = tools.mcp[status.name].url or " ".join(
            [tools.mcp[status.name].command or "", *tools.mcp[status.name].args]
        )
        if status.up:
            print(f"{status.name} ({status.transport}: {where}): {len(status.tools)} tool(s)")
        else:
            failed = True
            why = status.error or f"did not start within {START_WAIT:g} s"
            print(f"{status.name} ({status.transport}: {where}): could not start: {why}")
            for line in status.stderr.splitlines():
                print(f"    stderr | {line}")
        for tool in sorted(status.tools, key=lambda t: t.name):
            mark = _mark(policy, status.name, tool.name)
            about = tool.description.strip().splitlines()[0] if tool.description.strip() else ""
            print(f"  {status.name}.{tool.name:<28} {mark:<21} {about[:70]}")
    _print_builtins(policy)
    listed = {s.name: s.tools for s in statuses if s.up}
    for warning in tool_warnings(tools, listed):
        print(f"warning: {warning}")
    return EXIT_FAILED if failed else EXIT_OK


def _mark(policy: ToolPolicy, server: str, tool: str) -> str:
    """`allowed`, `allowed, admins only` or `not allowed`."""
    if not policy.allowed(server, tool):
        return "not allowed"
    return "allowed, admins only" if policy.admin_only(server, tool) else "allowed"


def _print_builtins(policy: ToolPolicy) -> None:
    """The gateway's own tools (`builtin.remind`), marked like a server's."""
    print(f"{BUILTIN} (in the gateway): {len(BUILTIN_TOOLS)} tool(s)")
    for name in BUILTIN_TOOLS:
        print(f"  {BUILTIN}.{name:<28} {_mark(policy, BUILTIN, name):<21} built in")

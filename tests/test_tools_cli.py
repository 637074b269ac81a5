"""`bot tools list`: each MCP server's tools, allowed or not, and why a server could not start."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fakes.mcp_server import stdio_block
from tests.helpers import bot_env, run_bot

pytestmark = pytest.mark.serial  # runs `bot` and MCP server processes

BROKEN = {
    "command": sys.executable,
    "args": ["-c", "import sys; sys.stderr.write('orders: ORDERS_DB is not set\\n'); sys.exit(3)"],
}


def write_config(tmp_path: Path, servers: dict[str, object]) -> dict[str, str]:
    tools = {
        "mcp": servers,
        "allow": ["orders.lookup_order", "orders.refund", "orders.lookup_ordr"],
        "adminOnly": ["orders.refund"],
    }
    path = tmp_path / "bot.json5"
    path.write_text(json.dumps({"tools": tools}))
    return bot_env(tmp_path, BOT_CONFIG=str(path))


async def test_tools_list_shows_each_tool_and_whether_it_is_allowed(tmp_path: Path) -> None:
    """A server that starts: its tools with their marks, the warnings, and exit 0."""
    env = write_config(tmp_path, {"orders": stdio_block()})
    result = await run_bot("tools", "list", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("orders (stdio: ")
    assert lines[0].endswith("tool(s)")

    def line_of(tool: str) -> str:
        return next(line for line in lines if line.strip().startswith(f"orders.{tool} "))

    assert " allowed " in line_of("lookup_order")
    assert "Look up an order by its id" in line_of("lookup_order")
    assert "allowed, admins only" in line_of("refund")
    assert "not allowed" in line_of("hang")
    assert any("offers no tool 'lookup_ordr'" in line for line in lines)


async def test_tools_list_names_a_server_that_could_not_start(tmp_path: Path) -> None:
    """A server that exits at once: its error and stderr tail are shown, and the exit is 1."""
    env = write_config(tmp_path, {"orders": stdio_block(), "billing": BROKEN})
    result = await run_bot("tools", "list", env=env, cwd=tmp_path)
    assert result.code == 1
    assert "billing (stdio: " in result.out
    assert "could not start: the connection closed before the server answered" in result.out
    assert "    stderr | orders: ORDERS_DB is not set" in result.out
    assert "orders.lookup_order" in result.out  # the good server is listed all the same

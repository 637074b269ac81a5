"""McpHub against real MCP servers (the SDK-built fake, over stdio and streamable HTTP):
sessions, calls, failures with their stderr, retries, list changes and shutdown."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.config import parse_config
from bot.tools import McpHub, ToolUnavailable
from tests.conftest import CapturedEvents
from tests.fakes.mcp_server import ROOT, SHIPPED, calls_in, http_server, stdio_block
from tests.helpers import eventually

FAILS_AT_ONCE = {
    "command": sys.executable,
    "args": ["-c", "import sys; sys.stderr.write('orders: ORDERS_DB is not set\\n'); sys.exit(3)"],
}


def servers(blocks: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    """`tools.mcp` as a user writes it, through the real loader (${ENV} substituted)."""
    text = json.dumps({"tools": {"mcp": blocks}})
    return parse_config(text, source="bot.json5", env=env or {}).tools.mcp


@asynccontextmanager
async def running(blocks: dict[str, Any], log: Any, **options: Any) -> AsyncIterator[McpHub]:
    hub = McpHub(servers(blocks), log, **options)
    try:
        await hub.start()
        yield hub
    finally:
        await hub.close()


@pytest.fixture(params=["stdio", "http"])
def orders(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The fake orders server's config block, over stdio or streamable HTTP."""
    calls = tmp_path / "calls"
    if request.param == "stdio":
        yield stdio_block(calls)
    else:
        with http_server(calls) as url:
            yield {"url": url}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_hub_lists_tools_and_calls_one(
    orders: dict[str, Any], tmp_path: Path, events: CapturedEvents
) -> None:
    """A started server is up with its tools listed, and a call returns the tool's text once."""
    async with running({"orders": orders}, events.log) as hub:
        [status] = hub.statuses()
        assert status.up
        assert status.error == ""
        assert {"lookup_order", "refund", "hang"} <= {t.name for t in status.tools}
        outcome = await hub.call("orders", "lookup_order", {"order_id": "A17"}, timeout=10)
    assert (outcome.text, outcome.is_error) == (SHIPPED, False)
    assert calls_in(tmp_path / "calls") == ["lookup_order A17"]
    [started] = events.events("tool_server_started")
    assert started["server"] == "orders"
    assert started["tools"] >= 10


async def test_an_error_result_and_non_text_parts(
    orders: dict[str, Any], events: CapturedEvents
) -> None:
    """A tool that raises gives an error outcome; an image part is named, not dropped."""
    async with running({"orders": orders}, events.log) as hub:
        failed = await hub.call("orders", "fail", {}, timeout=10)
        picture = await hub.call("orders", "picture", {}, timeout=10)
    assert failed.is_error
    assert (picture.text, picture.is_error) == ("the parcel\n[image image/png]", False)


async def test_a_call_that_hangs_times_out(orders: dict[str, Any], events: CapturedEvents) -> None:
    """A tool that never answers raises TimeoutError after the call's limit, and the session
    stays usable."""
    async with running({"orders": orders}, events.log) as hub:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await hub.call("orders", "hang", {}, timeout=0.5)
        assert time.monotonic() - began < 5
        outcome = await hub.call("orders", "lookup_order", {"order_id": "A17"}, timeout=10)
    assert outcome.text == SHIPPED


async def test_list_changed_refreshes_the_list(
    orders: dict[str, Any], events: CapturedEvents
) -> None:
    """`notifications/tools/list_changed` makes the hub read the server's list again."""
    async with running({"orders": orders}, events.log) as hub:
        before = hub.generation
        await hub.call("orders", "add_tool", {"name": "track_parcel"}, timeout=10)
        await eventually(lambda: "track_parcel" in {t.name for t in hub.statuses()[0].tools})
        assert hub.generation > before
        outcome = await hub.call("orders", "track_parcel", {}, timeout=10)
    assert outcome.text == "track_parcel ran"
    assert events.events("tool_list_changed")[0]["server"] == "orders"


async def test_a_server_that_fails_to_start_is_logged_with_its_stderr_and_retried(
    events: CapturedEvents,
) -> None:
    """A command that exits at once is logged with the tail of its stderr, retried with a
    doubling delay, and its tools answer unavailable meanwhile."""
    async with running({"orders": FAILS_AT_ONCE}, events.log, backoff=0.05) as hub:
        await eventually(lambda: len(events.events("tool_server_failed")) >= 3)
        with pytest.raises(ToolUnavailable, match="not running"):
            await hub.call("orders", "lookup_order", {"order_id": "A17"}, timeout=10)
        [status] = hub.statuses()
    first, second, third = events.events("tool_server_failed")[:3]
    assert first["server"] == "orders"
    assert first["transport"] == "stdio"
    assert "closed before the server answered" in first["error"]
    assert first["stderr"] == "orders: ORDERS_DB is not set"
    assert [first["retry_in"], second["retry_in"], third["retry_in"]] == [0.05, 0.1, 0.2]
    assert (status.up, status.stderr) == (False, "orders: ORDERS_DB is not set")
    assert status.attempts >= 3


async def test_a_command_that_does_not_exist_is_named(events: CapturedEvents) -> None:
    """A command that cannot be run is named in the failure, so a person can fix the path."""
    async with running({"orders": {"command": "no-such-mcp-server"}}, events.log) as hub:
        [status] = hub.statuses()
    assert "cannot run 'no-such-mcp-server'" in status.error
    assert events.events("tool_server_failed")[0]["error"] == status.error


async def test_an_unreachable_http_server_is_logged_and_retried(events: CapturedEvents) -> None:
    """A URL nobody answers is a failure that names the connection error, retried."""
    url = f"http://127.0.0.1:{free_port()}/mcp"
    async with running({"search": {"url": url}}, events.log, backoff=0.05) as hub:
        await eventually(lambda: len(events.events("tool_server_failed")) >= 2)
        assert not hub.statuses()[0].up
    failure = events.events("tool_server_failed")[0]
    assert failure["transport"] == "http"
    assert "ConnectError" in failure["error"]


async def test_start_does_not_wait_long_for_a_slow_server(events: CapturedEvents) -> None:
    """A server that never finishes starting delays start-up by `ready_wait` at most."""
    slow = {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]}
    hub = McpHub(servers({"slow": slow}), events.log, ready_wait=0.3)
    began = time.monotonic()
    await hub.start()
    assert time.monotonic() - began < 3
    assert not hub.statuses()[0].up
    await hub.close()


async def test_a_server_that_dies_keeps_its_tools_and_comes_back(
    tmp_path: Path, events: CapturedEvents
) -> None:
    """A server process that exits is restarted; meanwhile its last tool list is kept (the
    tools stay offered and answer unavailable)."""
    async with running({"orders": stdio_block()}, events.log, backoff=1.0) as hub:
        with pytest.raises(ToolUnavailable, match="went away"):
            await hub.call("orders", "crash", {}, timeout=10)
        await eventually(lambda: not hub.statuses()[0].up)
        assert "lookup_order" in {t.name for t in hub.statuses()[0].tools}
        with pytest.raises(ToolUnavailable):
            await hub.call("orders", "lookup_order", {"order_id": "A17"}, timeout=10)
        await eventually(lambda: hub.statuses()[0].up)
        outcome = await hub.call("orders", "lookup_order", {"order_id": "A17"}, timeout=10)
    assert outcome.text == SHIPPED
    assert len(events.events("tool_server_started")) == 2


async def test_close_ends_the_child_process(events: CapturedEvents) -> None:
    """After close, the stdio server's process is gone."""
    hub = McpHub(servers({"orders": stdio_block()}), events.log)
    await hub.start()
    pid = int((await hub.call("orders", "pid", {}, timeout=10)).text)
    os.kill(pid, 0)  # alive
    await hub.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not hub.statuses()[0].up


async def test_stdio_env_and_http_headers_reach_the_server(events: CapturedEvents) -> None:
    """A stdio server gets its configured env; an HTTP server gets the configured headers,
    ${ENV} substituted by the loader."""
    with http_server() as url:
        blocks = {
            "local": stdio_block(FAKE_MCP_GREETING="${GREETING}"),
            "remote": {"url": url, "headers": {"Authorization": "Bearer ${TOKEN}"}},
        }
        env = {"GREETING": "hello from env", "TOKEN": "s3cret-token"}
        hub = McpHub(servers(blocks, env), events.log)
        try:
            await hub.start()
            greeting = await hub.call("local", "greeting", {}, timeout=10)
            auth = await hub.call("remote", "authorization", {}, timeout=10)
        finally:
            await hub.close()
    assert greeting.text == "hello from env"
    assert auth.text == "Bearer s3cret-token"


async def test_the_readmes_example_server_works_as_written(events: CapturedEvents) -> None:
    """docs/examples/orders_mcp.py, the README's worked example, starts over stdio, lists its
    two tools and answers a lookup."""
    example = {"command": sys.executable, "args": ["docs/examples/orders_mcp.py"], "cwd": str(ROOT)}
    async with running({"orders": example}, events.log) as hub:
        await hub.wait_tried(30)
        [status] = hub.statuses()
        assert status.up, status.error
        assert {t.name for t in status.tools} == {"lookup_order", "refund"}
        outcome = await hub.call("orders", "lookup_order", {"order_id": "a17"}, timeout=10)
    assert outcome.text == "shipped, arrives Tuesday"

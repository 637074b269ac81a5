"""MCP sessions through the official `mcp` SDK (its only home): one long-lived session per
configured server, each owned by a task of its own that enters the transport and the
session, keeps the tool list current (`notifications/tools/list_changed`), pings it, and
starts it again with backoff when it fails; `call` runs one tool on it from any task."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TextIO, TypeVar

import httpx2
import mcp.types as mcp_types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bot.config import McpServerConfig
from bot.logs import Logger
from bot.tools.types import (
    CallOutcome,
    ListedTool,
    ServerStatus,
    ToolCallFailed,
    ToolUnavailable,
    Transport,
)

T = TypeVar("T")
STDERR_TAIL_CHARS = 2000
STDERR_TAIL_LINES = 20
STDERR_EOF_WAIT = 1.0  # seconds to wait for a stopped server's last stderr bytes
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)  # the SDK's own defaults: SSE reads are long


class ServerLost(Exception):
    """A running server's connection ended (its process exited, its endpoint went away)."""


class Stopping(Exception):
    """The hub is closing: a server's task leaves its session by the ordinary way out."""


class StderrTail(asyncio.Protocol):
    """The last bytes a stdio server wrote to stderr: read from a pipe, kept in memory."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > 4 * STDERR_TAIL_CHARS:
            del self.data[: -2 * STDERR_TAIL_CHARS]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def text(self) -> str:
        lines = self.data.decode("utf-8", "replace").rstrip().splitlines()
        return "\n".join(lines[-STDERR_TAIL_LINES:])[-STDERR_TAIL_CHARS:]


@asynccontextmanager
async def stderr_pipe() -> AsyncIterator[tuple[TextIO | None, StderrTail | None]]:
    """A pipe for a child's stderr (the SDK needs a real file) and the tail read from it. The
    caller closes the write end once the child holds it, so the tail sees the child's end."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w")
    tail = StderrTail()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: tail, os.fdopen(read_fd, "rb"))
    try:
        yield writer, tail
    finally:
        writer.close()
        transport.close()


@asynccontextmanager
async def no_pipe() -> AsyncIterator[tuple[TextIO | None, StderrTail | None]]:
    """An HTTP server's stand-in for `stderr_pipe`: no child, no stderr."""
    yield None, None


def describe_error(exc: BaseException) -> str:
    """One line a person can act on, from an error that may be a group of them."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [describe_error(e) for e in exc.exceptions if not _cancelled(e)]
        return "; ".join(dict.fromkeys(leaves)) or "cancelled"
    if isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED:
        return "the connection closed before the server answered (did it exit?)"
    if isinstance(exc, MCPError) and exc.code == mcp_types.REQUEST_TIMEOUT:
        return "the server did not answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"cannot run {exc.filename!r}: no such file or command"
    text = str(exc).strip() or "no details"
    return f"{type(exc).__name__}: {text}"


def _cancelled(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)


def outcome_of(result: mcp_types.CallToolResult) -> CallOutcome:
    """A call's text: text parts joined, other parts named (`[image image/png]`); structured
    content as JSON when there is no text."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} {block.mime_type}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri}]")
    if not parts and result.structured_content is not None:
        import json

        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return CallOutcome(text="\n".join(parts), is_error=bool(result.is_error))


class ServerSlot:
    """One configured server's running state; owned by its task, read by everyone."""

    def __init__(self, name: str, config: McpServerConfig) -> None:
        self.name = name
        self.config = config
        self.transport: Transport = "stdio" if config.command is not None else "http"
        self.session: ClientSession | None = None
        self.tools: tuple[ListedTool, ...] = ()
        self.error = ""
        self.stderr = ""
        self.attempts = 0
        self.tried = asyncio.Event()  # the first start finished, up or failed
        self.wake = asyncio.Event()  # stop, refresh or a lost connection: look again
        self.refresh = False
        self.lost = False
        self.task: asyncio.Task[None] | None = None

    def status(self) -> ServerStatus:
        return ServerStatus(
            name=self.name,
            transport=self.transport,
            up=self.session is not None,
            tools=self.tools,
            error=self.error,
            stderr=self.stderr,
            attempts=self.attempts,
        )


class McpHub:
    """One session per configured MCP server for the life of the process.

    `start` launches a task per server and waits at most `ready_wait` seconds for their first
    starts; a server that fails (or dies later) is logged (`tool_server_failed`, with a stdio
    server's stderr tail) and started again after `backoff` seconds, doubling to
    `max_backoff`. A server's last tool list is kept while it is down, so its tools stay
    offered and answer "unavailable". `close` ends every session and child process."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig],
        log: Logger,
        *,
        ready_wait: float = 5.0,
        start_timeout: float = 30.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        ping_every: float = 30.0,
    ) -> None:
        self.log = log
        self.slots = {name: ServerSlot(name, config) for name, config in sorted(servers.items())}
        self.ready_wait = ready_wait
        self.start_timeout = start_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.ping_every = ping_every
        self.stopping = False
        self.stopped = asyncio.Event()
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def statuses(self) -> list[ServerStatus]:
        return [slot.status() for slot in self.slots.values()]

    async def start(self) -> None:
        """Start every server; return once each has started or failed once, or after
        `ready_wait` seconds (a slow server goes on starting in the background)."""
        for slot in self.slots.values():
            if slot.task is None:
                slot.task = asyncio.create_task(self._keep(slot), name=f"mcp:{slot.name}")
        await self.wait_tried(self.ready_wait)

    async def wait_tried(self, within: float) -> None:
        """Wait until every server's first start has finished, at most `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                for slot in self.slots.values():
                    await slot.tried.wait()

    async def close(self, grace: float = 15.0) -> None:
        """End every session: close each server's transport (a stdio child gets its stdin
        closed, then SIGTERM, then SIGKILL) and wait for the tasks; cancel any left after
        `grace` seconds."""
        self.stopping = True
        self.stopped.set()
        tasks = [slot.task for slot in self.slots.values() if slot.task is not None]
        for slot in self.slots.values():
            slot.wake.set()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the SDK's request timeout: it cancels on the server too
    ) -> CallOutcome:
        """Run `tool` on `server` within `timeout` seconds.

        Raises ToolUnavailable (not running, or lost during the call), ToolCallFailed (a
        protocol error) or TimeoutError."""
        slot = self.slots.get(server)
        session = slot.session if slot is not None else None
        if slot is None or session is None:
            why = slot.error if slot is not None and slot.error else "not started yet"
            raise ToolUnavailable(f"the tool server {server!r} is not running ({why})")
        try:
            # The SDK's own request timeout sends the server a cancellation; ours is a backstop.
            async with asyncio.timeout(timeout + 5):
                result = await session.call_tool(
                    tool, dict(arguments), read_timeout_seconds=timeout
                )
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise TimeoutError(f"no answer within {timeout:g} s") from exc
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self._lost(slot)
                raise ToolUnavailable(f"the tool server {server!r} went away") from exc
            raise ToolCallFailed(f"{exc.message} (MCP error {exc.code})") from exc
        if not isinstance(result, mcp_types.CallToolResult):
            raise ToolCallFailed(f"the server answered with a {type(result).__name__}")
        return outcome_of(result)

    def _lost(self, slot: ServerSlot) -> None:
        """A call found the connection gone: the server is down from now (its task starts
        it again)."""
        if slot.session is not None:
            slot.session = None
            self._generation += 1
        slot.lost = True
        slot.wake.set()

    async def _keep(self, slot: ServerSlot) -> None:
        """Run one server for the life of the hub: start, serve, and start again on failure."""
        delay = self.backoff
        while not self.stopping:
            slot.attempts += 1
            began = time.monotonic()
            # The stderr pipe outlives the transport: its last bytes are read after the child
            # has been stopped.
            async with stderr_pipe() if slot.transport == "stdio" else no_pipe() as (errlog, tail):
                try:
                    async with AsyncExitStack() as stack:
                        await self._serve(slot, stack, errlog)
                    return  # stopping
                except Exception as exc:  # noqa: BLE001 - a server's failure is logged, retried
                    if self.stopping:
                        return
                    slot.error = describe_error(exc)
                    slot.stderr = await _final_tail(tail)
                finally:
                    if slot.session is not None:
                        slot.session = None
                        self._generation += 1
                    slot.tried.set()
            if time.monotonic() - began > self.max_backoff:
                delay = self.backoff  # it ran a good while: a fresh failure, not a crash loop
            self.log.warning(
                "tool_server_failed",
                server=slot.name,
                transport=slot.transport,
                error=slot.error,
                stderr=slot.stderr,
                attempt=slot.attempts,
                retry_in=delay,
            )
            slot.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    while not self.stopping:
                        await slot.wake.wait()
                        slot.wake.clear()
            delay = min(delay * 2, self.max_backoff)

    async def _serve(self, slot: ServerSlot, stack: AsyncExitStack, errlog: TextIO | None) -> None:
        """Enter the transport and the session in this task (the SDK requires it), list the
        tools, then wait for a stop, a changed list or a lost connection."""
        began = time.monotonic()
        slot.lost = slot.refresh = False
        config = slot.config
        if config.command is not None:
            assert errlog is not None
            params = StdioServerParameters(
                command=config.command, args=config.args, env=config.env or None, cwd=config.cwd
            )
            try:
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            finally:
                errlog.close()  # the child holds its own copy: EOF comes when it exits
        else:
            assert config.url is not None
            client = httpx2.AsyncClient(headers=config.headers, timeout=HTTP_TIMEOUT)
            await stack.enter_async_context(client)
            read, write = await stack.enter_async_context(
                streamable_http_client(config.url, http_client=client)
            )

        async def on_message(message: IncomingMessage) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                slot.refresh = True
                slot.wake.set()
            elif isinstance(message, Exception):
                self.log.debug(
                    "tool_server_message", server=slot.name, error=describe_error(message)
                )

        session = await stack.enter_async_context(
            ClientSession(
                read, write, read_timeout_seconds=self.start_timeout, message_handler=on_message
            )
        )
        await self._unless_stopping(session.initialize())
        slot.tools = await self._unless_stopping(list_tools(session))
        slot.session, slot.error, slot.stderr = session, "", ""
        self._generation += 1
        slot.tried.set()
        self.log.info(
            "tool_server_started",
            server=slot.name,
            transport=slot.transport,
            tools=len(slot.tools),
            ms=round((time.monotonic() - began) * 1000, 1),
        )
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping_every):
                    await slot.wake.wait()
            woken = slot.wake.is_set()
            slot.wake.clear()
            if self.stopping:
                break
            if slot.lost:
                raise ServerLost("the connection to the server was lost")
            if slot.refresh:
                slot.refresh = False
                slot.tools = await self._unless_stopping(list_tools(session))
                self._generation += 1
                self.log.info("tool_list_changed", server=slot.name, tools=len(slot.tools))
            elif not woken:
                await self._unless_stopping(session.send_ping())

    async def _unless_stopping(self, request: Coroutine[Any, Any, T]) -> T:
        """Await one request to a server, unless the hub closes first: then raise Stopping,
        so the server's task leaves its transport and session the ordinary way (cancelling
        that task could stop the SDK's shutdown of a child process halfway)."""
        job = asyncio.ensure_future(request)
        stop = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            raise Stopping("the hub is closing")
        return job.result()


async def list_tools(session: ClientSession) -> tuple[ListedTool, ...]:
    """Every tool the server lists, all pages."""
    tools: list[ListedTool] = []
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(
            ListedTool(name=t.name, description=t.description or "", input_schema=t.input_schema)
            for t in page.tools
        )
        cursor = page.next_cursor
        if not cursor:
            return tuple(tools)


async def _final_tail(tail: StderrTail | None) -> str:
    """A stopped stdio server's stderr tail, once its last bytes are read (briefly waited)."""
    if tail is None:
        return ""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STDERR_EOF_WAIT):
            await tail.closed.wait()
    return tail.text()

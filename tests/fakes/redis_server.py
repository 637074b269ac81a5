"""An in-process server that speaks RESP2 as a Redis of a given version does, enough for a
client to connect and ask what it is: PING and INFO (with `redis_version`), and Redis 5's
"unknown command" error for everything else, HELLO included (a Redis older than 6 cannot
answer HELLO; redis-py then falls back to RESP2, as it does against one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class OldRedis:
    """`async with OldRedis("6.0.16") as url:` a redis:// URL for the server while it runs."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.commands: list[str] = []  # the name of every command received, upper-cased
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            async for command in _commands(reader):
                name = command[0].upper()
                self.commands.append(name)
                writer.write(self._answer(name))
                await writer.drain()
        writer.close()

    def _answer(self, name: str) -> bytes:
        if name == "PING":
            return b"+PONG\r\n"
        if name == "INFO":
            body = f"# Server\r\nredis_version:{self.version}\r\nredis_mode:standalone\r\n"
            data = body.encode()
            return b"$%d\r\n%s\r\n" % (len(data), data)
        return f"-ERR unknown command '{name}'\r\n".encode()


async def _commands(reader: asyncio.StreamReader) -> AsyncIterator[list[str]]:
    """Each command a client sends: a RESP array of bulk strings."""
    while True:
        header = await reader.readuntil(b"\r\n")
        if not header.startswith(b"*"):
            raise ConnectionError(f"not a RESP array: {header!r}")
        parts = []
        for _ in range(int(header[1:])):
            size = int((await reader.readuntil(b"\r\n"))[1:])
            parts.append((await reader.readexactly(size + 2))[:-2].decode())
        yield parts

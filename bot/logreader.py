"""`bot logs`: the deployment's events from the Redis stream (or this machine's log file),
filtered, as readable coloured columns or as JSON lines, once or following live."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rich.console import Console
from rich.text import Text

from bot.logs import EVENT_STREAM, entry_events, mask_phone_numbers

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
STYLES = {"debug": "dim", "info": "green", "warning": "yellow", "error": "bold red"}
COLUMNS = ("ts", "level", "event", "channel", "conversation")
PAGE = 500
MAX_SCAN = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """Which events to show."""

    level: str | None = None
    events: frozenset[str] = field(default_factory=frozenset)
    channel: str | None = None
    conversation: str | None = None
    since: float | None = None  # epoch seconds

    def match(self, event: dict[str, Any]) -> bool:
        if self.level and LEVELS.get(str(event.get("level")), 0) < LEVELS[self.level]:
            return False
        if self.events and event.get("event") not in self.events:
            return False
        if self.channel and event.get("channel") != self.channel:
            return False
        wanted = mask_phone_numbers(self.conversation) if self.conversation else None
        return wanted is None or event.get("conversation") == wanted


def parse_since(text: str) -> float:
    """`10m`, `2h`, `30s`, `1d` → seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not found:
        raise ValueError(f"--since takes a duration like 30s, 10m, 2h or 1d, not {text!r}")
    return float(found[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]


class Printer:
    """Writes events as JSON lines or readable columns."""

    def __init__(self, out: TextIO, *, as_json: bool, color: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.console = Console(
            file=out, highlight=False, soft_wrap=True, no_color=not color, force_terminal=color
        )

    def show(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event, ensure_ascii=False), file=self.out, flush=True)
            return
        self.console.print(readable(event))


def readable(event: Mapping[str, Any]) -> Text:
    """One event as one readable line: time, level, event, channel, conversation, the rest."""
    level = str(event.get("level", ""))
    text = Text()
    text.append(str(event.get("ts", ""))[11:23].ljust(13), style="dim")
    text.append(level.upper()[:5].ljust(6), style=STYLES.get(level, ""))
    text.append(str(event.get("event", "")).ljust(18), style="bold")
    text.append(f"{event.get('channel') or '-':<9}", style="cyan")
    text.append(f"{event.get('conversation') or '-':<22}", style="magenta")
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in COLUMNS)
    text.append(rest)
    return text


class ReadableRenderer:
    """A structlog renderer that writes each event the way `bot logs` shows it (for a
    terminal: `bot chat`), coloured when `color`."""

    def __init__(self, *, color: bool) -> None:
        self.buffer = io.StringIO()
        self.console = Console(
            file=self.buffer, highlight=False, soft_wrap=True, no_color=not color,
            force_terminal=color,
        )  # fmt: skip

    def __call__(self, _: object, __: str, event: MutableMapping[str, Any]) -> str:
        self.console.print(readable(event))
        line = self.buffer.getvalue().rstrip("\n")
        self.buffer.seek(0)
        self.buffer.truncate()
        return line


async def recent_from_redis(
    redis: aioredis.Redis, filters: Filters, count: int
) -> tuple[list[dict[str, Any]], str]:
    """The last `count` matching events, oldest first, and the stream id to follow from.

    Pages back by whole entries (an entry holds several events), so no event at a page's edge
    is skipped or read twice. `since` bounds the scan by entry id, an entry's flush time, which
    comes after its events' own times; each event is then kept or not by its own `ts`.
    """
    found: list[dict[str, Any]] = []  # newest first
    last_id, upper, scanned = "$", "+", 0
    floor = f"{int(filters.since * 1000)}-0" if filters.since else "-"
    while len(found) < count and scanned < MAX_SCAN:
        rows = cast(
            "list[tuple[str, dict[str, str]]]",
            await redis.xrevrange(EVENT_STREAM, max=upper, min=floor, count=PAGE),
        )
        if not rows:
            break
        if last_id == "$":
            last_id = rows[0][0]
        for _, fields in rows:
            events = entry_events(fields)
            scanned += len(events)
            found += [e for e in reversed(events) if _in_time(e, filters) and filters.match(e)]
        upper = f"({rows[-1][0]}"
    if last_id == "$":  # follow from the newest entry now, not from whenever XREAD starts
        newest = cast("list[tuple[str, Any]]", await redis.xrevrange(EVENT_STREAM, count=1))
        last_id = newest[0][0] if newest else "0-0"
    return list(reversed(found[:count])), last_id


async def follow_redis(
    redis: aioredis.Redis, filters: Filters, after: str
) -> AsyncIterator[dict[str, Any]]:
    """Matching events as they arrive, from after the stream id `after`."""
    while True:
        answer = cast(
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
            await redis.xread({EVENT_STREAM: after}, block=1000, count=PAGE),
        )
        for _, rows in answer or []:
            for entry_id, fields in rows:
                after = entry_id
                for event in entry_events(fields):
                    if filters.match(event):
                        yield event


def _parse_lines(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


def recent_from_file(path: Path, filters: Filters, count: int) -> list[dict[str, Any]]:
    """The last `count` matching events of this machine's log file (and its rotations)."""
    files = [*sorted(path.parent.glob(path.name + ".*"), reverse=True), path]
    found: list[dict[str, Any]] = []
    for file in files:
        if file.exists():
            with file.open(encoding="utf-8") as handle:
                found += [
                    e for e in _parse_lines(handle) if _in_time(e, filters) and filters.match(e)
                ]
    return found[-count:]


def _read_new(path: Path, position: int) -> tuple[list[str], int]:
    """Lines appended since `position` (from the start again after a rotation)."""
    if not path.exists():
        return [], position
    size = path.stat().st_size
    if size < position:
        position = 0
    with path.open(encoding="utf-8") as handle:
        handle.seek(position)
        chunk = handle.read()
        return chunk.splitlines(), handle.tell()


async def follow_file(path: Path, filters: Filters) -> AsyncIterator[dict[str, Any]]:
    """Matching events appended to the log file from now on (polling; survives rotation)."""
    _, position = await asyncio.to_thread(_read_new, path, 0)
    while True:
        await asyncio.sleep(0.5)
        lines, position = await asyncio.to_thread(_read_new, path, position)
        for event in _parse_lines(lines):
            if filters.match(event):
                yield event


def event_time(event: Mapping[str, Any]) -> float | None:
    """An event's own time, its `ts`, in epoch seconds; None where it has none that parses."""
    try:
        return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError, TypeError):
        return None


def _in_time(event: dict[str, Any], filters: Filters) -> bool:
    if filters.since is None:
        return True
    at = event_time(event)
    return at is None or at >= filters.since


async def show_logs(
    *,
    redis: aioredis.Redis | None,
    file: Path,
    filters: Filters,
    count: int,
    follow: bool,
    printer: Printer,
    notice: TextIO,
) -> int:
    """`bot logs`: from Redis (the whole deployment) or, if it is unreachable or None, the
    local file. Closes `redis`."""
    client = redis
    try:
        if client is not None:
            try:
                events, last_id = await recent_from_redis(client, filters, count)
            except (RedisError, OSError) as exc:
                print(
                    f"Redis is unreachable ({type(exc).__name__}): showing {file} "
                    "(this machine only)",
                    file=notice,
                )
            else:
                for event in events:
                    printer.show(event)
                if follow:
                    async for event in follow_redis(client, filters, last_id):
                        printer.show(event)
                return 0
        else:
            print(f"no Redis to read: showing {file} (this machine only)", file=notice)
        for event in recent_from_file(file, filters, count):
            printer.show(event)
        if follow:
            async for event in follow_file(file, filters):
                printer.show(event)
        return 0
    finally:
        if client is not None:
            await client.aclose()

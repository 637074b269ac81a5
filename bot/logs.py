"""Structured events (DESIGN §5): one event per thing that happens, redacted in every sink.

`make_logger` builds the logger the composition root hands to every component. Events are
JSON lines when the stream is not a terminal and readable columns when it is; the same
redacted JSON goes to every sink on the EventHub: a rotating file, a capped Redis stream
(so `bot logs` sees the whole deployment), and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

Logger = FilteringBoundLogger

FIRST_KEYS = ("ts", "level", "event", "channel", "conversation", "msg_id")
EVENT_STREAM = "logs:events"
Sink = Callable[[MutableMapping[str, Any], str], None]  # (event, its JSON line)
CONTENT_KEYS = ("text", "reply")
PHONE = re.compile(r"\+(\d{1,4})(\d{3,})(\d{4})\b")


def mask_phone_numbers(value: str) -> str:
    """Hide the middle digits of every E.164 number: +15551234567 → +1555•••4567."""
    return PHONE.sub(lambda m: f"+{m.group(1)}•••{m.group(3)}", value)


class Redactor:
    """A processor that masks phone numbers and replaces every secret value with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def clean(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "***")
        # Most values hold no "+", so no number to mask: skip the regex (a third of an event).
        return mask_phone_numbers(value) if "+" in value else value

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.clean(value)
            elif isinstance(value, list | tuple):
                event[key] = [self.clean(v) if isinstance(v, str) else v for v in value]
        return event


def _drop_content(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in CONTENT_KEYS:
        event.pop(key, None)
    return event


def _order(_: WrappedLogger, __: str, event: EventDict) -> MutableMapping[str, Any]:
    ordered = {key: event.pop(key) for key in FIRST_KEYS if key in event}
    ordered.update(event)
    return ordered


class EventHub:
    """The sinks every event reaches after redaction; added as the process starts."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: Sink) -> None:
        with contextlib.suppress(ValueError):
            self.sinks.remove(sink)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        if self.sinks:
            self.publish(event, json.dumps(event, ensure_ascii=False, default=str))
        return event

    def publish(self, event: MutableMapping[str, Any], line: str) -> None:
        for sink in self.sinks:
            sink(event, line)


class JsonRenderer:
    """The last processor in JSON mode: one json.dumps serves stdout and every hub sink."""

    def __init__(self, hub: EventHub | None) -> None:
        self.hub = hub

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> str:
        line = json.dumps(event, ensure_ascii=False, default=str)
        if self.hub is not None and self.hub.sinks:
            self.hub.publish(event, line)
        return line


class FileSink:
    """JSON lines in a file that rotates past `max_bytes`, keeping `backups` old ones (`.1` the
    newest), like logging's RotatingFileHandler. Lines are written straight to the file: a
    LogRecord, a handler lock and two stat calls per line cost more than the write itself.
    Processes may share the file (web and workers on one machine): appends are atomic, and a
    process that finds the file rotated by another reopens it instead of rotating again."""

    def __init__(self, path: Path, *, max_bytes: int = 10_000_000, backups: int = 5) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.file = path.open("ab")

    def __call__(self, _: MutableMapping[str, Any], line: str) -> None:
        data = line.encode("utf-8", "replace") + b"\n"
        size = os.fstat(self.file.fileno()).st_size  # other writers' lines count too
        if size > 0 and size + len(data) > self.max_bytes:
            if self._still_ours():
                self._rotate()
            else:  # another process rotated it: write to the new file
                self.file.close()
                self.file = self.path.open("ab")
        self.file.write(data)
        self.file.flush()

    def _still_ours(self) -> bool:
        """Is the path still the file this sink has open?"""
        try:
            return self.path.stat().st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _rotate(self) -> None:
        self.file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.file = self.path.open("ab")

    def close(self) -> None:
        self.file.close()


ENTRY_EVENTS = 64  # events in one stream entry at most (see RedisStreamSink)


def entry_events(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    """The events one entry of EVENT_STREAM holds, oldest first: the lines of its field `e`.

    Every reader unpacks entries here, so the format lives in one place. An entry written
    before entries held several events holds one line, read the same way. Split on "\n" only,
    not `splitlines()`: U+2028 and friends are left raw by json.dumps(ensure_ascii=False) and
    belong to the event. A line that is not a JSON object is skipped, so it hides no neighbour.
    """
    events = []
    for line in fields.get("e", "").split("\n"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


class RedisStreamSink:
    """Events on a capped Redis stream, written in batches by a background task.

    A flush writes one entry per ENTRY_EVENTS events at most, the field `e` holding their JSON
    lines joined by "\n", so a chat turn's events cost one XADD rather than one each (#28);
    readers unpack entries with `entry_events`. ENTRY_EVENTS covers about ten turns' worth of
    events (about 6 a turn: a busy gateway's 0.2 s flush is one entry per ten turns) while an
    entry stays under about 20 kilobytes.

    Retention: `max_len` counts events (`logging.streamMaxLen`), so it bounds Redis memory as
    it did with one event an entry: the stream is capped (MAXLEN ~) at `max_len` divided by the
    events an entry has held lately (a moving average of this sink's writes), about `max_len`
    events whether entries are full (a busy gateway) or hold one event (a quiet one).
    """

    def __init__(
        self, redis: aioredis.Redis, *, max_len: int, buffer: int = 10_000, every: float = 0.2
    ) -> None:
        self.redis = redis
        self.max_len = max_len
        self.per_entry = 1.0  # events an entry held lately (moving average): the entry cap
        self.every = every
        self.pending: deque[str] = deque(maxlen=buffer)  # oldest dropped if Redis lags
        self.added = 0  # events ever buffered: where `pending` starts is `added - len(pending)`
        self.task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    def __call__(self, _: MutableMapping[str, Any], line: str) -> None:
        # An entry's events are separated by "\n". json.dumps writes none (it escapes those in
        # strings), and a raw one elsewhere in a JSON text is whitespace: a space is the same.
        self.pending.append(line.replace("\n", " "))
        self.added += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="event_sink")

    async def _run(self) -> None:
        # Stopped by an event, never cancelled: a cancel landing inside the Redis client
        # can be swallowed there, and the task would never end.
        while not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self.closing.wait()
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered; keep it for the next try if Redis does not answer."""
        if not self.pending:
            return
        batch, end = list(self.pending), self.added
        try:
            await self._write(batch)
        except (RedisError, OSError):
            return
        # Drop the batch. Events logged meanwhile stay, after it; if the buffer overflowed
        # meanwhile, it has already dropped the batch's oldest, so count by position.
        for _ in range(end - (self.added - len(self.pending))):
            self.pending.popleft()

    async def _write(self, lines: list[str]) -> None:
        """One XADD per ENTRY_EVENTS lines, sent together. Several go in MULTI/EXEC: written
        whole or not at all, a batch tried again is never partly repeated or reordered (OOM
        aborts the EXEC); a single one needs no MULTI, the common case of a quiet turn."""
        entries = [lines[i : i + ENTRY_EVENTS] for i in range(0, len(lines), ENTRY_EVENTS)]
        for entry in entries:
            self.per_entry += (len(entry) - self.per_entry) / 16
        cap = max(1, math.ceil(self.max_len / self.per_entry))
        async with self.redis.pipeline(transaction=len(entries) > 1) as pipe:
            for entry in entries:
                pipe.xadd(EVENT_STREAM, {"e": "\n".join(entry)}, maxlen=cap, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        """Stop the writer and write what is left."""
        self.closing.set()
        if self.task is not None:
            await self.task
        await self.flush()


def make_logger(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    as_json: bool | None = None,
    secrets: Iterable[str] = (),
    include_content: bool = False,
    hub: EventHub | None = None,
    console_level: str | None = None,
    renderer: Callable[[WrappedLogger, str, EventDict], str] | None = None,
) -> Logger:
    """A logger writing one event per line to `stream` (stdout by default) and to `hub`.

    `console_level` shows only events at or above it on `stream` (the hub gets them all).
    `renderer`: how an event is written to `stream` (instead of JSON or structlog's columns).
    """
    out = stream if stream is not None else sys.stdout
    if renderer is not None:
        as_json = False
    elif as_json is None:
        as_json = not out.isatty()
    proc = f"{socket.gethostname()}:{os.getpid()}"

    def add_proc(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event["proc"] = proc
        return event

    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
        add_proc,
    ]
    if not include_content:
        processors.append(_drop_content)
    processors.append(Redactor(secrets))
    processors.append(_order)
    shared_dump = as_json and console_level is None  # one json.dumps for stdout and the hub
    if hub is not None and not shared_dump:
        processors.append(hub)
    if console_level is not None:
        floor = logging.getLevelNamesMapping()[console_level.upper()]

        def quiet(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
            if logging.getLevelNamesMapping()[str(event["level"]).upper()] < floor:
                raise structlog.DropEvent
            return event

        processors.append(quiet)
    if renderer is not None:
        processors.append(renderer)
    elif as_json:
        processors.append(JsonRenderer(hub if shared_dump else None))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False))
    logger: Logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    return logger

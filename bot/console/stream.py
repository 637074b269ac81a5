"""/logs: the deployment's event stream, filtered as `bot logs` filters it, live through
Server-Sent Events (/logs/stream) with the same redaction."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import web
from multidict import MultiMapping

from bot.console.pages import render
from bot.console.parts import PARTS, STOPPING, ConsoleParts
from bot.logreader import LEVELS, Filters, recent_from_redis
from bot.logs import CONTENT_KEYS, EVENT_STREAM, Redactor, entry_events

RECENT = 100  # events shown when the page opens
HEARTBEAT_SECONDS = 15.0
COLUMNS = ("ts", "level", "event", "channel", "conversation")


def filters_of(query: MultiMapping[str]) -> Filters:
    """The page's filter form (level, event, channel, conversation) as `bot logs` takes them."""
    level = query.get("level", "")
    events = frozenset(e.strip() for e in query.get("event", "").split(",") if e.strip())
    return Filters(
        level=level if level in LEVELS else None,
        events=events,
        channel=query.get("channel", "").strip() or None,
        conversation=query.get("conversation", "").strip() or None,
    )


def shown(parts: ConsoleParts, event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as a page may show it: secrets replaced, phone numbers masked, message text
    dropped unless `logging.includeContent` (the stream is written redacted; this is the
    second belt)."""
    redact = Redactor(parts.settings.secrets())
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key in CONTENT_KEYS and not parts.show_text:
            continue
        out[key] = redact.clean(value) if isinstance(value, str) else value
    rest = " ".join(f"{k}={v}" for k, v in out.items() if k not in COLUMNS)
    return {**{k: out.get(k, "") for k in COLUMNS}, "rest": rest}


def messages(parts: ConsoleParts, entry_id: str, events: list[dict[str, Any]]) -> list[str]:
    """One entry's matching events as SSE messages. The entry's id goes on its last one only:
    a browser that reconnects (Last-Event-ID) after part of an entry is sent that part again,
    rather than missing the rest."""
    out = []
    for n, event in enumerate(events, 1):
        data = json.dumps(shown(parts, event), ensure_ascii=False)
        out.append(f"id: {entry_id}\ndata: {data}\n\n" if n == len(events) else f"data: {data}\n\n")
    return out


async def logs_page(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    filters = filters_of(request.query)
    events, after = await recent_from_redis(parts.redis, filters, RECENT)
    context = {
        "page": "logs",
        "events": [shown(parts, e) for e in events],
        "after": after,
        "query": {
            k: request.query.get(k, "") for k in ("level", "event", "channel", "conversation")
        },
        "levels": list(LEVELS),
    }
    return await render(request, "logs.html", context)


async def logs_stream(request: web.Request) -> web.StreamResponse:
    """`text/event-stream` of matching events after `after` (or Last-Event-ID), until the
    browser goes away or the process shuts down."""
    parts = request.app[PARTS]
    filters = filters_of(request.query)
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "$"
    if after == "$":
        newest = cast("list[tuple[str, Any]]", await parts.redis.xrevrange(EVENT_STREAM, count=1))
        after = newest[0][0] if newest else "0-0"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(b": connected\n\n")
    stopping = request.app[STOPPING]
    beat = time.monotonic()
    while not stopping.is_set():
        answer = cast(
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
            await parts.redis.xread({EVENT_STREAM: after}, block=1000, count=200),
        )
        chunks = []
        for _, rows in answer or []:
            for entry_id, fields in rows:
                after = entry_id
                chunks += messages(
                    parts, entry_id, [e for e in entry_events(fields) if filters.match(e)]
                )
        if not chunks and time.monotonic() - beat > HEARTBEAT_SECONDS:
            chunks.append(": ping\n\n")
        if chunks:
            beat = time.monotonic()
            try:
                await response.write("".join(chunks).encode())
            except ConnectionResetError:  # the browser went away
                break
    return response

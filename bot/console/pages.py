"""The console's pages and actions. Every action is a POST (CSRF-checked by the middleware),
audited as its chat command or CLI counterpart is, and answered with a redirect to a page."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from bot.console import views
from bot.console.auth import COOKIE, console_token
from bot.console.charts import Bar, bar_chart
from bot.console.parts import CSRF, OPERATOR, PARTS, SESSIONS, ConsoleParts
from bot.deadletters import DeadLetterError, RedisDeadLetters
from bot.errors import CommandError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
USAGE_PERIODS = (7, 30)


def ago(ts: float | None) -> str:
    """Seconds or an epoch time as "12 s", "4 min", "3 h", "2 d" ago."""
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts) if ts > 1e9 else ts
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """A page with what every page has: the CSRF token, the navigation, the last flash."""
    session = request.cookies.get(COOKIE, "")
    note = await request.app[SESSIONS].take_flash(session) if session else None
    full = {"csrf": request.get(CSRF, ""), "note": note, "nav": True, **context}
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def done(request: web.Request, to: str, note: str) -> web.StreamResponse:
    """After an action: say what it did on the next page, and go there."""
    await request.app[SESSIONS].flash(request.cookies.get(COOKIE, ""), note)
    raise web.HTTPSeeOther(to)


async def ref_key(parts: ConsoleParts) -> str:
    """The key of conversation refs in URLs (derived from the sign-in token)."""
    token = await console_token(parts.redis, parts.settings)
    return hashlib.sha256(f"conversation-ref:{token}".encode()).hexdigest()


# -- pages -------------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    found = await views.overview(parts)
    bars = [
        Bar(
            label=f"-{60 - 5 * n}m",
            parts=(float(replies), float(errors)),
            title=f"{60 - 5 * n}-{55 - 5 * n} min ago: {replies} replies, {errors} errors",
        )
        for n, (replies, errors) in enumerate(found.activity.buckets)
    ]
    chart = bar_chart(
        bars,
        legend=("replies", "errors"),
        aria="replies and errors, last hour",
        height=160,
        kind="activity",
    )
    return await render(request, "overview.html", {"page": "overview", "o": found, "chart": chart})


async def conversations(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    rows = await views.conversations(parts, await ref_key(parts))
    return await render(request, "conversations.html", {"page": "conversations", "rows": rows})


async def _conversation_of(request: web.Request) -> str:
    parts = request.app[PARTS]
    found = await views.find_conversation(parts, await ref_key(parts), request.match_info["ref"])
    if found is None:
        raise web.HTTPNotFound(text="no such conversation (or it has had no turn lately)")
    return found


async def conversation(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    conversation = await _conversation_of(request)
    state = await parts.memory.state(conversation)
    ref, source = await parts.choice.current(conversation)
    context = {
        "page": "conversations",
        "ref": request.match_info["ref"],
        "masked": views.masked(conversation),
        "channel": conversation.split(":", 1)[0],
        "state": state,
        "turns": state.turns[-20:],
        "earlier": max(0, len(state.turns) - 20),
        "show_text": parts.show_text,
        "model": str(ref),
        "source": source,
        "totals": await parts.usage.conversation(conversation),
        "reminders": views.reminder_rows(
            await parts.reminders.pending(conversation) if parts.reminders else []
        ),
    }
    return await render(request, "conversation.html", context)


async def usage(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    days = int(request.query.get("days", "7")) if request.query.get("days") in ("7", "30") else 7
    found = await views.usage(parts, days)
    bars = [
        Bar(
            label=row.key[5:],
            parts=(float(row.totals.tokens_in), float(row.totals.tokens_out)),
            title=f"{row.key}: {row.totals.tokens_in:,} in, {row.totals.tokens_out:,} out, "
            f"${row.totals.cost:.4f}, {row.totals.turns} turns",
        )
        for row in found.by_day
    ]
    chart = bar_chart(
        bars,
        legend=("tokens in", "tokens out"),
        line=[row.totals.cost for row in found.by_day],
        line_label="cost (own scale)",
        aria=f"tokens and cost per day, last {days} days",
    )
    context = {"page": "usage", "u": found, "chart": chart, "periods": USAGE_PERIODS}
    return await render(request, "usage.html", context)


async def models(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    default = await parts.choice.default()
    known = [
        f"{pid}/{spec.id}"
        for pid, provider in parts.config.providers().items()
        for spec in provider.models
    ]
    context = {
        "page": "models",
        "chain": await views.model_rows(parts),
        "aliases": [(alias, str(ref)) for alias, ref in parts.registry.aliases()],
        "default": str(default),
        "configured": str(parts.registry.default),
        "known": sorted({*known, str(default)}),
        "history": await parts.choice.history(10),
    }
    return await render(request, "models.html", context)


async def dead_letters(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    letters = []
    for letter in await RedisDeadLetters(parts.redis).list():
        try:
            bodies = letter.message_bodies()
            texts = [_message_text(b) for b in bodies]
        except DeadLetterError:
            bodies, texts = [], []
        letters.append({"letter": letter, "count": len(bodies), "texts": texts})
    context = {"page": "dead-letters", "letters": letters, "show_text": parts.show_text}
    return await render(request, "deadletters.html", context)


async def pairing(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    context = {"page": "pairing", "pending": await parts.access.pending()}
    return await render(request, "pairing.html", context)


# -- actions -----------------------------------------------------------------------------------


async def compact(request: web.Request) -> web.StreamResponse:
    """As `/compact` in the chat: condense the conversation now; audited as that command."""
    parts = request.app[PARTS]
    conversation = await _conversation_of(request)
    ref, _ = await parts.choice.current(conversation)
    result = await parts.compactor.compact(
        conversation, model=parts.registry.info(ref), explicit=True
    )
    _audit(parts, conversation, "compact")
    if not result.summarised and not result.dropped:
        note = f"Nothing to condense yet (about {result.tokens_before} tokens of history)."
    else:
        note = f"Condensed: about {result.tokens_before} → {result.tokens_after} tokens."
    return await done(request, f"/conversations/{request.match_info['ref']}", note)


async def reset(request: web.Request) -> web.StreamResponse:
    """As `/new` in the chat: forget the conversation; audited as that command."""
    parts = request.app[PARTS]
    conversation = await _conversation_of(request)
    await parts.memory.clear(conversation)
    _audit(parts, conversation, "new")
    note = "Started a new conversation: its memory is forgotten."
    return await done(request, f"/conversations/{request.match_info['ref']}", note)


def _audit(parts: ConsoleParts, conversation: str, command: str) -> None:
    parts.log.info(
        "command",
        channel=conversation.split(":", 1)[0],
        conversation=conversation,
        command=command,
        outcome="ok",
        by=OPERATOR,
    )


async def set_default(request: web.Request) -> web.StreamResponse:
    """As `/model default <model>`: everyone's default, audited on the model stream and with a
    `model_changed` event."""
    parts = request.app[PARTS]
    wanted = str((await request.post()).get("model", "")).strip()
    try:
        ref = parts.registry.resolve(wanted)
    except CommandError as exc:
        return await done(request, "/models", str(exc))
    change = await parts.choice.set("default", ref, who=OPERATOR)
    parts.log.info(
        "model_changed", by=OPERATOR, scope="default", before=change.before, after=change.after
    )
    return await done(request, "/models", f"Everyone's default model is now {ref}.")


async def retry_letter(request: web.Request) -> web.StreamResponse:
    """As `bot dead-letters retry ID`."""
    parts = request.app[PARTS]
    try:
        letter = await RedisDeadLetters(parts.redis).retry(request.match_info["id"])
    except DeadLetterError as exc:
        return await done(request, "/dead-letters", str(exc))
    parts.log.info(
        "dead_letter_retried", conversation=letter.conversation, id=letter.id, by=OPERATOR
    )
    return await done(request, "/dead-letters", f"Retrying {letter.id}: back in its inbox.")


async def drop_letter(request: web.Request) -> web.StreamResponse:
    """As `bot dead-letters drop ID`."""
    parts = request.app[PARTS]
    try:
        letter = await RedisDeadLetters(parts.redis).drop(request.match_info["id"])
    except DeadLetterError as exc:
        return await done(request, "/dead-letters", str(exc))
    parts.log.info(
        "dead_letter_dropped", conversation=letter.conversation, id=letter.id, by=OPERATOR
    )
    return await done(request, "/dead-letters", f"Dropped {letter.id}.")


async def approve(request: web.Request) -> web.StreamResponse:
    """As `/approve CODE` or `bot pairing approve CODE` (it logs `pairing_approved`)."""
    parts = request.app[PARTS]
    code = str((await request.post()).get("code", "")).strip()
    found = await parts.access.approve(code, who=OPERATOR) if code else None
    if found is None:
        return await done(request, "/pairing", f"No pending request with code {code.upper()}.")
    return await done(request, "/pairing", f"Approved {views.masked(found.sender)}.")


def _message_text(body: str) -> str:
    try:
        found = json.loads(body)
    except ValueError:
        return ""
    return str(found.get("text", "")) if isinstance(found, dict) else ""

"""The operator console in process: sign-in, cookie flags, CSRF, redaction, every page and
every action against real Redis (the browser tests are in test_operator_console_browser.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils, web

from bot.app import App, open_app
from bot.cli.common import EXIT_CONFIG
from bot.config import parse_config
from bot.console import ConsoleSetupError, ProcessBeacon, console_token, processes, sign_in_url
from bot.console.auth import TOKEN_KEY
from bot.console.parts import PARTS
from bot.console.views import activity
from bot.deadletters import RedisDeadLetters
from bot.llm.lmstudio import state_key
from bot.logs import EVENT_STREAM, EventHub, entry_events, make_logger
from bot.messages import InboundMessage
from bot.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import (
    RecordingSender,
    bot_env,
    eventually,
    free_ports,
    gateway_config_text,
    run_bot,
    run_turn,
)

TOKEN = "console-SECRET-token-0123456789"
SECRETS = {
    "twilio_auth_token": "TWILIO-SECRET-auth-0123456789",
    "openai_api_key": "sk-openai-SECRET-0123456789",
    "telegram_bot_token": "123456:SECRET-telegram-token",
    "bot_console_token": TOKEN,
}
PROVIDER_KEY = "sk-test-local"  # the config's apiKey of every provider (tests.helpers)
ALICE, BOB = "whatsapp:+15551234567", "whatsapp:+15559876543"
PAGES = ("/", "/conversations", "/usage", "/usage?days=30", "/models", "/dead-letters", "/pairing")
PAGES += ("/logs",)
ACTIONS = ("/models/default", "/dead-letters/1-0/retry", "/dead-letters/1-0/drop")
ACTIONS += ("/pairing/approve", "/conversations/x/compact", "/conversations/x/reset")


@dataclass
class Console:
    """A gateway's parts, its console in a test client, and the events it logged."""

    app: App
    http: test_utils.TestClient[web.Request, web.Application]
    out: io.StringIO

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in self.out.getvalue().splitlines() if x.startswith("{")]
        return [e for e in lines if e.get("event") == name]

    async def sign_in(self) -> None:
        answer = await self.http.get(f"/login?token={TOKEN}", allow_redirects=False)
        assert answer.status == 303

    async def csrf(self, page: str = "/") -> str:
        html = await (await self.http.get(page)).text()
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, "no CSRF token on the page"
        return found[1]

    async def post(self, path: str, **form: str) -> aiohttp.ClientResponse:
        data = {"csrf": await self.csrf(), **form}
        return await self.http.post(path, data=data, allow_redirects=False)


@contextlib.asynccontextmanager
async def console(
    redis_url: str,
    tmp_path: Path,
    model_url: str,
    *,
    backup_url: str | None = None,
    include_content: bool = False,
    **settings: Any,
) -> AsyncIterator[Console]:
    """A gateway (WhatsApp open, Telegram pairing) with its console served in process."""
    sections = (
        'channels: { whatsapp: { dmPolicy: "open" }, telegram: { dmPolicy: "pairing" } }, '
        f"logging: {{ includeContent: {json.dumps(include_content)} }},"
    )
    config = parse_config(
        gateway_config_text(model_url, backup_url, sections=sections), source="t.json5", env={}
    )
    env = Settings(  # type: ignore[call-arg]
        redis_url=redis_url, bot_data_dir=str(tmp_path), _env_file=None, **{**SECRETS, **settings}
    )
    out, hub = io.StringIO(), EventHub()
    log = make_logger(
        level="debug",
        stream=out,
        as_json=True,
        secrets=env.secrets(),
        include_content=include_content,
        hub=hub,
    )
    async with open_app(env, config, log, hub, tools=False) as app:
        await app.redis.client.flushdb()
        server = test_utils.TestServer(app.console_app())
        async with test_utils.TestClient(server) as http:
            yield Console(app=app, http=http, out=out)
        await app.redis.client.flushdb()


def message(conversation: str, text: str, n: int = 1) -> InboundMessage:
    return InboundMessage(
        channel=conversation.split(":", 1)[0],
        conversation=conversation,
        sender=conversation,
        text=text,
        platform_id=f"{conversation}-{n}-{time.time_ns()}",
        ts=time.time(),
    )


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    """The chain's model, answering a fixed reply."""
    async with FakeOpenAI(models=["local-model"], default=Reply(text="hello from the model")) as f:
        yield f


async def test_the_sign_in_url_sets_a_strict_httponly_session_cookie_and_goes_to_the_overview(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """/login?token=… answers 303 to / with an HttpOnly SameSite=Strict cookie holding a
    session id (not the token); the overview then opens without the token in the URL."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        answer = await c.http.get(f"/login?token={TOKEN}", allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"] == "/"
        cookie = answer.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert TOKEN not in cookie
        page = await c.http.get("/")
        assert page.status == 200
        assert page.url.path == "/"
        assert "token" not in page.url.query
        html = await page.text()
        assert "local/local-model" in html
        assert 'class="pill closed"' in html
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]


async def test_a_wrong_token_signs_nobody_in(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """A wrong or missing token gets the sign-in page (401) and no cookie."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        for url in ("/login?token=nope", "/login"):
            answer = await c.http.get(url, allow_redirects=False)
            assert answer.status == 401
            assert "Set-Cookie" not in answer.headers
            assert "bot console" in await answer.text()
        assert (await c.http.get("/", allow_redirects=False)).status == 302


async def test_signing_out_ends_the_session(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Sign out (a CSRF-checked POST) forgets the session: the same cookie opens nothing."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await c.sign_in()
        [cookie] = [m.value for m in c.http.session.cookie_jar if m.key == "switchboard_console"]
        c.http.session.cookie_jar.clear()
        c.http.session.cookie_jar.update_cookies({"switchboard_console": cookie})
        assert (await c.http.get("/", allow_redirects=False)).status == 200
        answer = await c.post("/logout")
        assert answer.status == 303
        assert answer.headers["Location"] == "/login"
        c.http.session.cookie_jar.update_cookies({"switchboard_console": cookie})
        assert (await c.http.get("/", allow_redirects=False)).status == 302


async def test_every_page_stream_and_action_is_refused_without_the_cookie(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Without a session every page redirects to /login; the SSE stream and every POST get
    401; a made-up session cookie counts as none."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        for page in (*PAGES, "/conversations/abc"):
            answer = await c.http.get(page, allow_redirects=False)
            assert answer.status == 302, page
            assert answer.headers["Location"] == "/login"
        assert (await c.http.get("/logs/stream")).status == 401
        for action in ACTIONS:
            assert (await c.http.post(action, data={"csrf": "x"})).status == 401, action
        c.http.session.cookie_jar.update_cookies({"switchboard_console": "made-up"})
        assert (await c.http.get("/", allow_redirects=False)).status == 302


async def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    redis_url: str, tmp_path: Path, model: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """A signed-in POST without the CSRF token, or with another one, is a 403 and the
    default model stays as it was."""
    async with console(redis_url, tmp_path, model.base_url, backup_url=backup.base_url) as c:
        await c.sign_in()
        for form in ({"model": "backup/backup-model"}, {"model": "x", "csrf": "wrong"}):
            answer = await c.http.post("/models/default", data=form, allow_redirects=False)
            assert answer.status == 403
        assert str(await c.app.choice.default()) == "local/local-model"


async def test_no_page_shows_a_secret_a_full_phone_number_or_message_text(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Every page (with conversations, a dead letter, a pairing request and events on record)
    is free of the auth token, the provider keys, the console token, full phone numbers and
    message text while `logging.includeContent` is off."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await seed(c)
        await c.sign_in()
        pages = [*PAGES, *await conversation_pages(c)]
        assert len(pages) == len(PAGES) + 2
        for page in pages:
            answer = await c.http.get(page)
            assert answer.status == 200, page
            html = await answer.text()
            for secret in (*SECRETS.values(), PROVIDER_KEY):
                assert secret not in html, (page, secret)
            for number in ("+15551234567", "+15559876543", "+15550001111"):
                assert number not in html, (page, number)
            assert "secret plans" not in html, page
            assert "hello from the model" not in html, page


async def test_message_text_is_shown_when_the_config_logs_it(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """With `logging.includeContent` a conversation's page shows its messages' text."""
    async with console(redis_url, tmp_path, model.base_url, include_content=True) as c:
        await seed(c)
        await c.sign_in()
        html = await (await c.http.get((await conversation_pages(c))[0])).text()
        assert "hello from the model" in html


async def test_conversations_are_listed_by_last_activity_with_masked_ids(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Two senders' turns make two rows, newest first, ids masked as the logs mask them,
    with their turns, tokens and model."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await run_turn(c.app, message(ALICE, "hi"))
        await run_turn(c.app, message(BOB, "hi"))
        await c.sign_in()
        html = await (await c.http.get("/conversations")).text()
        rows = re.findall(r'class="conv">([^<]+)</a>', html)
        assert rows == ["whatsapp:+1555•••6543", "whatsapp:+1555•••4567"]
        assert "local/local-model" in html


async def test_compact_and_reset_from_the_page_are_audited_like_the_chat_commands(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """The conversation page's buttons compact and forget its memory, each logged as the
    `command` event `/compact` and `/new` log, by the console."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        for n in range(3):
            await run_turn(c.app, message(ALICE, f"message {n}", n))
        await c.sign_in()
        page = (await conversation_pages(c))[0]
        answer = await c.post(f"{page}/compact")
        assert answer.status == 303
        assert answer.headers["Location"] == page
        note = re.search(
            r'class="note" role="status">([^<]+)<', await (await c.http.get(page)).text()
        )
        assert note
        assert note[1].startswith(("Condensed", "Nothing to condense"))
        answer = await c.post(f"{page}/reset")
        assert answer.status == 303
        assert (await c.app.memory.state(ALICE)).turns == []
        audit = [(e["command"], e["by"], e["conversation"]) for e in c.events("command")]
        masked = "whatsapp:+1555•••4567"
        assert audit == [("compact", "console", masked), ("new", "console", masked)]


async def test_the_default_model_set_on_the_page_is_what_model_reports_and_is_audited(
    redis_url: str, tmp_path: Path, model: FakeOpenAI, backup: FakeOpenAI
) -> None:
    """Setting the default on /models changes what `/model` answers in every conversation,
    with the audit entry and the `model_changed` event that `/model default` makes."""
    async with console(redis_url, tmp_path, model.base_url, backup_url=backup.base_url) as c:
        await c.sign_in()
        answer = await c.post("/models/default", model="backup/backup-model")
        assert answer.status == 303
        html = await (await c.http.get("/models")).text()
        assert "Everyone&#39;s default model is now backup/backup-model" in html
        assert '<code id="default">backup/backup-model</code>' in html
        replies = await run_turn(c.app, message(ALICE, "/model"))
        assert "Now: backup/backup-model (from the global default" in replies[0].text
        change = (await c.app.choice.history(1))[0]
        assert (change.who, change.scope, change.after) == (
            "console",
            "default",
            "backup/backup-model",
        )
        [event] = c.events("model_changed")
        assert event["by"] == "console"
        assert event["scope"] == "default"
        assert (event["before"], event["after"]) == ("local/local-model", "backup/backup-model")
        answer = await c.post("/models/default", model="nowhere/nothing")
        assert answer.status == 303
        assert "unknown" in (await (await c.http.get("/models")).text()).lower()
        assert str(await c.app.choice.default()) == "backup/backup-model"


async def test_a_dead_letter_retried_from_the_page_is_answered(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Retry puts the letter's message back in its inbox and a worker answers it; drop
    forgets another letter."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        letters = RedisDeadLetters(c.app.redis.client)
        body = json.dumps([message(ALICE, "please answer").to_dict()])
        kept = await letters.add(
            conversation=ALICE, batch="b1", attempts=3, error="boom", messages=body
        )
        other = await letters.add(
            conversation=BOB, batch="b2", attempts=3, error="x", messages=body
        )
        await c.sign_in()
        html = await (await c.http.get("/dead-letters")).text()
        assert kept in html
        assert other in html
        assert (await c.post(f"/dead-letters/{kept}/retry")).status == 303
        assert (await c.post(f"/dead-letters/{other}/drop")).status == 303
        assert await letters.list() == []
        sender = RecordingSender()
        worker = c.app.worker({"whatsapp": sender})
        assert await worker.process(ALICE)
        assert [m.text for m in sender.sent] == ["hello from the model"]
        assert [e["by"] for e in c.events("dead_letter_retried")] == ["console"]


async def test_pairing_approved_from_the_page_lets_the_stranger_in(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """A pending pairing request is listed (sender masked) and Approve admits the sender,
    logged as `pairing_approved` by the console."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        stranger = message("telegram:424242", "hello")
        verdict = await c.app.access.pair(stranger)
        code = re.search(r"code ([A-Z0-9]{8})", verdict.reply or "")
        assert code
        await c.sign_in()
        assert code[1] in await (await c.http.get("/pairing")).text()
        assert (await c.post("/pairing/approve", code=code[1])).status == 303
        assert await c.app.access.admits(stranger)
        assert [e["by"] for e in c.events("pairing_approved")] == ["console"]
        assert "Nobody is waiting" in await (await c.http.get("/pairing")).text()


async def test_usage_shows_the_same_total_as_bot_usage_and_a_chart(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """/usage's totals are the sums of `bot usage`'s rows, with an SVG chart of the days."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await run_turn(c.app, message(ALICE, "hi"))
        await run_turn(c.app, message(BOB, "hello"))
        rows = await c.app.usage.report(by="model", days=7)
        tokens = sum(r.totals.tokens for r in rows)
        assert tokens > 0
        await c.sign_in()
        html = await (await c.http.get("/usage")).text()
        assert f'<span class="big" id="total-tokens">{tokens:,}</span>' in html
        assert "<svg" in html
        assert html.count('<rect class="p0"') >= 7


async def test_the_overview_lists_announced_processes_and_the_queues(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """A process's beacon shows on the overview with its role, LM Studio's loaded state and
    context show beside the model, a dead letter counts; a withdrawn beacon is gone."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        beacon = ProcessBeacon(c.app.redis.client, role="web", version="9.9.9", log=c.app.log)
        await beacon.announce()
        assert [p.role for p in await processes(c.app.redis.client)] == ["web"]
        await RedisDeadLetters(c.app.redis.client).add(
            conversation=ALICE, batch="b", attempts=3, error="e", messages="[]"
        )
        loaded = {"local-model": {"loaded": True, "context": 8192, "max_context": 32768}}
        await c.app.redis.client.set(state_key("local"), json.dumps(loaded))
        await c.sign_in()
        html = await (await c.http.get("/")).text()
        assert "loaded, 8192-token context" in html
        assert "9.9.9" in html
        assert '<span class="big bad" id="dead-count">1</span>' in html
        stop = asyncio.Event()
        stop.set()
        await beacon.run(stop)  # stopped at once: it withdraws
        assert await processes(c.app.redis.client) == []


async def test_the_log_stream_sends_new_events_as_they_happen(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """/logs/stream sends an event logged after it opened, filtered and redacted."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await c.sign_in()
        html = await (await c.http.get("/logs?event=message_received")).text()
        assert 'id="events"' in html
        stream = await c.http.get("/logs/stream?event=message_received")
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        c.app.log.info("turn_started", channel="whatsapp", conversation=ALICE)
        c.app.log.info(
            "message_received", channel="whatsapp", conversation=ALICE, text="secret plans"
        )
        async with asyncio.timeout(10):
            while not (line := (await stream.content.readline()).decode()).startswith("data:"):
                pass
        event = json.loads(line.removeprefix("data:"))
        assert event["event"] == "message_received"
        assert event["conversation"] == "whatsapp:+1555•••4567"
        assert "secret plans" not in line
        stream.close()


async def sse_messages(
    response: aiohttp.ClientResponse, count: int
) -> list[tuple[str | None, dict[str, Any]]]:
    """The next `count` Server-Sent Events messages: each one's id (None if it has none) and
    its data."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    ident, data = None, None
    async with asyncio.timeout(10):
        while len(found) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                ident = line.removeprefix("id: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif not line and data is not None:
                found.append((ident, data))
                ident, data = None, None
    return found


def number(shown: dict[str, Any]) -> int:
    """The `n` of an event as the log page shows it (among the rest: `n=3 proc=…`)."""
    found = re.search(r"\bn=(\d+)", shown["rest"])
    assert found, shown
    return int(found[1])


async def test_the_log_stream_sends_every_event_of_an_entry_and_resumes_after_one(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """/logs/stream unpacks an old one-event entry and the several-event entries after it, in
    order, the entry's id on its last event; reconnecting with that id resumes after it."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        await c.sign_in()
        stream = await c.http.get("/logs/stream?event=batch_probe")
        old = await c.app.redis.client.xadd(
            EVENT_STREAM, {"e": json.dumps({"event": "batch_probe", "n": 0})}
        )
        for n in range(1, 41):  # one flush: several entries
            c.app.log.info("batch_probe", channel="whatsapp", n=n)
        sent = await sse_messages(stream, 41)
        stream.close()
        assert [number(data) for _, data in sent] == list(range(41))
        ids = [ident for ident, _ in sent if ident is not None]
        holding = [
            entry_id
            for entry_id, fields in await c.app.redis.client.xrange(EVENT_STREAM)
            if any(e["event"] == "batch_probe" for e in entry_events(fields))
        ]
        assert ids == holding
        assert len(holding) < 41
        assert sent[0][0] == old
        assert sent[-1][0] == holding[-1]
        resumed = await c.http.get("/logs/stream?event=batch_probe", headers={"Last-Event-ID": old})
        assert [number(data) for _, data in await sse_messages(resumed, 40)] == list(range(1, 41))
        resumed.close()


async def test_the_overview_counts_each_event_of_an_entry_at_its_own_time(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """The last hour's activity unpacks entries (old one-event ones too) and counts each event
    at its own `ts`: one logged before the hour but flushed inside it is not counted."""
    async with console(redis_url, tmp_path, model.base_url) as c:
        redis = c.app.redis.client
        await redis.delete(EVENT_STREAM)
        now = time.time()

        def line(event: str, ago: float, level: str = "info") -> str:
            at = datetime.fromtimestamp(now - ago, UTC).isoformat().replace("+00:00", "Z")
            return json.dumps({"ts": at, "level": level, "event": event})

        await redis.xadd(EVENT_STREAM, {"e": line("reply_sent", 3000)})  # written before #28
        lines = [
            line("reply_sent", 7200),  # before the hour
            line("turn_started", 1800),
            line("reply_sent", 1800),
            line("model_error", 60, level="error"),
        ]
        await redis.xadd(EVENT_STREAM, {"e": "\n".join(lines)})
        found = await activity(c.http.server.app[PARTS], now=now)
        assert (found.replies, found.turns, found.errors) == (2, 1, 1)
        assert found.buckets[2] == (1, 0)  # 3000 s ago: the third 5-minute column
        assert found.buckets[6] == (1, 0)  # 1800 s ago
        assert found.buckets[-1] == (0, 1)
        assert not found.capped


async def test_the_console_is_not_served_on_the_gateway_port(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """The gateway's web app (BOT_PORT) has no console route: /login and / are 404."""
    async with (
        console(redis_url, tmp_path, model.base_url) as c,
        test_utils.TestClient(test_utils.TestServer(c.app.web_app())) as gateway,
    ):
        for path in ("/", f"/login?token={TOKEN}", "/models", "/logs/stream"):
            assert (await gateway.get(path)).status == 404, path


async def test_a_non_loopback_console_without_a_token_refuses_to_start(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """BOT_CONSOLE_HOST=0.0.0.0 without BOT_CONSOLE_TOKEN stops the web role with an error
    naming both settings; with a token, or on loopback, or with the console off, it starts."""
    refused = {"bot_console_host": "0.0.0.0", "bot_console_token": None}
    async with console(redis_url, tmp_path, model.base_url) as c:
        settings = c.app.settings.model_copy(update=refused)
        app = App(
            **{**{f: getattr(c.app, f) for f in App.__dataclass_fields__}, "settings": settings}
        )
        [problem] = [p for p in app.problems() if "CONSOLE" in p]
        assert "BOT_CONSOLE_HOST" in problem
        assert "BOT_CONSOLE_TOKEN" in problem
        with pytest.raises(ConsoleSetupError, match="BOT_CONSOLE_TOKEN"):
            app.console_app()
        for fine in (
            {"bot_console_host": "0.0.0.0"},
            {"bot_console_host": "::1", "bot_console_token": None},
            {**refused, "bot_console_port": 0},
        ):
            allowed = c.app.settings.model_copy(update=fine)
            app = App(
                **{**{f: getattr(c.app, f) for f in App.__dataclass_fields__}, "settings": allowed}
            )
            assert [p for p in app.problems() if "CONSOLE" in p] == []


async def test_without_a_configured_token_every_process_accepts_the_one_kept_in_redis(
    redis_url: str, tmp_path: Path, model: FakeOpenAI
) -> None:
    """Unset BOT_CONSOLE_TOKEN: the first asker generates one (SET NX), later ones read the
    same; the sign-in URL carries it."""
    async with console(redis_url, tmp_path, model.base_url, bot_console_token=None) as c:
        redis = c.app.redis.client
        first, second = await asyncio.gather(
            console_token(redis, c.app.settings), console_token(redis, c.app.settings)
        )
        assert first == second == await redis.get(TOKEN_KEY)
        assert len(first) >= 32
        url = sign_in_url(c.app.settings, first)
        assert url == f"http://127.0.0.1:8081/login?token={first}"
        answer = await c.http.get(f"/login?token={first}", allow_redirects=False)
        assert answer.status == 303


# -- helpers ---------------------------------------------------------------------------------


async def seed(c: Console) -> None:
    """Two conversations (one with secret text), a dead letter, a pairing request, events."""
    await run_turn(c.app, message(ALICE, "my secret plans"))
    await run_turn(c.app, message(BOB, "hi"))
    body = json.dumps([message(ALICE, "secret plans again").to_dict()])
    await RedisDeadLetters(c.app.redis.client).add(
        conversation=ALICE,
        batch="b",
        attempts=3,
        error=f"boom for {ALICE} with {SECRETS['openai_api_key']}",
        messages=body,
    )
    await c.app.access.pair(message("telegram:+15550001111", "let me in"))
    c.app.log.info("message_received", channel="whatsapp", conversation=ALICE, text="secret plans")
    c.app.log.warning(
        "send_failed", channel="whatsapp", error=f"auth {SECRETS['twilio_auth_token']}"
    )
    await eventually(lambda: "send_failed" in c.out.getvalue())


async def conversation_pages(c: Console) -> list[str]:
    html = await (await c.http.get("/conversations")).text()
    return re.findall(r'href="(/conversations/[0-9a-f]+)"', html)


# -- `bot serve` and `bot console` (processes) -----------------------------------------------


@pytest.mark.serial
async def test_serve_procs_share_the_console_port_and_bot_console_signs_in(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """`bot serve --procs 2` serves the console on BOT_CONSOLE_PORT from both children
    (SO_REUSEPORT), not on BOT_PORT; `bot console` prints a sign-in URL that opens the
    overview, which lists both processes."""
    port, console_port = free_ports(2)
    env = bot_env(
        tmp_path, REDIS_URL=redis_url, BOT_PORT=str(port), BOT_CONSOLE_PORT=str(console_port)
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--procs", "2", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        printed = await run_bot("console", env=env, cwd=tmp_path)
        assert printed.code == 0, printed.err
        url = printed.out.strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{console_port}/login\?token=[\w-]{{40,}}", url)
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url) as page:
                            html = await page.text()
                            if page.status == 200 and html.count("<td>all</td>") == 2:
                                break
                    await asyncio.sleep(0.2)
            assert page.url.path == "/"
            async with http.get(f"http://127.0.0.1:{port}/login") as wrong_port:
                assert wrong_port.status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]


@pytest.mark.serial
async def test_serve_refuses_a_non_loopback_console_without_a_token(tmp_path: Path) -> None:
    """BOT_CONSOLE_HOST=0.0.0.0 without BOT_CONSOLE_TOKEN: `bot serve` exits with a config
    error naming both settings, before it listens anywhere."""
    env = bot_env(tmp_path, BOT_CONSOLE_HOST="0.0.0.0", BOT_CONSOLE_PORT="8081")
    result = await run_bot("serve", "--procs", "2", env=env, cwd=tmp_path)
    assert result.code == EXIT_CONFIG
    said = result.out + result.err
    assert "BOT_CONSOLE_HOST" in said
    assert "BOT_CONSOLE_TOKEN" in said

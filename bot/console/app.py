"""The console's aiohttp application: templates, static assets, sign-in and CSRF middleware,
security headers, and the routes of every page (bodies in bot.console.pages)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bot.console import pages, stream
from bot.console.auth import COOKIE, SESSION_SECONDS, Sessions, console_token, same
from bot.console.parts import CSRF, PARTS, SESSIONS, STOPPING, ConsoleParts
from bot.console.views import masked
from bot.errors import ConfigError
from bot.logs import Redactor

OPEN = frozenset({"/login"})  # the only page answered without a session
STATIC = Path(__file__).parent / "static"
HEADERS = {
    # Nothing from elsewhere, no inline script, no framing; the token never leaks as a referrer.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ConsoleSetupError(ConfigError):
    """The console cannot be served as configured (the message says which settings)."""


@web.middleware
async def signed_in(request: web.Request, handler: pages.Handler) -> web.StreamResponse:
    """Pages need a session (else a redirect to /login; 401 for the stream and actions);
    a POST needs the session's CSRF token besides."""
    if request.path in OPEN or request.path.startswith("/static/"):
        return await handler(request)
    csrf = await request.app[SESSIONS].csrf(request.cookies.get(COOKIE, ""))
    if csrf is None:
        if request.method != "GET" or request.path.startswith("/logs/stream"):
            raise web.HTTPUnauthorized(text="sign in first: run `bot console` for the URL")
        raise web.HTTPFound("/login")
    if request.method == "POST":
        form = await request.post()
        given = form.get("csrf")
        if not isinstance(given, str) or not same(given, csrf):
            request.app[PARTS].log.warning("console_refused", path=request.path, error="csrf")
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
    request[CSRF] = csrf
    return await handler(request)


@web.middleware
async def secure_headers(request: web.Request, handler: pages.Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    if not response.prepared:
        response.headers.update(HEADERS)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """`/login?token=…`: a session cookie, then `/` (the token leaves the address bar)."""
    parts = request.app[PARTS]
    given = request.query.get("token", "")
    if given and same(given, await console_token(parts.redis, parts.settings)):
        session = await request.app[SESSIONS].open()
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE,
            session,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            path="/",
        )
        parts.log.info("console_signed_in", peer=request.remote or "")
        raise response
    if given:
        parts.log.warning("console_refused", path="/login", error="wrong token")
    context = {"wrong": bool(given), "nav": False, "note": None}
    return aiohttp_jinja2.render_template("login.html", request, context, status=401)


async def logout(request: web.Request) -> web.StreamResponse:
    await request.app[SESSIONS].close(request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


def make_console_app(parts: ConsoleParts) -> web.Application:
    """The console; ConsoleSetupError if its listener would be reachable without a token."""
    from bot.console.auth import console_problems

    if problems := console_problems(parts.settings):
        raise ConsoleSetupError(problems[0])
    app = web.Application(middlewares=[secure_headers, signed_in])
    app[PARTS] = parts
    app[SESSIONS] = Sessions(parts.redis)
    app[STOPPING] = asyncio.Event()
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("bot.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["masked"] = masked
    env.filters["clean"] = Redactor(parts.settings.secrets()).clean  # secrets out, numbers masked
    env.filters["ago"] = pages.ago
    env.filters["when"] = pages.when

    async def stopping(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stopping)
    router = app.router
    router.add_get("/login", login)
    router.add_post("/logout", logout)
    router.add_get("/", pages.overview)
    router.add_get("/conversations", pages.conversations)
    router.add_get("/conversations/{ref}", pages.conversation)
    router.add_post("/conversations/{ref}/compact", pages.compact)
    router.add_post("/conversations/{ref}/reset", pages.reset)
    router.add_get("/usage", pages.usage)
    router.add_get("/models", pages.models)
    router.add_post("/models/default", pages.set_default)
    router.add_get("/dead-letters", pages.dead_letters)
    router.add_post("/dead-letters/{id}/retry", pages.retry_letter)
    router.add_post("/dead-letters/{id}/drop", pages.drop_letter)
    router.add_get("/pairing", pages.pairing)
    router.add_post("/pairing/approve", pages.approve)
    router.add_get("/logs", stream.logs_page)
    router.add_get("/logs/stream", stream.logs_stream)
    router.add_static("/static/", STATIC, append_version=True)
    return app

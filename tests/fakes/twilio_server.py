"""An in-process fake of Twilio's REST API Messages resource (aiohttp.web), in Twilio's shapes.

Point the real twilio SDK at it with `client.api.base_url = fake.base_url`. It creates
messages (POST) and lists them (GET, newest first, filtered by To, From and DateSent, paged),
fetches one (GET Messages/{Sid}.json, 404 20404 for a SID it never sent), and can play an
outage (every request answered 5xx until a moment). REST requests authenticate
with the account SID and auth token, or with an API key (`ApiKey`: user = its SK… SID, URLs
still under the account); every request records its Basic auth. A restricted key without
"Messages: read" (`ApiKey(list_messages=False)`: its lists and fetches are refused 403 20003),
or a proxy that serves only POST, is played by `refuse_list`; a person who
cannot be reached (21211, 21614, 63003, 21610, 63024) by `refuse_recipient`. It also builds
Twilio-signed inbound webhook requests (WhatsApp messages and status callbacks) for route tests,
and serves inbound media as Twilio does: the Media resource answers 401 without the account's
Basic auth and 307 to a CDN URL with it; the CDN (another port: another origin) serves the bytes.
The same server plays the Messaging API's Typing Indicators resource (point
TWILIO_MESSAGING_BASE_URL at `base_url`): `{"success": true}`, or `refuse_typing`'s error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "test-token"
MAX_BODY = 1600
_MESSAGES_PATH = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json"
_MESSAGE_PATH = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages/{{message_sid}}.json"
_MEDIA_PATH = (
    f"/{API_VERSION}/Accounts/{{account_sid}}/Messages/{{message_sid}}/Media/{{media_sid}}"
)
TYPING_PATH = "/v2/Indicators/Typing.json"
_CHUNK = b"\0" * 65536
_E164 = re.compile(r"^(?:whatsapp:|messenger:|rcs:)?\+[1-9]\d{5,14}$")
_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TwilioReply:
    """One scripted behaviour for the next Messages POST: an error, or a (delayed) success."""

    status: int = 201
    code: int | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """A Twilio API key the fake accepts as HTTP Basic auth (user: its SID, password: its
    secret). `list_messages=False`: a restricted key without "Messages: read", whose list
    and fetch requests Twilio refuses with 403 (code 20003)."""

    sid: str
    secret: str
    list_messages: bool = True


def new_api_key(*, list_messages: bool = True) -> ApiKey:
    """A fresh key in Twilio's shape: an `SK` SID of 34 characters and a 32-character secret."""
    return ApiKey(sid=_new_sid("SK"), secret=uuid.uuid4().hex, list_messages=list_messages)


@dataclass(frozen=True, slots=True, kw_only=True)
class SentMessage:
    """One message the fake accepted (answered 201)."""

    sid: str
    to: str
    from_: str | None
    body: str | None
    messaging_service_sid: str | None
    status_callback: str | None
    media_url: list[str]
    content_sid: str | None
    at: float  # time.monotonic() when accepted
    created: float = 0.0  # time.time() when accepted: the resource's date_created
    content_variables: str | None = None  # the Content Template's variables (JSON)


@dataclass(frozen=True, slots=True, kw_only=True)
class TwilioRequest:
    """One request the fake received, accepted or not."""

    method: str
    path: str
    form: dict[str, str]  # the first value of each field; repeated MediaUrl values are in `media`
    media: list[str]
    headers: CIMultiDictProxy[str]
    auth: tuple[str, str] | None  # the decoded HTTP Basic credentials, if any
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def user(self) -> str | None:
        """Who the request authenticated as: the account SID or an API key's SK… SID."""
        return self.auth[0] if self.auth else None


def too_many_requests(retry_after: float | None = 1) -> TwilioReply:
    """Twilio's 429 (code 20429), with a `Retry-After` header in seconds unless None."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return TwilioReply(status=429, code=20429, message="Too Many Requests", headers=headers)


def server_error(status: int = 500) -> TwilioReply:
    """Twilio's 500 (code 20500) or 503 (code 20503) with its error JSON."""
    if status == 503:
        return TwilioReply(status=503, code=20503, message="Service Unavailable")
    return TwilioReply(status=status, code=20500, message="Internal Server Error")


def forbidden() -> TwilioReply:
    """Twilio's 403 (code 20003) for a credential that may not do this, e.g. a restricted API
    key without "Messages: read" listing messages."""
    return TwilioReply(status=403, code=20003, message="Authenticate")


def method_not_allowed() -> TwilioReply:
    """A 405 (code 20004), as from a proxy in front of Twilio that serves only POST."""
    return TwilioReply(status=405, code=20004, message="Method not allowed")


# Twilio's synchronous refusals of a recipient that cannot be reached, by code.
RECIPIENT_ERRORS = {
    21211: "Invalid 'To' Phone Number",
    21614: "'To' number is not a valid mobile number",
    63003: "Channel could not find To address",
    21610: "Attempt to send to unsubscribed recipient",
    63024: "Invalid message recipient",
}


def unreachable(code: int = 21211) -> TwilioReply:
    """A 400 with one of Twilio's invalid-recipient codes (`RECIPIENT_ERRORS`)."""
    return TwilioReply(status=400, code=code, message=RECIPIENT_ERRORS[code])


def outside_window() -> TwilioReply:
    """A 400 with code 63016 (WhatsApp free-form message outside the 24-hour window).

    Real Twilio usually accepts such a message (201 "queued") and reports 63016 later, in a
    "failed"/"undelivered" status callback (see `whatsapp_status`); this synchronous form is
    for tests of the error path.
    """
    message = (
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template."
    )
    return TwilioReply(status=400, code=63016, message=message)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMedia:
    """An inbound attachment the fake serves: its bytes, or `streamed` bytes of zeros sent in
    chunks with no Content-Length (a large file whose size shows only while downloading)."""

    content_type: str
    data: bytes = b""
    streamed: int = 0
    hang: bool = False  # the CDN sends the headers, then nothing until the fake closes


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaHit:
    """One GET the fake's media resource or its CDN received."""

    path: str
    host: str
    auth: tuple[str, str] | None
    authorization: str | None

    @property
    def user(self) -> str | None:
        """Who the request authenticated as (None on the CDN, which takes no credentials)."""
        return self.auth[0] if self.auth else None


class FakeTwilio:
    """Twilio's Messages resource on 127.0.0.1: validates like Twilio, records, follows a script."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        max_body: int = MAX_BODY,
        latency: float = 0.0,
        api_keys: tuple[ApiKey, ...] = (),
    ) -> None:
        self.account_sid = account_sid
        self.api_keys = {key.sid: key for key in api_keys}
        self.latency = latency  # seconds each create takes before it is accepted
        self.auth_token = auth_token
        self.max_body = max_body
        self.messages: list[SentMessage] = []
        self.requests: list[TwilioRequest] = []  # the REST API's (Messages, the list)
        self.typing: list[TwilioRequest] = []  # the Typing Indicators resource's, in order
        self.media_hits: list[MediaHit] = []  # the media resource's and the CDN's requests
        self.cdn_bytes_sent: dict[str, int] = {}  # CDN key → bytes written before it ended
        self.port = 0
        self.cdn_port = 0
        self._media: dict[str, StoredMedia] = {}
        self._cdn_runner: web.AppRunner | None = None
        self._script: deque[TwilioReply] = deque()
        self._outage_until = 0.0
        self._outage_reply = server_error(503)
        self._list_refusal: TwilioReply | None = None
        self._refused_recipients: dict[str, TwilioReply] = {}
        self._typing_refusal: TwilioReply | None = None
        self._closing = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The URL to give the SDK as `client.api.base_url`, e.g. `http://127.0.0.1:4321`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def messages_url(self) -> str:
        """The absolute URL of this account's Messages list resource."""
        return self.base_url + _MESSAGES_PATH.format(account_sid=self.account_sid)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on a free port."""
        app = web.Application()
        app.router.add_post(_MESSAGES_PATH, self._create_message)
        app.router.add_get(_MESSAGES_PATH, self._list_messages)
        app.router.add_get(_MESSAGE_PATH, self._fetch_message)
        app.router.add_get(_MEDIA_PATH, self._media_resource)
        app.router.add_post(TYPING_PATH, self._typing_indicator)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        cdn = web.Application()
        cdn.router.add_get("/cdn/{key}", self._cdn)
        self._cdn_runner = web.AppRunner(
            cdn, handle_signals=False, access_log=None, shutdown_timeout=1
        )
        await self._cdn_runner.setup()
        await web.TCPSite(self._cdn_runner, "127.0.0.1", 0).start()
        self.cdn_port = self._cdn_runner.addresses[0][1]

    async def close(self) -> None:
        """Wake delayed handlers and stop the server."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._cdn_runner is not None:
            await self._cdn_runner.cleanup()
            self._cdn_runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting and inspection --------------------------------------------------------------

    def script(self, *replies: TwilioReply) -> None:
        """Queue replies for the next authenticated Messages POSTs, then behave normally."""
        self._script.extend(replies)

    def outage(self, seconds: float, reply: TwilioReply | None = None) -> None:
        """Answer every authenticated request (create and list) with `reply` (a 503 by
        default) for the next `seconds`."""
        self._outage_until = time.monotonic() + seconds
        self._outage_reply = reply or server_error(503)

    def refuse_list(self, reply: TwilioReply | None) -> None:
        """Answer every authenticated Messages list request with `reply` (e.g. `forbidden()`,
        `method_not_allowed()`), outage or not; None lists again."""
        self._list_refusal = reply

    def refuse_recipient(self, to: str, reply: TwilioReply | None) -> None:
        """Answer every message to `to` with `reply` (e.g. `unreachable(21610)`); None takes
        messages to `to` again."""
        if reply is None:
            self._refused_recipients.pop(to, None)
        else:
            self._refused_recipients[to] = reply

    def refuse_typing(self, reply: TwilioReply | None) -> None:
        """Answer every authenticated typing indicator request with `reply` (e.g.
        `server_error()`); None accepts them again."""
        self._typing_refusal = reply

    @property
    def in_outage(self) -> bool:
        return time.monotonic() < self._outage_until

    async def wait_for_messages(self, count: int = 1) -> list[SentMessage]:
        """Wait until at least `count` messages were accepted (wrap in `asyncio.timeout`)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= count)
        return list(self.messages)

    def add_media(
        self,
        content_type: str,
        data: bytes = b"",
        *,
        streamed: int = 0,
        hang: bool = False,
        message_sid: str = "",
    ) -> str:
        """Store an inbound attachment; return its MediaUrl as a webhook would carry it."""
        media_sid = _new_sid("ME")
        message_sid = message_sid or _new_sid("MM")
        self._media[media_sid] = StoredMedia(
            content_type=content_type, data=data, streamed=streamed, hang=hang
        )
        path = _MEDIA_PATH.format(
            account_sid=self.account_sid, message_sid=message_sid, media_sid=media_sid
        )
        return self.base_url + path

    # -- handler -------------------------------------------------------------------------------

    def _hit(self, request: web.Request) -> MediaHit:
        header = request.headers.get("Authorization")
        hit = MediaHit(
            path=request.path, host=request.host, auth=_basic_auth(header), authorization=header
        )
        self.media_hits.append(hit)
        return hit

    async def _media_resource(self, request: web.Request) -> web.Response:
        """GET a Media instance: 401 without the account's Basic auth, else 307 to the CDN."""
        hit = self._hit(request)
        if not self._authenticated(hit.auth):
            return _unauthorized()
        media_sid = request.match_info["media_sid"]
        if request.match_info["account_sid"] != self.account_sid or media_sid not in self._media:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        location = f"http://127.0.0.1:{self.cdn_port}/cdn/{media_sid}"
        return web.Response(status=307, headers={"Location": location})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """The CDN behind the redirect: no auth needed; streams large files in chunks."""
        self._hit(request)
        key = request.match_info["key"]
        stored = self._media.get(key)
        if stored is None:
            return web.Response(status=404)
        if stored.hang:
            response = web.StreamResponse(headers={"Content-Type": stored.content_type})
            await response.prepare(request)
            await self._closing.wait()
            return response
        if not stored.streamed:
            return web.Response(body=stored.data, headers={"Content-Type": stored.content_type})
        response = web.StreamResponse(headers={"Content-Type": stored.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < stored.streamed:
                await response.write(_CHUNK)
                sent += len(_CHUNK)
                self.cdn_bytes_sent[key] = sent
            await response.write_eof()
        return response

    async def _create_message(self, request: web.Request) -> web.Response:
        post = await request.post()
        form = {key: str(post[key]) for key in post}
        recorded = TwilioRequest(
            method=request.method,
            path=request.path,
            form=form,
            media=[str(value) for value in post.getall("MediaUrl", [])],
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            auth=_basic_auth(request.headers.get("Authorization")),
        )
        self.requests.append(recorded)

        if not self._authenticated(recorded.auth):
            return _unauthorized()
        if request.match_info["account_sid"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        if self.in_outage:
            return _reply_error(self._outage_reply)
        if refusal := self._refused_recipients.get(form.get("To", "")):
            return _reply_error(refusal)

        if self._script:
            reply = self._script.popleft()
            if reply.delay:
                await self._sleep(reply.delay)
            if not 200 <= reply.status < 300:
                code = reply.code if reply.code is not None else reply.status
                message = reply.message or HTTPStatus(reply.status).phrase
                return _error(reply.status, code, message, headers=reply.headers)

        if rejection := self._validate(recorded):
            return rejection
        if self.latency:
            await self._sleep(self.latency)
        return await self._accept(recorded)

    async def _typing_indicator(self, request: web.Request) -> web.Response:
        """POST /v2/Indicators/Typing.json: `messageId` (an inbound message's SID) and
        `channel=whatsapp`; Twilio answers `{"success": true}`."""
        post = await request.post()
        recorded = TwilioRequest(
            method=request.method,
            path=request.path,
            form={key: str(post[key]) for key in post},
            media=[],
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            auth=_basic_auth(request.headers.get("Authorization")),
        )
        self.typing.append(recorded)
        if not self._authenticated(recorded.auth):
            return _unauthorized()
        if self._typing_refusal is not None:
            return _reply_error(self._typing_refusal)
        if not recorded.form.get("messageId"):
            return _error(400, 20001, "Missing required parameter messageId in the post body")
        if recorded.form.get("channel") != "whatsapp":
            return _error(400, 20001, "Invalid channel: only whatsapp is supported")
        return web.json_response({"success": True})

    async def _list_messages(self, request: web.Request) -> web.Response:
        """GET Messages.json: this account's messages, newest first, as Twilio pages them."""
        query = request.query
        self.requests.append(
            TwilioRequest(
                method=request.method,
                path=request.path,
                form=dict(query),
                media=[],
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                auth=_basic_auth(request.headers.get("Authorization")),
            )
        )
        auth = self.requests[-1].auth
        if not self._authenticated(auth):
            return _error(401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        key = self.api_keys.get(auth[0]) if auth else None
        if key is not None and not key.list_messages:
            return _reply_error(forbidden())
        if self._list_refusal is not None:
            return _reply_error(self._list_refusal)
        if self.in_outage:
            return _reply_error(self._outage_reply)
        found = [
            m
            for m in reversed(self.messages)
            if query.get("To", m.to) == m.to
            and query.get("From", m.from_) == m.from_
            and _date_sent_matches(query, m)
        ]
        try:
            size = min(int(query.get("PageSize", "50")), 1000)
            page = int(query.get("Page", "0"))
        except ValueError:
            return _error(400, 20001, "Invalid paging parameter")
        rows = found[page * size : (page + 1) * size]
        base = _MESSAGES_PATH.format(account_sid=self.account_sid)
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(number: int) -> str:
            return f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

        more = (page + 1) * size < len(found)
        body = {
            "messages": [self._resource(m, status="sent") for m in rows],
            "end": page * size + max(len(rows) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": page * size,
            "uri": uri(page),
        }
        return web.json_response(body)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        """GET Messages/{Sid}.json: one message this account sent, as Twilio answers it."""
        self.requests.append(
            TwilioRequest(
                method=request.method,
                path=request.path,
                form={},
                media=[],
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                auth=_basic_auth(request.headers.get("Authorization")),
            )
        )
        auth = self.requests[-1].auth
        if not self._authenticated(auth):
            return _unauthorized()
        key = self.api_keys.get(auth[0]) if auth else None
        if key is not None and not key.list_messages:
            return _reply_error(forbidden())
        if self.in_outage:
            return _reply_error(self._outage_reply)
        sid = request.match_info["message_sid"]
        found = next((m for m in self.messages if m.sid == sid), None)
        if request.match_info["account_sid"] != self.account_sid or found is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._resource(found, status="sent"))

    def _authenticated(self, auth: tuple[str, str] | None) -> bool:
        """The account's SID and auth token, or one of the fake's API keys."""
        if auth == (self.account_sid, self.auth_token):
            return True
        key = self.api_keys.get(auth[0]) if auth else None
        return key is not None and auth is not None and auth[1] == key.secret

    def _validate(self, recorded: TwilioRequest) -> web.Response | None:
        form = recorded.form
        to = form.get("To")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return _error(
                400,
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
            )
        if not form.get("Body") and not recorded.media and not form.get("ContentSid"):
            return _error(400, 21602, "Message body is required.")
        if len(form.get("Body", "")) > self.max_body:
            message = f"The concatenated message body exceeds the {self.max_body} character limit"
            return _error(400, 21617, message)
        return None

    async def _accept(self, recorded: TwilioRequest) -> web.Response:
        form = recorded.form
        sid = "SM" + uuid.uuid4().hex
        message = SentMessage(
            sid=sid,
            to=form["To"],
            from_=form.get("From"),
            body=form.get("Body"),
            messaging_service_sid=form.get("MessagingServiceSid"),
            status_callback=form.get("StatusCallback"),
            media_url=list(recorded.media),
            content_sid=form.get("ContentSid"),
            content_variables=form.get("ContentVariables"),
            at=time.monotonic(),
            created=time.time(),
        )
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        return web.json_response(self._resource(message), status=201)

    def _resource(self, message: SentMessage, status: str = "queued") -> dict[str, Any]:
        """The Message resource JSON as Twilio answers a create (status "queued") or lists
        it (here "sent", with date_sent)."""
        # RFC 2822, e.g. "Fri, 13 Aug 2010 01:16:24 +0000"
        now = format_datetime(datetime.fromtimestamp(message.created or time.time(), UTC))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message.sid}"
        # A Messaging Service picks the sender later, so Twilio reports 0 segments at first.
        segments = 0 if message.messaging_service_sid else _segments(message.body or "")
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message.body or "",
            "date_created": now,
            "date_sent": now if status == "sent" else None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": str(len(message.media_url)),
            "num_segments": str(segments),
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": status,
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": message.to,
            "uri": f"{uri}.json",
        }

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


# -- shapes ------------------------------------------------------------------------------------


def _error(
    status: int,
    code: int,
    message: str,
    *,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Twilio's legacy error body: {"code","message","more_info","status"} (+"detail" on 401)."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status, headers=dict(headers or {}))


def _reply_error(reply: TwilioReply) -> web.Response:
    """A scripted error reply in Twilio's shape."""
    code = reply.code if reply.code is not None else reply.status
    message = reply.message or HTTPStatus(reply.status).phrase
    return _error(reply.status, code, message, headers=reply.headers)


def _date_sent_matches(query: Mapping[str, str], message: SentMessage) -> bool:
    """Twilio's DateSent filters: `DateSent` (that day), `DateSent<` and `DateSent>` (on or
    before / after; the SDK sends an ISO 8601 time, only its date counts here)."""
    sent = datetime.fromtimestamp(message.created, UTC).date().isoformat()
    exact, before, after = (query.get(k, "")[:10] for k in ("DateSent", "DateSent<", "DateSent>"))
    return (
        (not exact or sent == exact)
        and (not before or sent <= before)
        and (not after or sent >= after)
    )


def _unauthorized() -> web.Response:
    """Twilio's 401 (code 20003) for a request without the account's Basic auth."""
    return _error(
        401,
        20003,
        "Authenticate",
        detail="Your AccountSid or AuthToken was incorrect.",
        headers={"WWW-Authenticate": 'Basic realm="Twilio API"'},
    )


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _segments(body: str) -> int:
    """SMS segments: 160/153 GSM-7 characters, or 70/67 UCS-2 characters, per segment."""
    if set(body) <= _GSM7:
        single, multi, length = 160, 153, len(body)
    else:  # UCS-2 counts UTF-16 code units: an emoji takes two
        single, multi, length = 70, 67, len(body.encode("utf-16-le")) // 2
    return 1 if length <= single else math.ceil(length / multi)


def _new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


# -- inbound webhooks --------------------------------------------------------------------------


def signed_form(
    auth_token: str, url: str, params: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """A form-encoded webhook body and its headers, signed as Twilio signs them.

    `url` must be the full URL Twilio would call (scheme, host, path and query) because the
    signature covers it.
    """
    signature = RequestValidator(auth_token).compute_signature(url, dict(params))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        "User-Agent": "TwilioProxy/1.1",
    }
    return urlencode(list(params.items())).encode(), headers


def whatsapp_inbound(
    *,
    from_: str = "whatsapp:+15551234567",
    to: str = "whatsapp:+14155238886",
    body: str = "hello",
    sid: str | None = None,
    profile_name: str = "Ada",
    media: list[tuple[str, str]] | None = None,  # (url, content type) pairs
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> dict[str, str]:
    """The form fields Twilio posts to the incoming-message webhook for a WhatsApp message."""
    media = media or []
    sid = sid or _new_sid("MM" if media else "SM")
    wa_id = from_.removeprefix("whatsapp:").removeprefix("+")
    fields = {
        "SmsMessageSid": sid,
        "NumMedia": str(len(media)),
        "ProfileName": profile_name,
        "MessageType": _message_type(media),
        "SmsSid": sid,
        "WaId": wa_id,
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "ChannelMetadata": json.dumps(
            {"type": "whatsapp", "data": {"context": {"ProfileName": profile_name, "WaId": wa_id}}}
        ),
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    for index, (url, content_type) in enumerate(media):
        fields[f"MediaContentType{index}"] = content_type
        fields[f"MediaUrl{index}"] = url
    return fields


def _message_type(media: list[tuple[str, str]]) -> str:
    if not media:
        return "text"
    kind = media[0][1].partition("/")[0]
    return kind if kind in {"image", "video", "audio"} else "document"


def whatsapp_status(
    *,
    sid: str,
    status: str = "delivered",
    error_code: str | None = None,
    to: str = "whatsapp:+15551234567",
    from_: str = "whatsapp:+14155238886",
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> dict[str, str]:
    """The form fields of a WhatsApp message's status callback (e.g. "failed" with "63016")."""
    fields = {
        "ChannelPrefix": "whatsapp",
        "ApiVersion": API_VERSION,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "ChannelInstallSid": "XE" + "0" * 32,
        "To": to,
        "From": from_,
        "MessageSid": sid,
        "StructuredMessage": "false",
        "AccountSid": account_sid,
        "ChannelToAddress": to.removeprefix("whatsapp:"),
    }
    if error_code is not None:
        fields["ErrorCode"] = error_code
    return fields


__all__ = [
    "API_VERSION",
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "MAX_BODY",
    "RECIPIENT_ERRORS",
    "TYPING_PATH",
    "ApiKey",
    "FakeTwilio",
    "MediaHit",
    "SentMessage",
    "TwilioReply",
    "TwilioRequest",
    "forbidden",
    "method_not_allowed",
    "new_api_key",
    "outside_window",
    "server_error",
    "signed_form",
    "too_many_requests",
    "unreachable",
    "whatsapp_inbound",
    "whatsapp_status",
]

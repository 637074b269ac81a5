"""WhatsApp through Twilio: signed webhooks in, replies out through Twilio's Messages API.

The only module that imports the twilio SDK. Webhooks are verified with twilio's
RequestValidator over the public URL; replies (Markdown written in WhatsApp's own markers) go
through its async client, in chunks within `textChunkLimit`, one attempt per chunk (the outbox
retries 429, 5xx and network errors; a recipient Twilio calls unreachable is not), and a
resumed send asks Twilio's Messages list whether a chunk was already taken. While a turn runs,
Twilio's Typing Indicators API shows "typing…" and marks the person's message read. REST calls
use an API key when TWILIO_API_KEY_SID/SECRET are set, else the auth token (which always
verifies webhooks). Attachments (MediaUrl{n}) are fetched with that same Basic auth, which
never follows Twilio's redirect to its CDN. A reply to one of the bot's messages
(OriginalRepliedMessageSid) is quoted from that Message resource, read with the same
credential (a restricted key needs "Messages: read"; see bot.userturn).
About 500 lines on purpose: every Twilio REST call sits here, since this is the SDK's one home.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import aiohttp
from multidict import MultiDict
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client
from yarl import URL

from bot.config import WhatsAppConfig
from bot.errors import (
    BadPayload,
    ChannelNotConfigured,
    ChannelSendError,
    MediaRejected,
    RecipientUnreachable,
    ReplyUnavailable,
    WebhookAuthError,
)
from bot.messages import Attachment, InboundMessage, OutboundMessage
from bot.settings import Settings
from channels import markdown, whatsapp_parse
from channels.base import Ack, EventLog, RawRequest, download, same_origin

# Twilio error codes a person can act on: https://www.twilio.com/docs/errors/<code>
HINTS = {
    63016: "outside WhatsApp's 24-hour window: the person must write first (or use a template; "
    "for reminders set channels.whatsapp.reminderTemplateSid)",
    21617: "the body is over 1600 characters: lower channels.whatsapp.textChunkLimit",
    21211: "the 'To' number is not a valid phone number",
    21614: "the 'To' number is not a mobile (WhatsApp) number",
    21610: "the person unsubscribed (sent STOP): they must send START to get messages again",
    63003: "WhatsApp could not find the 'To' address: the number has no WhatsApp account",
    63024: "WhatsApp rejected the recipient: the number cannot receive messages",
    21606: "TWILIO_WHATSAPP_FROM is not a WhatsApp sender of this account",
    63007: "TWILIO_WHATSAPP_FROM is not a WhatsApp-enabled sender of this account",
    20003: "the Twilio credentials are wrong (TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET if set, "
    "else TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN), or the key is not of this account",
    20429: "Twilio is rate limiting this account",
}
RETRY_STATUSES = {429, 500, 502, 503, 504}
SESSION_WINDOW = 24 * 3600.0  # seconds after the person's last message free-form text may go
# Codes that say the person cannot be reached at this address: retrying would never help.
UNREACHABLE_CODES = frozenset({21211, 21614, 63003, 21610, 63024})
LIST_HINTS = {
    401: HINTS[20003],
    403: 'this credential may send but not list messages: a restricted API key needs "Messages: '
    'read" for exact-once resends',
}
LIST_HINT = (
    "TWILIO_API_BASE_URL does not serve GET on the Messages list (a proxy that passes only "
    "POST?): let GET …/Messages.json through for exact-once resends"
)
MAX_MEDIA = 10  # Twilio sends at most 10 media per message; NumMedia is capped to this
MAX_FIELDS = 1000  # an inbound form has a few dozen fields; more is not Twilio
_WHATSAPP_FROM = re.compile(r"whatsapp:\+[1-9][0-9]{1,14}")
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
CLOCK_SKEW = 2.0  # seconds of clock difference to Twilio allowed for when reconciling
RECONCILE_PAGE = 50  # the newest messages to one person looked at when reconciling
MAX_RETRY_AFTER = 30.0
TYPING_PATH = "/v2/Indicators/Typing.json"
TYPING_EVERY = 20.0  # Twilio shows the indicator for up to 25 s (or until the reply)
TYPING_TIMEOUT = 5.0  # seconds one typing indicator request may take
# The headers of the Twilio response last seen in the current task: TwilioRestException
# carries no headers, and Retry-After lives there. The SDK awaits straight through.
last_headers: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("twiliolast_headers")


class TwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's async HTTP client, sending Basic auth as a header and keeping response headers.

    AsyncTwilioHttpClient passes `aiohttp.BasicAuth`, deprecated since aiohttp 3.14, so the
    credentials go in the Authorization header instead.
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's HttpClient signature
        allow_redirects: bool = False,
    ) -> Response:
        if auth is not None:
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        response: Response = await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        last_headers.set(dict(response.headers or {}))
        return response


def media_count(field: str) -> int:
    """NumMedia as a count to loop over: at most MAX_MEDIA (Twilio's own maximum), whatever
    the field claims; BadPayload when it is not a whole number."""
    text = field.strip() or "0"
    if not (text.isascii() and text.isdigit()):
        raise BadPayload("NumMedia is not a whole number")
    digits = text.lstrip("0") or "0"
    return MAX_MEDIA if len(digits) > 2 else min(int(digits), MAX_MEDIA)


def hint(code: int | None) -> str:
    return HINTS.get(code or 0, "see https://www.twilio.com/docs/errors")


def list_refused(exc: TwilioException) -> ChannelSendError:
    """A failed Messages list request as a ChannelSendError with its status and a hint
    (retryable for 429 and 5xx). The SDK's list error carries the response, not the code."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(exc, "status", None) or getattr(response, "status_code", None)
    code: object = getattr(exc, "code", None)
    if code is None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            code = json.loads(getattr(response, "text", "") or "").get("code")
    code_text = f" error {code}" if isinstance(code, int) else ""
    return ChannelSendError(
        f"Twilio {status}{code_text} listing messages: {LIST_HINTS.get(status or 0, LIST_HINT)}",
        retryable=status in RETRY_STATUSES,
        status=status if isinstance(status, int) else None,
    )


class WhatsAppChannel:
    """WhatsApp messages to and from one Twilio sender."""

    name = "whatsapp"
    ack = Ack(content_type="text/xml", body=b'<?xml version="1.0" encoding="UTF-8"?><Response/>')

    def __init__(
        self,
        *,
        settings: Settings,
        config: WhatsAppConfig,
        log: EventLog,
        attempts: int = 4,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        typing_every: float = TYPING_EVERY,
    ) -> None:
        """`typing_every`: seconds between renewals of the typing indicator while a turn runs."""
        self.config = config
        self.typing_every = typing_every
        self.log = log
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        token = settings.twilio_auth_token
        self.validator = RequestValidator(token.get_secret_value()) if token else None
        self.sender = settings.twilio_whatsapp_from
        self.account_sid = settings.twilio_account_sid
        self.http: TwilioHttpClient | None = None
        self.client: Client | None = None
        rest = settings.twilio_rest_auth()
        self.rest_auth = rest if self.account_sid else None
        self.typing_url = settings.twilio_messaging_base_url.rstrip("/") + TYPING_PATH
        if self.account_sid and rest:
            self.http = TwilioHttpClient(timeout=15)
            user, password = rest  # an API key's SID and secret, or the account SID and token
            self.client = Client(user, password, self.account_sid, http_client=self.http)
            self.client.api.base_url = settings.twilio_api_base_url.rstrip("/")

    def startup_warnings(self) -> list[str]:
        """What an operator should fix before WhatsApp works safely."""
        warnings = []
        if self.config.dm_policy == "open":
            warnings.append(
                "channels.whatsapp.dmPolicy is open: anyone who finds the number can use it"
            )
        if not self.config.verify_signature:
            warnings.append(
                "channels.whatsapp.verifySignature is false: unsigned webhooks are accepted; "
                "use this only for local experiments"
            )
        elif self.validator is None:
            warnings.append("TWILIO_AUTH_TOKEN is not set: WhatsApp webhooks answer 503")
        if self.client is None:
            warnings.append(
                "TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID/"
                "TWILIO_API_KEY_SECRET) not set: replies cannot be sent"
            )
        elif not (self.sender or self.config.messaging_service_sid):
            warnings.append("TWILIO_WHATSAPP_FROM is not set: replies cannot be sent")
        return warnings

    # -- inbound ---------------------------------------------------------------------------

    def verify(self, request: RawRequest) -> MultiDict[str]:
        """The request's form fields, once its Twilio signature is proven.

        A body that is no UTF-8 form (Twilio sends nothing else) or has more than MAX_FIELDS
        fields is a BadPayload, before any signature work.
        """
        try:
            pairs = parse_qsl(
                request.body.decode("utf-8"),
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_FIELDS,
            )
        except ValueError as exc:  # UnicodeDecodeError included
            raise BadPayload(
                f"the body is not a UTF-8 form of at most {MAX_FIELDS} fields"
            ) from exc
        form = MultiDict(pairs)
        if not self.config.verify_signature:
            return form
        if self.validator is None:
            raise ChannelNotConfigured(
                "TWILIO_AUTH_TOKEN is not set: cannot verify WhatsApp webhooks"
            )
        signature = request.headers.get("X-Twilio-Signature", "")
        algorithm = get_signature_algorithm(
            request.headers.get("X-Twilio-Webhooks-Signature-Settings", "")
        )
        if not signature or not self.validator.validate(request.url, form, signature, algorithm):
            raise WebhookAuthError(
                "bad or missing X-Twilio-Signature (is BOT_PUBLIC_URL the URL Twilio calls?)"
            )
        return form

    def parse(self, request: RawRequest) -> list[InboundMessage]:
        """A verified inbound WhatsApp message as an InboundMessage."""
        form = self.verify(request)
        sender, sid = form.get("From", ""), form.get("MessageSid", "")
        if not _WHATSAPP_FROM.fullmatch(sender) or not _SID.fullmatch(sid):
            raise BadPayload("not a WhatsApp message: From must be whatsapp:+E164, MessageSid set")
        count = media_count(form.get("NumMedia", ""))
        media = tuple(form[f"MediaUrl{n}"] for n in range(count) if f"MediaUrl{n}" in form)
        types = {f"type{n}": form.get(f"MediaContentType{n}", "") for n in range(count)}
        return [
            InboundMessage(
                channel=self.name,
                conversation=sender,
                sender=sender,
                text=whatsapp_parse.text(form),
                platform_id=sid,
                ts=time.time(),
                sender_name=form.get("ProfileName") or None,
                media=media,
                meta={k: v for k, v in types.items() if v}
                | whatsapp_parse.sticker_notes(types)
                | {"to": form.get("To", "")},
                reply=whatsapp_parse.reply(form),
                forwarded_from=whatsapp_parse.forwarded(form),
            )
        ]

    def status(self, request: RawRequest) -> None:
        """Log a verified delivery status callback; failures with their code and a hint."""
        form = self.verify(request)
        status = form.get("MessageStatus", "")
        code = int(form["ErrorCode"]) if form.get("ErrorCode", "").isdigit() else None
        fields = {
            "channel": self.name,
            "conversation": form.get("To", ""),
            "msg_id": form.get("MessageSid", ""),
            "status": status,
        }
        if status in ("failed", "undelivered"):
            self.log.warning("delivery_failed", **fields, code=code, error=hint(code))
        else:
            self.log.debug("delivery_status", **fields)

    async def replied_text(self, message: InboundMessage) -> str:
        """The body of the bot's message that `message` replies to, from Twilio's Message
        resource; ReplyUnavailable when Twilio refuses or lacks it, or it was not to this
        person."""
        sid = message.reply.ref if message.reply is not None else ""
        if self.client is None or not _SID.fullmatch(sid):
            raise ReplyUnavailable(
                "no Twilio REST credential (or no message id) to read the replied-to message",
                reason="not_configured",
            )
        try:
            found = await self.client.messages(sid).fetch_async()
        except TwilioRestException as exc:
            reason = "not_found" if exc.status == 404 else "refused"
            reason = "unreachable" if exc.status in RETRY_STATUSES else reason
            read = ': a restricted API key needs "Messages: read"' if exc.status == 403 else ""
            raise ReplyUnavailable(
                f"Twilio {exc.status} error {exc.code} reading the replied-to message{read}",
                reason=reason,
            ) from exc
        except (aiohttp.ClientError, TwilioException) as exc:
            raise ReplyUnavailable(
                f"cannot reach Twilio: {type(exc).__name__}", reason="unreachable"
            ) from exc
        if found.to != message.sender or not found.body:
            raise ReplyUnavailable(
                "the replied-to message was not the bot's to this person", reason="not_found"
            )
        return str(found.body)

    # -- outbound --------------------------------------------------------------------------

    def chunks(self, message: OutboundMessage) -> list[str]:
        """The reply's Markdown in WhatsApp's markers (channels.markdown), as messages within
        `textChunkLimit`, in order."""
        return markdown.chunks(message.text, markdown.WHATSAPP, self.config.text_chunk_limit)

    async def send(self, message: OutboundMessage) -> None:
        """Send the reply to the person, in order, one Messages request per chunk, retrying
        each a few times (the worker's outbox uses `send_chunk` and retries for longer)."""
        chunks = self.chunks(message)
        for n, chunk in enumerate(chunks, 1):
            await self._send_chunk(message.conversation, chunk, part=f"{n}/{len(chunks)}")

    async def send_chunk(self, message: OutboundMessage, chunk: str) -> None:
        """One Messages request for one chunk; ChannelSendError says whether to retry. A
        message the person did not ask for (a reminder), after more than 24 h of their silence,
        goes as the Content Template `reminderTemplateSid` (the chunk is its variable 1) when
        one is set: WhatsApp refuses free-form text outside that window (63016)."""
        template = self.config.reminder_template_sid
        if template and message.quiet_for is not None and message.quiet_for > SESSION_WINDOW:
            variables = json.dumps({"1": chunk}, ensure_ascii=False)
            await self._send_chunk(
                message.conversation, chunk, part="", attempts=1, template=(template, variables)
            )
            return
        await self._send_chunk(message.conversation, chunk, part="", attempts=1)

    async def accepted(self, message: OutboundMessage, chunk: str, since: float) -> bool:
        """Whether Twilio already took `chunk` for this person at or after `since` (epoch s):
        the newest messages to them (To and From filters) with that body, created since."""
        client = self._client()
        origin = {} if self.config.messaging_service_sid else {"from_": self.sender or ""}
        try:
            page = await client.messages.page_async(
                to=message.conversation, page_size=RECONCILE_PAGE, **origin
            )
        except TwilioException as exc:
            raise list_refused(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChannelSendError(
                f"cannot reach Twilio: {type(exc).__name__}", retryable=True
            ) from exc
        return any(
            sent.body == chunk
            and sent.date_created is not None
            and sent.date_created.timestamp() >= int(since) - CLOCK_SKEW
            for sent in page
        )

    def _client(self) -> Client:
        """The Twilio client, once credentials and a sender are set."""
        if self.client is None:
            raise ChannelSendError(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and "
                "TWILIO_API_KEY_SECRET) must be set to send",
                retryable=False,
            )
        if not (self.sender or self.config.messaging_service_sid):
            raise ChannelSendError("TWILIO_WHATSAPP_FROM is not set", retryable=False)
        return self.client

    async def _send_chunk(
        self,
        to: str,
        body: str,
        *,
        part: str,
        attempts: int | None = None,
        template: tuple[str, str] | None = None,
    ) -> None:
        """One chunk, as `body` or, with `template` (ContentSid, ContentVariables JSON), as
        that Content Template."""
        client = self._client()
        origin: dict[str, str] = (
            {"messaging_service_sid": self.config.messaging_service_sid}
            if self.config.messaging_service_sid
            else {"from_": self.sender or ""}
        )
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            last_headers.set({})
            try:
                if template is not None:
                    await client.messages.create_async(
                        to=to, content_sid=template[0], content_variables=template[1], **origin
                    )
                else:
                    await client.messages.create_async(to=to, body=body, **origin)
                return
            except TwilioRestException as exc:
                retryable = exc.status in RETRY_STATUSES
                error = f"Twilio {exc.status} error {exc.code}: {hint(exc.code)}"
                if exc.code in UNREACHABLE_CODES:
                    raise RecipientUnreachable(error, code=exc.code, status=exc.status) from exc
                if not retryable or attempt == attempts:
                    raise ChannelSendError(
                        error,
                        retryable=retryable,
                        retry_after=self._retry_after(),
                        status=exc.status,
                    ) from exc
                delay = self._retry_after() or self.backoff_seconds * 2 ** (attempt - 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"cannot reach Twilio: {type(exc).__name__}"
                if attempt == attempts:
                    raise ChannelSendError(error, retryable=True) from exc
                delay = self.backoff_seconds * 2 ** (attempt - 1)
            self.log.warning(
                "send_retry",
                channel=self.name,
                conversation=to,
                part=part,
                error=error,
                ms=delay * 1000,
            )
            await self.sleep(delay)

    async def typing(self, message: InboundMessage) -> None:
        """Show "typing…" to the person and mark their message read (Twilio's Typing Indicators
        API; it shows for up to 25 s or until the reply). Nothing with
        `channels.whatsapp.typingIndicator: false`; ChannelSendError when Twilio refuses."""
        if not self.config.typing_indicator or self.http is None or self.rest_auth is None:
            return
        form: dict[str, object] = {"messageId": message.platform_id, "channel": "whatsapp"}
        try:
            async with asyncio.timeout(TYPING_TIMEOUT):
                response = await self.http.request(
                    "POST", self.typing_url, data=form, auth=self.rest_auth
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChannelSendError(
                f"cannot reach Twilio's typing indicator: {type(exc).__name__} "
                "(is TWILIO_MESSAGING_BASE_URL right?)",
                retryable=True,
            ) from exc
        if not 200 <= response.status_code < 300:
            code: object = None
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                code = json.loads(response.text or "").get("code")
            number = code if isinstance(code, int) else None
            code_text = f" error {number}" if number is not None else ""
            raise ChannelSendError(
                f"Twilio {response.status_code}{code_text} on the typing indicator: "
                f"{hint(number)} (channels.whatsapp.typingIndicator: false turns it off)",
                retryable=response.status_code in RETRY_STATUSES,
                status=response.status_code,
            )

    @staticmethod
    def _retry_after() -> float | None:
        value = last_headers.get({}).get("Retry-After")
        try:
            return min(float(value), MAX_RETRY_AFTER) if value is not None else None
        except ValueError:
            return None

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


class TwilioMediaFetcher:
    """WhatsApp attachments: Twilio's media resource with the REST credential (the API key,
    else the account SID and auth token) as Basic auth, then its redirect to the CDN with no
    credentials (another host)."""

    def __init__(self, *, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.api = URL(settings.twilio_api_base_url)
        rest = settings.twilio_rest_auth()
        self.authorization = aiohttp.encode_basic_auth(*rest) if rest else None

    async def fetch_media(
        self, message: InboundMessage, index: int, *, max_bytes: int
    ) -> Attachment:
        """The `index`th attachment of a WhatsApp message, at most `max_bytes`."""
        if index >= len(message.media):
            raise MediaRejected("the message has no such attachment", reason="fetch_failed")
        if self.authorization is None:
            raise MediaRejected(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and "
                "TWILIO_API_KEY_SECRET) must be set to fetch media",
                reason="fetch_failed",
            )
        return await download(
            self.http,
            message.media[index],
            max_bytes=max_bytes,
            headers_for=self._headers_for,
            declared_type=message.meta.get(f"type{index}", ""),
        )

    def _headers_for(self, url: URL) -> dict[str, str]:
        """Credentials for Twilio's own API host only, never for the CDN it redirects to."""
        if self.authorization is not None and same_origin(url, self.api):
            return {"Authorization": self.authorization}
        return {}

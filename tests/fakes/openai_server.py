"""An in-process fake OpenAI-compatible server (LM Studio flavour) built on aiohttp.web.

It answers `GET /v1/models`, `POST /v1/responses` and `POST /v1/chat/completions`, streaming or
not, in the shapes the openai SDK parses, with scripted replies, errors, delays and hangs; and
`POST /v1/audio/transcriptions` (multipart `file` + `model`) as OpenAI's whisper endpoint does.
Responses `input` items are held to llama.cpp's rules, the strictest server's: an item it cannot
place (an assistant turn without `"type": "message"`) gets its 400 "Cannot determine type of
'item'", in its body shape (`"code": 400`). A reply may call functions (`Reply.tool_calls`), in
each API's streaming shapes (LM Studio's too: Responses arguments only in `output_item.done`);
a transcript whose call outputs do not answer earlier calls gets OpenAI's 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

DEFAULT_MODEL = "minimax-m2.1-gs32"
LMSTUDIO_CONTEXT_MESSAGE = (
    "The number of tokens to keep from the initial prompt is greater than the context length. "
    "Try to load the model with a larger context length, or provide a shorter input"
)
LMSTUDIO_NOT_LOADED_MESSAGE = (
    "No models loaded. Please load a model in the developer page or use the 'lms load' command."
)
LLAMACPP_ITEM_MESSAGE = "Cannot determine type of 'item'"


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted behaviour of the fake: a successful answer, an error, a delay or a hang."""

    text: str = "ok"
    reasoning: str | None = "thinking about it"
    status: int = 200
    error: dict[str, Any] | None = None  # the inner {"message","type","code","param"} object
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    usage: tuple[int, int] | None = None  # (input_tokens, output_tokens); None: estimated
    cached: int = 0  # of the input tokens, how many came from the prompt cache
    no_usage: bool = False  # report no usage at all (a server that ignores include_usage)
    think_in_content: bool = True  # chat completions: also prefix content with <think>…</think>
    stall_after: int | None = None  # streams: go silent after this many text deltas
    token_delay: float = 0.0  # streams: pause between events (a slow but live server)
    # streams: after this many text deltas, wait for `gate` to be set before the rest (a test
    # sees the first part of the answer arrive before the model goes on)
    hold_after: int | None = None
    gate: asyncio.Event | None = None
    # streams: silence after the headers (and Responses' created/in_progress events) before the
    # first output event: a model reading a long prompt or loading; math.inf: never starts
    prefill: float = 0.0
    # functions the model calls, in order: (name, arguments as JSON text); after its text, if any
    tool_calls: Sequence[tuple[str, str]] = ()
    # where a stream puts a call's arguments. "deltas": Responses output_item.added (arguments
    # ""), argument deltas, function_call_arguments.done, output_item.done; chat fragments
    # across chunks. "done_only": LM Studio's Responses stream, output_item.added with empty
    # arguments, then only output_item.done with them; chat: each call whole in one fragment
    args_in: Literal["deltas", "done_only"] = "deltas"
    call_ids: bool = True  # False: calls come without ids (chat `id`, Responses `call_id` "")
    completed_output: bool = True  # False: Responses' response.completed has an empty output


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    json: dict[str, Any] | None
    headers: CIMultiDictProxy[str]

    @property
    def model(self) -> str | None:
        """The `model` field of the body, if any."""
        return (self.json or {}).get("model")

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream."""
        return bool((self.json or {}).get("stream"))

    @property
    def images(self) -> list[str]:
        """The image parts' URLs (data URLs), whether sent as Responses `input_image` or chat
        `image_url` parts."""
        return list(_image_urls((self.json or {}).get("input", (self.json or {}).get("messages"))))

    @property
    def turn_texts(self) -> list[str]:
        """The text of each Responses `input` item (or chat message), its text parts joined."""
        body = self.json or {}
        items = body.get("input", body.get("messages"))
        if isinstance(items, str):
            return [items]
        return ["".join(_texts(item)) for item in items or [] if isinstance(item, dict)]

    @property
    def tool_names(self) -> list[str]:
        """The names of the functions offered (`tools`), in either API's shape."""
        tools = (self.json or {}).get("tools") or []
        return [str(t.get("name") or (t.get("function") or {}).get("name")) for t in tools]

    @property
    def prompt(self) -> str:
        """Every text the model was shown (instructions, input or messages), one per line."""
        body = self.json or {}
        parts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
        parts.extend(_texts(body.get("input", body.get("messages"))))
        return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Streamed:
    """When one streamed answer's parts were written, on time.monotonic: its first text delta
    (answer text, not reasoning; None if it wrote none) and its end (after the last event)."""

    request: Recorded
    started: float
    first_text: float | None
    ended: float


class TextDelta(str):
    """A stream event that carries answer text (not reasoning): `Streamed.first_text` is
    taken when the first one is written."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Transcription:
    """One transcription request the fake received (the audio's bytes are kept to compare)."""

    model: str
    filename: str
    content_type: str
    audio: bytes
    headers: CIMultiDictProxy[str]


def error_reply(
    status: int,
    message: str,
    *,
    type: str | None = "invalid_request_error",  # OpenAI's field name
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An error answer with OpenAI's body: {"error": {"message","type","code","param"}}."""
    error = {"message": message, "type": type, "code": code, "param": param}
    return Reply(status=status, error=error, headers=dict(headers or {}))


def server_error(message: str = "The server had an error while processing your request.") -> Reply:
    """A 500 as OpenAI sends it."""
    return error_reply(500, message, type="server_error")


def unauthorized() -> Reply:
    """A 401 for a bad API key."""
    return error_reply(401, "Incorrect API key provided.", code="invalid_api_key")


def rate_limited(retry_after: float = 1.0) -> Reply:
    """A 429 with `retry-after` (seconds) and `retry-after-ms` headers."""
    headers = {"retry-after": f"{retry_after:g}", "retry-after-ms": f"{retry_after * 1000:.0f}"}
    message = "Rate limit reached for requests. Please try again later."
    return error_reply(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


def unknown_model(model: str | None) -> Reply:
    """A 404 for a model the server does not know (code `model_not_found`)."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error_reply(404, message, code="model_not_found", param="model")


def model_not_loaded() -> Reply:
    """LM Studio's 400 when no model is loaded; its body carries only a message."""
    return Reply(status=400, error={"message": LMSTUDIO_NOT_LOADED_MESSAGE})


def echo(request: Recorded) -> Reply:
    """A model that answers at once with the last turn it was shown: `echo:<text>`."""
    return Reply(text=f"echo:{request.turn_texts[-1]}")


def llamacpp_refusal(message: str = LLAMACPP_ITEM_MESSAGE) -> Reply:
    """llama.cpp's 400 for a request it cannot read: its code is the status, as a number."""
    return Reply(
        status=400, error={"code": 400, "message": message, "type": "invalid_request_error"}
    )


def context_overflow(*, lmstudio: bool = True) -> Reply:
    """A 400 `context_length_exceeded`, with LM Studio's message or OpenAI's."""
    message = LMSTUDIO_CONTEXT_MESSAGE
    if not lmstudio:
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages."
        )
    return error_reply(400, message, code="context_length_exceeded", param="input")


def closed_port() -> int:
    """A localhost port nobody listens on (bound then released), for refused connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 that answers from a script, then `default`."""

    def __init__(
        self,
        *,
        models: list[str] | None = None,
        default: Reply | Callable[[Recorded], Reply] | None = None,
        context_window: int | None = None,
    ) -> None:
        self.models = [DEFAULT_MODEL] if models is None else list(models)
        self.default: Reply | Callable[[Recorded], Reply] = default or Reply()
        self.requests: list[Recorded] = []
        self.streams: list[Streamed] = []  # one per streamed answer, when it ended
        self.context_window = context_window  # prompt + max output over it → 400 overflow
        self.overflows = 0
        self.transcript = "hello from a voice note"  # what /v1/audio/transcriptions answers
        self.transcript_seconds = 3.5
        # (input, output): answer {type: "tokens", …} as gpt-4o-transcribe does, instead of
        # whisper-1's {type: "duration", seconds}
        self.transcript_tokens: tuple[int, int] | None = None
        self.transcription_error: Reply | None = None  # answer transcriptions with this error
        self.transcriptions: list[Transcription] = []
        self.port = 0
        self._script: deque[Reply] = deque()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def base_url(self) -> str:
        """The URL to give the SDK, e.g. `http://127.0.0.1:4321/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on a free port."""
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await self.start_listening()

    async def close(self) -> None:
        """Wake hanging handlers, drop connections and stop the server."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def stop_listening(self) -> None:
        """Refuse new connections and drop open ones (the port stays reserved in `port`)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()

    async def start_listening(self) -> None:
        """Listen again, on the same port after `stop_listening`."""
        assert self._runner is not None, "call start() first"
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting -----------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next model requests, consumed in order, then `default`."""
        self._script.extend(replies)

    def fail(
        self,
        status: int,
        *,
        message: str = "error",
        code: str | None = None,
        type: str | None = "invalid_request_error",  # OpenAI's field name
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Queue `times` error replies with this status and OpenAI error body."""
        reply = error_reply(status, message, type=type, code=code, headers=headers)
        self.script(*[reply] * times)

    def requests_to(self, path: str) -> list[Recorded]:
        """Recorded requests whose path ends with `path` (e.g. "/responses")."""
        return [r for r in self.requests if r.path.endswith(path)]

    # -- for servers that speak more (LM Studio) ---------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        """Routes beyond the OpenAI-compatible ones (none here)."""

    async def _before_answer(self, recorded: Recorded) -> None:
        """Called before a model request is answered (LM Studio loads the model here)."""

    # -- handlers ------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Recorded:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            try:
                loaded = json.loads(await request.read() or b"null")
            except ValueError:
                loaded = None
            body = loaded if isinstance(loaded, dict) else None
        recorded = Recorded(
            request.method, request.path, body, CIMultiDictProxy(CIMultiDict(request.headers))
        )
        self.requests.append(recorded)
        return recorded

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [_model_entry(m) for m in self.models]})

    async def _model(self, request: web.Request) -> web.Response:
        await self._record(request)
        model = request.match_info["model"]
        if self.models and model not in self.models:
            return _error_response(unknown_model(model))
        return web.json_response(_model_entry(model))

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _response_body, _response_events)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _chat_body, _chat_events)

    async def _transcribe(self, request: web.Request) -> web.Response:
        """OpenAI's transcription endpoint: multipart `file` and `model`, JSON `{text}` back."""
        form = await request.post()
        upload, model = form.get("file"), form.get("model")
        if not isinstance(upload, web.FileField) or not isinstance(model, str) or not model:
            missing = "file" if not isinstance(upload, web.FileField) else "model"
            return _error_response(error_reply(400, f"Missing required parameter: '{missing}'."))
        self.transcriptions.append(
            Transcription(
                model=model,
                filename=upload.filename,
                content_type=upload.content_type,
                audio=upload.file.read(),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            )
        )
        if self.transcription_error is not None:
            return _error_response(self.transcription_error)
        usage: dict[str, Any] = {"type": "duration", "seconds": self.transcript_seconds}
        if self.transcript_tokens is not None:
            audio, out = self.transcript_tokens
            usage = {
                "type": "tokens", "input_tokens": audio, "output_tokens": out,
                "total_tokens": audio + out,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
            }  # fmt: skip
        return web.json_response({"text": self.transcript, "usage": usage})

    async def _answer(
        self,
        request: web.Request,
        body_of: Callable[[dict[str, Any], Reply], dict[str, Any]],
        events_of: Callable[[dict[str, Any], Reply], Iterator[str | None]],
    ) -> web.StreamResponse:
        recorded = await self._record(request)
        body = recorded.json
        if body is None:
            return _error_response(error_reply(400, "The request body is not valid JSON."))
        if self.models and recorded.model not in self.models:
            return _error_response(unknown_model(recorded.model))
        if (problem := input_problem(body.get("input"))) is not None:
            return _error_response(llamacpp_refusal(problem))
        if (refusal := transcript_refusal(body)) is not None:
            return _error_response(refusal)
        await self._before_answer(recorded)
        if self.context_window is not None:
            wanted = prompt_tokens(body) + int(
                body.get("max_output_tokens") or body.get("max_tokens") or 0
            )
            if wanted > self.context_window:
                self.overflows += 1
                return _error_response(context_overflow())
        reply = self._next_reply(recorded)
        if reply.delay:
            await self._sleep(reply.delay)
        if reply.hang:
            await self._closing.wait()
            return _error_response(error_reply(503, "The fake server is shutting down."))
        if reply.status != 200:
            return _error_response(reply)
        if not recorded.stream:
            return web.json_response(body_of(body, reply), headers=reply.headers)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **reply.headers,
            }
        )
        await response.prepare(request)
        started, first_text = time.monotonic(), None
        waiting = reply.prefill > 0
        for event in events_of(body, reply):
            if event is None:  # a stall point
                await self._closing.wait()
                break
            if event is HOLD:
                assert reply.gate is not None, "hold_after needs a gate"
                await _first(reply.gate.wait(), self._closing.wait())
                continue
            if waiting and not event.startswith(WAITING_EVENTS):
                waiting = False
                await self._sleep(reply.prefill)
                if self._closing.is_set():
                    break
            await response.write(event.encode())
            if first_text is None and isinstance(event, TextDelta):
                first_text = time.monotonic()
            if reply.token_delay:
                await self._sleep(reply.token_delay)
        await response.write_eof()
        self.streams.append(Streamed(recorded, started, first_text, time.monotonic()))
        return response

    def _next_reply(self, recorded: Recorded) -> Reply:
        if self._script:
            return self._script.popleft()
        return self.default(recorded) if callable(self.default) else self.default

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes (math.inf: until it closes)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if seconds == float("inf") else seconds):
                await self._closing.wait()


WAITING_EVENTS = ("event: response.created\n", "event: response.in_progress\n")
HOLD = "<hold>"  # in a stream's events: wait for the reply's gate here


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of `waits` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


# -- shapes ------------------------------------------------------------------------------------


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "organization_owner"}


def _error_response(reply: Reply) -> web.Response:
    kind = "server_error" if reply.status >= 500 else "invalid_request_error"
    phrase = HTTPStatus(reply.status).phrase
    error = reply.error or {"message": phrase, "type": kind, "code": None, "param": None}
    return web.json_response({"error": error}, status=reply.status, headers=reply.headers)


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _pieces(text: str) -> list[str]:
    """Split text into stream deltas (word by word) that join back to the original."""
    return re.findall(r"\S+\s*|\s+", text)


def _tokens(body: dict[str, Any], reply: Reply) -> tuple[int, int, int]:
    """(input, output, reasoning) token counts: scripted, or about four characters a token."""
    reasoning = len(reply.reasoning or "") // 4
    if reply.usage is not None:
        return reply.usage[0], reply.usage[1], min(reasoning, reply.usage[1])
    return prompt_tokens(body), max(1, len(reply.text) // 4) + reasoning, reasoning


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a request's prompt: about four characters a token."""
    prompt = str(body.get("instructions") or "") + json.dumps(
        body.get("input", body.get("messages", ""))
    )
    return max(1, len(prompt) // 4)


USER_PARTS = ("input_text", "input_image")
ASSISTANT_PARTS = ("output_text", "input_text", "refusal")
OTHER_ITEMS = ("function_call", "function_call_output", "reasoning")


def input_problem(value: Any) -> str | None:
    """What llama.cpp's `/v1/responses` would refuse in this `input` (None: it takes it).
    Its rules: a string is one user turn; an item whose `content` is a string is read as an
    `input_text` part; a user/system/developer item takes input parts, with or without `type`;
    an assistant item must say `"type": "message"`; anything else must be a tool call, a tool
    result or a reasoning item."""
    if value is None or isinstance(value, str):
        return None
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        return "'input' must be a string or array of objects"
    for item in value:
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        role, kind = item.get("role"), item.get("type")
        if isinstance(content, list) and role in ("user", "system", "developer"):
            if any(not isinstance(p, dict) or p.get("type") not in USER_PARTS for p in content):
                return "'type' must be one of 'input_text', 'input_image', or 'input_file'"
        elif isinstance(content, list) and role == "assistant" and kind == "message":
            if any(
                not isinstance(p, dict) or p.get("type") not in ASSISTANT_PARTS for p in content
            ):
                return "'type' must be one of 'output_text' or 'refusal'"
        elif kind not in OTHER_ITEMS:
            return LLAMACPP_ITEM_MESSAGE
    return None


def transcript_refusal(body: dict[str, Any]) -> Reply | None:
    """OpenAI's 400 for a tool transcript it cannot pair up (None: it takes it). Responses:
    a `function_call_output` must answer an earlier `function_call` item's `call_id`, and each
    call must get its output. Chat: a `role: "tool"` message must answer a `tool_calls` id of
    the assistant message it follows, and each of those ids must be answered."""
    items = body.get("input")
    if isinstance(items, list):
        called: list[str] = []
        answered: set[str] = set()
        for item in items:
            if not isinstance(item, dict):
                continue
            call_id = str(item.get("call_id"))
            if item.get("type") == "function_call":
                called.append(call_id)
            elif item.get("type") == "function_call_output":
                if call_id not in called:
                    message = f"No tool call found for function call output with call_id {call_id}."
                    return error_reply(400, message, param="input")
                answered.add(call_id)
        if missing := [c for c in called if c not in answered]:
            return error_reply(400, f"No tool output found for function call {missing[0]}.")
    messages = body.get("messages")
    if isinstance(messages, list):
        return _chat_transcript_refusal([m for m in messages if isinstance(m, dict)])
    return None


def _chat_transcript_refusal(messages: list[dict[str, Any]]) -> Reply | None:
    calls: list[str] | None = None  # the ids of the assistant message the tool messages follow
    waiting: list[str] = []  # of those, the ones not answered yet
    unanswered = (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
    )
    for message in messages:
        if message.get("role") == "tool":
            call_id = str(message.get("tool_call_id"))
            if calls is None:
                text = (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."  # sic: OpenAI's own spelling
                )
                return error_reply(400, text, param="messages")
            if call_id not in calls:
                text = f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                return error_reply(400, text + "'tool_calls' of previous message.")
            waiting = [c for c in waiting if c != call_id]
            continue
        if waiting:
            return error_reply(400, unanswered + ", ".join(waiting), param="messages")
        tool_calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        calls = [str(c.get("id")) for c in tool_calls or [] if isinstance(c, dict)] or None
        waiting = list(calls or [])
    if waiting:
        return error_reply(400, unanswered + ", ".join(waiting), param="messages")
    return None


def _texts(value: Any) -> Iterator[str]:
    """Texts inside a Responses `input` or chat `messages` value, in order (a function
    call's output too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        if isinstance(value.get("text"), str):
            yield value["text"]
        elif value.get("type") == "function_call_output" and isinstance(value.get("output"), str):
            yield value["output"]
        elif "content" in value:
            yield from _texts(value["content"])


def _image_urls(value: Any) -> Iterator[str]:
    """URLs of image parts inside a Responses `input` or chat `messages` value, in order."""
    if isinstance(value, list):
        for item in value:
            yield from _image_urls(item)
    elif isinstance(value, dict):
        if value.get("type") == "input_image" and isinstance(value.get("image_url"), str):
            yield value["image_url"]
        elif value.get("type") == "image_url" and isinstance(value.get("image_url"), dict):
            yield str(value["image_url"].get("url"))
        elif "content" in value:
            yield from _image_urls(value["content"])


def _sse(event_type: str | None, data: dict[str, Any]) -> str:
    prefix = f"event: {event_type}\n" if event_type else ""
    return f"{prefix}data: {json.dumps(data)}\n\n"


# -- Responses API -----------------------------------------------------------------------------


def _reasoning_item(item_id: str, text: str, *, done: bool = False) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if done else [],
        "status": "completed" if done else "in_progress",
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, *, done: bool = False) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed" if done else "in_progress",
        "content": [_output_text(text)] if done else [],
    }


def _function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, *, done: bool
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": "completed" if done else "in_progress",
        "call_id": call_id,
        "name": name,
        "arguments": arguments if done else "",
    }


@dataclass(frozen=True, slots=True)
class _Calls:
    """A reply's function calls with their ids: Responses item ids and call ids (chat
    uses the call ids; "" where the reply has none)."""

    reply: Reply
    item_ids: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, reply: Reply) -> _Calls:
        count = len(reply.tool_calls)
        calls = [_new_id("call_") if reply.call_ids else "" for _ in range(count)]
        return cls(reply, [_new_id("fc_") for _ in range(count)], calls)

    def items(self) -> list[dict[str, Any]]:
        return [
            _function_call_item(item_id, call_id, name, arguments, done=True)
            for item_id, call_id, (name, arguments) in zip(
                self.item_ids, self.call_ids, self.reply.tool_calls, strict=True
            )
        ]


def _argument_pieces(arguments: str) -> list[str]:
    """Split a call's arguments into stream deltas of a few characters."""
    return [arguments[at : at + 7] for at in range(0, len(arguments), 7)]


def _response_object(
    body: dict[str, Any],
    reply: Reply,
    response_id: str,
    output: list[dict[str, Any]],
    *,
    done: bool,
) -> dict[str, Any]:
    created = int(time.time())
    usage = None
    if done:
        input_tokens, output_tokens, reasoning_tokens = _tokens(body, reply)
        usage = (
            None
            if reply.no_usage
            else {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": reply.cached, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": input_tokens + output_tokens,
            }
        )
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "completed_at": created if done else None,
        "status": "completed" if done else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", DEFAULT_MODEL),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [t for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _says(reply: Reply) -> bool:
    """Does the reply hold a message item? (One that only calls functions has none.)"""
    return bool(reply.text) or not reply.tool_calls


def _final_output(
    reply: Reply, reasoning_id: str, message_id: str, calls: _Calls
) -> list[dict[str, Any]]:
    output = (
        []
        if reply.reasoning is None
        else [_reasoning_item(reasoning_id, reply.reasoning, done=True)]
    )
    if _says(reply):
        output.append(_message_item(message_id, reply.text, done=True))
    return [*output, *calls.items()]


def _response_body(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    output = _final_output(reply, _new_id("rs_"), _new_id("msg_"), _Calls.of(reply))
    return _response_object(body, reply, _new_id("resp_"), output, done=True)


def _response_events(body: dict[str, Any], reply: Reply) -> Iterator[str | None]:
    """The SSE events of a streamed response, as OpenAI orders them; None marks a stall."""
    response_id, reasoning_id, message_id = _new_id("resp_"), _new_id("rs_"), _new_id("msg_")
    sequence = iter(range(1 << 30))

    def event(event_type: str, **data: Any) -> str:
        return _sse(event_type, {"type": event_type, "sequence_number": next(sequence), **data})

    started = _response_object(body, reply, response_id, [], done=False)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    index = 0
    if (thought := reply.reasoning) is not None:
        at = {"output_index": index}
        part = {"item_id": reasoning_id, **at, "content_index": 0}
        empty, full = ({"type": "reasoning_text", "text": t} for t in ("", thought))
        yield event("response.output_item.added", **at, item=_reasoning_item(reasoning_id, ""))
        yield event("response.content_part.added", **part, part=empty)
        for piece in _pieces(thought):
            yield event("response.reasoning_text.delta", **part, delta=piece)
        yield event("response.reasoning_text.done", **part, text=thought)
        yield event("response.content_part.done", **part, part=full)
        done = _reasoning_item(reasoning_id, thought, done=True)
        yield event("response.output_item.done", **at, item=done)
        index += 1
    if _says(reply):
        at = {"output_index": index}
        part = {"item_id": message_id, **at, "content_index": 0}
        yield event("response.output_item.added", **at, item=_message_item(message_id, ""))
        yield event("response.content_part.added", **part, part=_output_text(""))
        for count, piece in enumerate(_pieces(reply.text)):
            if count == reply.stall_after:
                yield None
            if count == reply.hold_after:
                yield HOLD
            yield TextDelta(event("response.output_text.delta", **part, delta=piece, logprobs=[]))
        yield event("response.output_text.done", **part, text=reply.text, logprobs=[])
        yield event("response.content_part.done", **part, part=_output_text(reply.text))
        done = _message_item(message_id, reply.text, done=True)
        yield event("response.output_item.done", **at, item=done)
        index += 1
    calls = _Calls.of(reply)
    for item in calls.items():
        at = {"output_index": index}
        yield event("response.output_item.added", **at, item={**item, "status": "in_progress",
                                                              "arguments": ""})  # fmt: skip
        if reply.args_in == "deltas":
            part = {"item_id": item["id"], **at}
            for piece in _argument_pieces(item["arguments"]):
                yield event("response.function_call_arguments.delta", **part, delta=piece)
            yield event(
                "response.function_call_arguments.done", **part, arguments=item["arguments"]
            )
        yield event("response.output_item.done", **at, item=item)
        index += 1
    output = _final_output(reply, reasoning_id, message_id, calls)
    completed = _response_object(
        body, reply, response_id, output if reply.completed_output else [], done=True
    )
    yield event("response.completed", response=completed)


# -- Chat Completions --------------------------------------------------------------------------


def _chat_content(reply: Reply) -> str:
    if reply.reasoning is None or not reply.think_in_content:
        return reply.text
    return f"<think>{reply.reasoning}</think>{reply.text}"


def _chat_usage(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt_tokens, completion_tokens, reasoning_tokens = _tokens(body, reply)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def _chat_tool_calls(calls: _Calls) -> list[dict[str, Any]]:
    return [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, (name, arguments) in zip(calls.call_ids, calls.reply.tool_calls, strict=True)
    ]


def _chat_body(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    content = _chat_content(reply) or (None if reply.tool_calls else "")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = _chat_tool_calls(_Calls.of(reply))
    finish_reason = "tool_calls" if reply.tool_calls else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "choices": [choice],
        "usage": _chat_usage(body, reply),
        "system_fingerprint": body.get("model", DEFAULT_MODEL),
    }


def _chat_events(body: dict[str, Any], reply: Reply) -> Iterator[str | None]:
    """The SSE chunks of a streamed chat completion, ending `data: [DONE]`; None marks a stall."""
    base = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "system_fingerprint": body.get("model", DEFAULT_MODEL),
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse(None, {**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(reply.reasoning or ""):
        yield chunk({"reasoning_content": piece})
    content = _chat_content(reply)
    thought = len(content) - len(reply.text)  # the leading <think>…</think>, if any
    written = 0
    for count, piece in enumerate(_pieces(content)):
        if count == reply.stall_after:
            yield None
        if count == reply.hold_after:
            yield HOLD
        written += len(piece)
        event = chunk({"content": piece})
        yield TextDelta(event) if written > thought else event
    for index, call in enumerate(_chat_tool_calls(_Calls.of(reply))):
        function = call["function"]
        if not call["id"]:
            del call["id"]
        if reply.args_in == "done_only":
            yield chunk({"tool_calls": [{"index": index, **call}]})
            continue
        first = {**call, "function": {**function, "arguments": ""}}
        yield chunk({"tool_calls": [{"index": index, **first}]})
        for piece in _argument_pieces(function["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if (body.get("stream_options") or {}).get("include_usage") and not reply.no_usage:
        yield _sse(None, {**base, "choices": [], "usage": _chat_usage(body, reply)})
    yield "data: [DONE]\n\n"


__all__ = [
    "DEFAULT_MODEL",
    "LLAMACPP_ITEM_MESSAGE",
    "FakeOpenAI",
    "Recorded",
    "Reply",
    "Streamed",
    "TextDelta",
    "closed_port",
    "context_overflow",
    "echo",
    "error_reply",
    "input_problem",
    "llamacpp_refusal",
    "model_not_loaded",
    "rate_limited",
    "server_error",
    "transcript_refusal",
    "unauthorized",
    "unknown_model",
]

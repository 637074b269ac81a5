"""OpenAI-compatible providers: the only module that imports the openai SDK.

One `AsyncOpenAI` per provider with the SDK's own retries off (failover owns retrying), on
the SDK's aiohttp transport (`DefaultAioHttpClient`, cheaper per call than httpx). Calls
stream, so a server that is producing tokens is never cut off while a silent one times out.
Requests go through `client.post` with a plain JSON body and events come back as plain dicts:
the SDK still sends, authenticates, times out, decodes the server-sent events and raises its
errors, but skips its typed request transform and event models, whose cost grows with the
history (about 7 ms a call at 30 turns, against under 1 ms this way); bot.llm.streams reads
the events. Offered functions and a turn's tool steps go in each API's own shapes (Responses
`function_call`/`function_call_output` items, chat `tool_calls` and `role: "tool"` messages);
steps without tools offered go as one text item, since servers may refuse call items then.
Two clocks watch a call: until the model starts answering (its first token), a deadline the
caller gives (failover keeps a silent model from eating the turn); after that, only the
provider's `timeoutSeconds` of silence between events, so a slow but live answer is never cut.
Vendor errors become ModelUnavailable (ModelRefused for a 400 that is not an overflow) or
ContextOverflow here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import httpx2  # the openai SDK's HTTP client
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient

from bot.config import ProviderConfig, key_variable
from bot.errors import AnswerNotStarted, ContextOverflow, ModelRefused, ModelUnavailable, Severity
from bot.llm.streams import ChatStream, ResponsesStream
from bot.llm.types import Completion, CompletionRequest, StreamFeed, ToolSpec, ToolStep
from bot.messages import Attachment, Turn

FALLBACK_STATUSES = {401, 402, 403, 404, 408, 409, 429}
OVERFLOW_MARKERS = (
    "context_length_exceeded",
    "greater than the context length",
    "context length",
    "when context the overflows",  # LM Studio before 0.3.16: "Trying to keep the first N tokens…"
)
UNLOADED_MARKERS = ("model not found", "not loaded", "no models loaded", "model_not_found")
# Responses events a server sends before the model produces anything (queued, prompt processing).
WAITING_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
PROBE_REQUEST = CompletionRequest(
    model="",
    instructions="Answer with one word.",
    turns=(Turn(role="user", text="ping", ts=0),),
    max_output_tokens=16,  # the Responses API's minimum
)


def _error_text(exc: openai.APIStatusError) -> str:
    """The server's error code and message. A code that only repeats the HTTP status (llama.cpp
    sends `"code": 400`) is left out, so the status appears once in the error."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = str(inner.get("code") or "")
            code = "" if code == str(exc.status_code) else code
            return f"{code} {inner.get('message') or ''}".strip()
        return str(inner)
    return str(body or exc.message)


def data_url(image: Attachment) -> str:
    """A picture as a `data:` URL, the form both APIs take inline."""
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _responses_item(turn: Turn) -> dict[str, Any]:
    """A turn as a Responses input item in the explicit form every server takes: `"type":
    "message"` and typed content parts (output_text for the assistant's turns, input_text for
    the rest). llama.cpp refuses the short `{"role", "content"}` form for assistant turns."""
    part = "output_text" if turn.role == "assistant" else "input_text"
    return {
        "type": "message",
        "role": turn.role,
        "content": [{"type": part, "text": turn.text}],
    }


def _with_images(
    turn: dict[str, Any], images: Sequence[Attachment], *, responses: bool
) -> dict[str, Any]:
    """A turn followed by the pictures, in the API's part shapes (Responses: the explicit item
    gets `input_image` parts; chat: its text becomes a `text` part before `image_url` parts)."""
    if responses:
        parts = [{"type": "input_image", "image_url": data_url(i)} for i in images]
        return {**turn, "content": [*turn["content"], *parts]}
    chat: list[dict[str, Any]] = [{"type": "text", "text": turn["content"]}]
    chat += [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {"role": turn["role"], "content": chat}


def _function(tool: ToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.parameters),
    }


def _responses_steps(steps: Sequence[ToolStep]) -> list[dict[str, Any]]:
    """Tool steps as Responses input items: each step's `function_call` items, then their
    `function_call_output` items."""
    items: list[dict[str, Any]] = []
    for step in steps:
        items += [
            {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
            for c in step.calls
        ]
        items += [
            {"type": "function_call_output", "call_id": c.id, "output": output}
            for c, output in zip(step.calls, step.outputs, strict=True)
        ]
    return items


def _chat_steps(steps: Sequence[ToolStep]) -> list[dict[str, Any]]:
    """Tool steps as chat messages: an assistant message with the step's `tool_calls`, then
    one `role: "tool"` message per call."""
    messages: list[dict[str, Any]] = []
    for step in steps:
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in step.calls
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages += [
            {"role": "tool", "tool_call_id": c.id, "content": output}
            for c, output in zip(step.calls, step.outputs, strict=True)
        ]
    return messages


def _steps_as_text(steps: Sequence[ToolStep]) -> str:
    """Tool steps as plain text, for a request that offers no tools (a server may refuse
    function-call items then): one line per call, `name(arguments) → output`."""
    lines = [
        f"- {call.name}({call.arguments}) → {output}"
        for step in steps
        for call, output in zip(step.calls, step.outputs, strict=True)
    ]
    return "\n".join(["[Tool results so far]", *lines])


def _refused(exc: BaseException) -> bool:
    """Did the connection fail outright? (The aiohttp transport reports that as a timeout.)"""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError | httpx2.ConnectError):
            return True
        cause = cause.__cause__
    return False


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def translate(exc: openai.OpenAIError, where: str) -> Exception:
    """Map an SDK error to the gateway's tree; the message names the provider, never a key."""
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return ModelUnavailable(f"{where}: timed out", severity=Severity.DOWN)
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(
            f"{where}: cannot connect ({_root_cause(exc)})", severity=Severity.DOWN
        )
    if isinstance(exc, openai.APIStatusError):
        status, detail = exc.status_code, _error_text(exc)
        lowered = detail.lower()
        if status in (400, 413, 422) and any(m in lowered for m in OVERFLOW_MARKERS):
            return ContextOverflow(f"{where}: prompt too long for the context window ({detail})")
        if status >= 500 or status in FALLBACK_STATUSES:
            return ModelUnavailable(f"{where}: HTTP {status} {detail}".rstrip())
        if any(m in lowered for m in UNLOADED_MARKERS):
            return ModelUnavailable(f"{where}: model not loaded ({detail})")
        # Any other 4xx: this server refused this request; another server may take it.
        return ModelRefused(f"{where}: refused the request: HTTP {status} {detail}".rstrip())
    return ModelUnavailable(f"{where}: {type(exc).__name__}")


def openai_client(config: ProviderConfig) -> AsyncOpenAI:
    """The SDK client for one provider: its URL, key and timeouts, the SDK's own retries off
    (failover owns retrying), on the SDK's aiohttp transport."""
    return AsyncOpenAI(
        base_url=config.base_url,
        api_key=config.api_key or "unset",
        max_retries=0,
        timeout=openai.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        http_client=DefaultAioHttpClient(),
    )


class OpenAIProvider:
    """A provider reached through the openai SDK, over Responses or Chat Completions."""

    def __init__(self, provider_id: str, config: ProviderConfig) -> None:
        self.id = provider_id
        self.api = config.api
        self.first_token_seconds = config.first_token_seconds
        self.timeout_seconds = config.timeout_seconds
        self._extra = {"ttl": config.ttl_seconds} if config.ttl_seconds else {}
        self._key = config.api_key
        self.client = openai_client(config)

    @property
    def missing_key(self) -> str | None:
        if self._key:
            return None
        return key_variable(self.id)

    async def complete(
        self,
        request: CompletionRequest,
        *,
        first_token_seconds: float | None = None,
        preview: StreamFeed | None = None,
    ) -> Completion:
        """The final text of a streamed answer, or the functions it calls. `first_token_seconds`:
        how long the model may stay silent before it starts answering (None: only the
        provider's own timeout). `preview`: told the answer's text (never reasoning items nor
        calls) after each delta; once the model calls a function, only that it works."""
        where = f"{self.id}/{request.model}"
        stream = ResponsesStream(preview) if self.api == "openai-responses" else ChatStream(preview)
        waiting = True
        async with (
            self._translated(where, first_token_seconds) as started,
            contextlib.aclosing(self._events(*self._request(request))) as events,
        ):
            async for event in events:
                if waiting and self._generating(event):
                    waiting = False
                    started()
                await stream.take(event)
                if event.get("type") in ("response.failed", "error"):
                    raise ModelUnavailable(f"{where}: the response failed")
        text, calls = await stream.answer(request)
        if not text and not calls:
            raise ModelUnavailable(f"{where}: answered with no final text", severity=Severity.EMPTY)
        return Completion(text=text, model_ref=where, usage=stream.usage, tool_calls=calls)

    async def probe(self, model: str, *, seconds: float) -> None:
        """Is the model answering? A one-word request, done as soon as its first token comes
        (an LM Studio model that is not loaded gets loaded by it). Raises like `complete`."""
        request = CompletionRequest(
            model=model,
            instructions=PROBE_REQUEST.instructions,
            turns=PROBE_REQUEST.turns,
            max_output_tokens=PROBE_REQUEST.max_output_tokens,
        )
        path, body = self._request(request)
        async with (
            self._translated(f"{self.id}/{model}", seconds) as started,
            contextlib.aclosing(self._events(path, body)) as events,
        ):
            async for event in events:
                if self._generating(event):
                    started()
                    return

    @contextlib.asynccontextmanager
    async def _translated(
        self, where: str, first_token_seconds: float | None
    ) -> AsyncIterator[Callable[[], None]]:
        """Run a call with the first-token deadline, translating what goes wrong. Yields the
        function to call once the model has started answering (it lifts the deadline)."""
        deadline = asyncio.timeout(first_token_seconds)
        try:
            async with deadline:
                yield lambda: deadline.reschedule(None)
        except TimeoutError as exc:
            if not deadline.expired():
                raise ModelUnavailable(f"{where}: timed out", severity=Severity.DOWN) from exc
            assert first_token_seconds is not None
            raise AnswerNotStarted(
                f"{where}: did not start answering within {first_token_seconds:.3g} s",
                waited=first_token_seconds,
            ) from exc
        except openai.OpenAIError as exc:
            raise translate(exc, where) from exc

    def _generating(self, event: dict[str, Any]) -> bool:
        """Does this event show the model producing output (not just queued or reading)?"""
        if self.api == "openai-responses":
            return event.get("type") not in WAITING_EVENTS
        return bool(event.get("choices")) or isinstance(event.get("usage"), dict)

    def _request(self, request: CompletionRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of a streamed call in this provider's API (Responses input in
        the explicit item form). Pictures go with the last turn as image parts (Responses
        `input_image`, chat `image_url`), as data URLs. The turn's tool steps follow the turns;
        `tools` and `tool_choice` are sent only when functions are offered."""
        responses = self.api == "openai-responses"
        turns: list[dict[str, Any]] = [
            _responses_item(t) if responses else {"role": t.role, "content": t.text}
            for t in request.turns
        ]
        if request.images and turns:
            turns[-1] = _with_images(turns[-1], request.images, responses=responses)
        if request.steps and not request.tools:
            note = Turn(role="user", text=_steps_as_text(request.steps), ts=0)
            turns.append(
                _responses_item(note) if responses else {"role": "user", "content": note.text}
            )
        elif request.steps:
            turns += _responses_steps(request.steps) if responses else _chat_steps(request.steps)
        tools: dict[str, Any] = {}
        if request.tools:
            offered = [
                {"type": "function", **_function(t)} if responses
                else {"type": "function", "function": _function(t)}
                for t in request.tools
            ]  # fmt: skip
            tools = {"tools": offered, "tool_choice": request.tool_choice}
        if responses:
            return "/responses", {
                "model": request.model,
                "instructions": request.instructions,
                "input": turns,
                "max_output_tokens": request.max_output_tokens,
                **tools,
                **self._extra,
            }
        messages: list[Any] = [{"role": "system", "content": request.instructions}, *turns]
        return "/chat/completions", {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_output_tokens,
            "stream_options": {"include_usage": True},  # the last chunk carries the usage
            **tools,
            **self._extra,
        }

    async def _events(
        self, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The server-sent events of a streamed call to `path`, as plain dicts."""
        stream = await self.client.post(
            path,
            cast_to=object,
            body={**body, "stream": True},
            stream=True,
            stream_cls=AsyncStream[object],
        )
        async with stream:
            try:
                async for event in stream:
                    if isinstance(event, dict):
                        yield event
            except httpx2.TimeoutException as exc:  # mid-stream: the SDK no longer maps it
                raise openai.APITimeoutError(request=exc.request) from exc
            except httpx2.TransportError as exc:
                raise openai.APIConnectionError(request=exc.request) from exc
            except ValueError as exc:
                raise ModelUnavailable(f"{self.id}: the stream was not JSON events") from exc

    async def close(self) -> None:
        await self.client.close()

"""The values the model layer speaks and the Provider contract every backend meets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bot.config import split_ref
from bot.messages import Attachment, Turn


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model named as `provider/model`; the model id may itself contain slashes."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        provider, model = split_ref(text.strip())
        if not provider or not model:
            raise ValueError(f"{text!r} is not a model ref; write it as provider/model")
        return cls(provider, model)

    @classmethod
    def try_parse(cls, text: str) -> ModelRef | None:
        """The ref `text` names, or None when it is not `provider/model` (`openrouter/`, `/x`)."""
        try:
            return cls.parse(text)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens the server reported for one call; `estimated` when it reported none (then the
    counts are 0 until bot.usage estimates them from the text)."""

    tokens_in: int = 0  # every input token, cached ones included
    tokens_out: int = 0
    cached_in: int = 0  # input tokens read from the server's prompt cache
    cache_write: int = 0  # input tokens written to it (where the server says)
    estimated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """A function offered to a model: its name (`^[a-zA-Z0-9_-]{1,64}$`, e.g.
    `orders__lookup_order`), what it does, and its arguments' JSON Schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A model's call of one offered function: `id` pairs it with its output; `arguments`
    is the JSON text the model wrote (perhaps not valid JSON: the tool layer says so)."""

    id: str
    name: str
    arguments: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        return cls(id=str(data["id"]), name=str(data["name"]), arguments=str(data["arguments"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStep:
    """One model step that called functions, and what each call gave back (`outputs[i]`
    answers `calls[i]`, as the model is shown it): the transcript of a tool loop."""

    calls: tuple[ToolCall, ...]
    outputs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"calls": [c.to_dict() for c in self.calls], "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolStep:
        calls = tuple(ToolCall.from_dict(c) for c in data["calls"])
        return cls(calls=calls, outputs=tuple(str(o) for o in data["outputs"]))


# "auto": the model may call the offered tools; "none": it must answer in text (the loop's
# last step), though the transcript's earlier calls are still shown in the API's own shape.
ToolChoice = Literal["auto", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """One model call: instructions, the conversation so far (ending with the user's turn),
    then the turn's tool steps so far; `tools`: the functions it may call."""

    model: str
    instructions: str
    turns: Sequence[Turn]
    max_output_tokens: int
    images: Sequence[Attachment] = ()  # pictures that go with the last (user) turn
    tools: Sequence[ToolSpec] = ()
    steps: Sequence[ToolStep] = ()
    tool_choice: ToolChoice = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    """What a voice note said, how long it was where the server says (else None), and the
    tokens it reported (gpt-4o-transcribe does; whisper-1 reports a duration: `estimated`)."""

    text: str
    seconds: float | None = None
    usage: Usage = Usage(estimated=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A model's answer: the final text only, never its reasoning; or, when it called
    functions (`tool_calls`), those calls (its text then is not an answer)."""

    text: str
    model_ref: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


class Preview(Protocol):
    """Where a turn's answer is shown while it is written (a Telegram draft, the terminal):
    final text only, never reasoning or tool calls. Best-effort and quick: it should keep the
    latest text and show it on its own schedule (`text` is called every few deltas and must
    return at once, never waiting on I/O). The worker wraps a channel's sink so that its
    errors never reach the model layer."""

    async def text(self, so_far: str) -> None:
        """The final text so far, whole (each call extends the previous one unless a reset
        came between)."""
        ...

    async def thinking(self) -> None:
        """The model is working (reasoning) and there is no final text to show yet."""
        ...

    async def reset(self) -> None:
        """What was shown is void (the model died mid-answer; another one answers next)."""
        ...


class StreamFeed(Protocol):
    """What a provider tells of its stream while it runs (bot.llm.preview.StreamPreview
    turns it into the final text a Preview may show)."""

    async def update(self, raw: str) -> None:
        """The answer's text so far, raw (reasoning markup and all, never reasoning items)."""
        ...

    async def reasoning(self) -> None:
        """The model is reasoning (a reasoning event, which is never shown)."""
        ...


class Provider(Protocol):
    """One OpenAI-compatible endpoint that can answer completion requests."""

    id: str
    first_token_seconds: float  # how long to wait for the answer to start while others could answer
    timeout_seconds: float  # silence allowed between streamed events once it has started

    @property
    def missing_key(self) -> str | None:
        """The environment variable to set before this provider can be used, if any."""
        ...

    async def complete(
        self,
        request: CompletionRequest,
        *,
        first_token_seconds: float | None = None,
        preview: StreamFeed | None = None,
    ) -> Completion:
        """Answer, or raise ModelUnavailable (try another; ModelRefused when the server refused
        the request) or ContextOverflow. ModelUnavailable too when the answer has not started
        within `first_token_seconds`. `preview`: told the raw text as it streams."""
        ...

    async def probe(self, model: str, *, seconds: float) -> None:
        """Return once the model starts answering a tiny request; raise like `complete`."""
        ...

    async def close(self) -> None:
        """Release the provider's connections."""
        ...

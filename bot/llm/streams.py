"""Streamed answers, read: the text, function calls and usage of a Responses or Chat Completions
stream (its events as plain dicts), and what a preview is told while it runs: the message
text only; once the model calls a function, what it showed is void and the step reads as work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from bot.llm.reasoning import responses_message_text, strip_reasoning_markup, written_tool_calls
from bot.llm.types import CompletionRequest, StreamFeed, ToolCall, Usage

__all__ = ["ChatStream", "ResponsesStream", "usage_of"]


def usage_of(reported: dict[str, Any], tokens_in: str, tokens_out: str, details: str) -> Usage:
    """A server's `usage` object (Responses or chat names), cached input tokens included."""
    cached = reported.get(details)
    cached = cached if isinstance(cached, dict) else {}
    return Usage(
        tokens_in=int(reported.get(tokens_in) or 0),
        tokens_out=int(reported.get(tokens_out) or 0),
        cached_in=int(cached.get("cached_tokens") or 0),
        cache_write=int(cached.get("cache_write_tokens") or 0),
    )


@dataclass(slots=True)
class _Call:
    """One function call as its parts arrive. Its arguments come from the most complete
    source a server sent: the finished item (output_item.done, else response.completed),
    then function_call_arguments.done, then the deltas joined (LM Studio sends them only in
    the finished item, with empty arguments before)."""

    index: int  # Responses output_index, chat tool_calls index
    item_id: str = ""
    call_id: str = ""
    name: str = ""
    deltas: list[str] = field(default_factory=list)
    arguments_done: str = ""
    item_done: str = ""
    completed: str = ""

    def note(self, item: dict[str, Any]) -> None:
        """Take the ids and name of a Responses `function_call` item, where it has them."""
        self.item_id = self.item_id or str(item.get("id") or "")
        self.call_id = self.call_id or str(item.get("call_id") or "")
        self.name = self.name or str(item.get("name") or "")

    @property
    def arguments(self) -> str:
        return self.item_done or self.completed or self.arguments_done or "".join(self.deltas)


class _Feed:
    """A preview's view of one stream: text while it is an answer; once a call shows, the
    text shown is void (an empty update resets it) and the preview only hears "working"."""

    def __init__(self, preview: StreamFeed | None) -> None:
        self.preview = preview
        self.calling = False

    async def text(self, raw: str) -> None:
        if self.preview is not None and not self.calling:
            await self.preview.update(raw)

    async def reasoning(self) -> None:
        if self.preview is not None and not self.calling:
            await self.preview.reasoning()

    async def call(self) -> None:
        if self.preview is not None and not self.calling:
            await self.preview.update("")  # what it showed of this step is not an answer
            await self.preview.reasoning()
        self.calling = True


class _Stream(ABC):
    """What both APIs' readers keep: the calls so far, the usage, the preview's feed."""

    def __init__(self, preview: StreamFeed | None) -> None:
        self.feed = _Feed(preview)
        self.calls: list[_Call] = []
        self.usage = Usage(estimated=True)

    @abstractmethod
    def raw_text(self) -> str:
        """The answer's text, markup and all."""

    async def answer(self, request: CompletionRequest) -> tuple[str, tuple[ToolCall, ...]]:
        """The final text and the calls, named: a call the server gave no id gets `call_<n>`
        (n counts the turn's calls, so ids stay unique and the same on a retry). With no call
        items, calls the model wrote as text (`reasoning.written_tool_calls`) of offered
        functions, while it may call them, become calls `text_call_<n>`."""
        raw = self.raw_text()
        before = sum(len(step.calls) for step in request.steps)
        named = [c for c in self.calls if c.name]
        calls = tuple(
            ToolCall(id=c.call_id or f"call_{before + n}", name=c.name, arguments=c.arguments)
            for n, c in enumerate(named, 1)
        )
        if not calls and request.tools and request.tool_choice == "auto":
            calls = _written(raw, {tool.name for tool in request.tools}, before)
            if calls:
                await self.feed.call()
        return strip_reasoning_markup(raw), calls


def _written(raw: str, offered: Collection[str], before: int) -> tuple[ToolCall, ...]:
    found = [(name, args) for name, args in written_tool_calls(raw) if name in offered]
    return tuple(
        ToolCall(id=f"text_call_{before + n}", name=name, arguments=args)
        for n, (name, args) in enumerate(found, 1)
    )


class ResponsesStream(_Stream):
    """A Responses stream: message text from output_text deltas (or the completed response's
    message items), function calls from `function_call` items and their argument events."""

    def __init__(self, preview: StreamFeed | None) -> None:
        super().__init__(preview)
        self.text = _ResponsesText()
        self.final: dict[str, Any] | None = None

    async def take(self, event: dict[str, Any]) -> None:
        """Note one event (a failure event is the caller's to raise)."""
        kind = event.get("type")
        if self.text.take(event):
            await (self.feed.text(self.text.raw()) if self.text.grew else self.feed.reasoning())
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                call = self._call(event, item)
                call.note(item)
                if kind == "response.output_item.done":
                    call.item_done = str(item.get("arguments") or "")
                await self.feed.call()
        elif kind == "response.function_call_arguments.delta":
            self._call(event).deltas.append(str(event.get("delta") or ""))
            await self.feed.call()
        elif kind == "response.function_call_arguments.done":
            call = self._call(event)
            call.name = call.name or str(event.get("name") or "")
            call.arguments_done = str(event.get("arguments") or "")
            await self.feed.call()
        elif kind in ("response.completed", "response.incomplete"):
            self.final = event.get("response") or {}
            self._completed(self.final.get("output") or [])
            if isinstance(usage := self.final.get("usage"), dict):
                self.usage = usage_of(
                    usage, "input_tokens", "output_tokens", "input_tokens_details"
                )

    def raw_text(self) -> str:
        """The completed response's message text; the streamed deltas' when it never
        completed or lists no message (some servers complete with an empty output)."""
        output = (self.final or {}).get("output") or []
        if any(isinstance(i, dict) and i.get("type") == "message" for i in output):
            return responses_message_text(output)
        return self.text.raw()

    def _call(self, event: dict[str, Any], item: dict[str, Any] | None = None) -> _Call:
        """The call an event is about: the one with its item id, else the one at its output
        index (that has no other id); a new one if none."""
        item_id = str(event.get("item_id") or (item or {}).get("id") or "")
        index = int(event.get("output_index") or 0)
        call = next((c for c in self.calls if item_id and c.item_id == item_id), None) or next(
            (c for c in self.calls if c.index == index and not (item_id and c.item_id)), None
        )
        if call is None:
            self.calls.append(call := _Call(index=index, item_id=item_id))
        return call

    def _completed(self, output: list[Any]) -> None:
        """Take the completed response's function_call items: the calls the stream showed,
        matched by call id, item id or place, and any it did not."""
        for index, item in enumerate(output):
            if not isinstance(item, dict) or item.get("type") != "function_call":
                continue
            call_id, item_id = str(item.get("call_id") or ""), str(item.get("id") or "")
            call = next(
                (
                    c
                    for c in self.calls
                    if (call_id and c.call_id == call_id) or (item_id and c.item_id == item_id)
                ),
                None,
            ) or next((c for c in self.calls if c.index == index), None)
            if call is None:
                self.calls.append(call := _Call(index=index))
            call.note(item)
            call.completed = str(item.get("arguments") or "")
        self.calls.sort(key=lambda c: c.index)


class ChatStream(_Stream):
    """A Chat Completions stream: content deltas, `delta.tool_calls` fragments by index (the
    id and name in the first, the arguments in pieces), the usage chunk. `reasoning_content`
    and `reasoning` deltas are never read, only noted to the preview."""

    def __init__(self, preview: StreamFeed | None) -> None:
        super().__init__(preview)
        self.so_far = ""  # grown in place: a join of every part at each delta is quadratic

    async def take(self, chunk: dict[str, Any]) -> None:
        """Note one chunk."""
        if isinstance(reported := chunk.get("usage"), dict):
            self.usage = usage_of(
                reported, "prompt_tokens", "completion_tokens", "prompt_tokens_details"
            )
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self.so_far += str(content)
                await self.feed.text(self.so_far)
            elif delta.get("reasoning_content") or delta.get("reasoning"):
                await self.feed.reasoning()  # only that it reasons, never what
            for fragment in delta.get("tool_calls") or []:
                if isinstance(fragment, dict):
                    self._fragment(fragment)
                    await self.feed.call()

    def raw_text(self) -> str:
        return self.so_far

    def _fragment(self, fragment: dict[str, Any]) -> None:
        """Add one `tool_calls` fragment to its call (a server that sends no index: a new id
        starts a new call, else it continues the last)."""
        call_id = str(fragment.get("id") or "")
        index = fragment.get("index")
        if not isinstance(index, int):
            continues = self.calls and (not call_id or call_id == self.calls[-1].call_id)
            index = self.calls[-1].index if continues else len(self.calls)
        call = next((c for c in self.calls if c.index == index), None)
        if call is None:
            self.calls.append(call := _Call(index=index))
            self.calls.sort(key=lambda c: c.index)
        function = fragment.get("function") or {}
        call.call_id = call.call_id or call_id
        call.name = call.name or str(function.get("name") or "")
        if arguments := function.get("arguments"):
            call.deltas.append(str(arguments))


class _ResponsesText:
    """A Responses stream's answer text so far, as `responses_final_text` will join it: the
    output_text of each message item, in output order, commentary (`phase`) left out."""

    def __init__(self) -> None:
        self.items: dict[int, str] = {}  # grown in place (a join at each delta is quadratic)
        self.commentary: set[int] = set()
        self.grew = False

    def take(self, event: dict[str, Any]) -> bool:
        """Note one event; True when it matters to a preview (`grew`: the text grew, else
        the model started reasoning)."""
        kind = event.get("type")
        index = int(event.get("output_index") or 0)
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("phase") == "commentary":
                self.commentary.add(index)
            self.grew = False
            return item.get("type") == "reasoning"
        if kind == "response.output_text.delta" and index not in self.commentary:
            self.items[index] = self.items.get(index, "") + str(event.get("delta") or "")
            self.grew = True
            return True
        return False

    def raw(self) -> str:
        if len(self.items) == 1:
            return next(iter(self.items.values()))
        return "\n\n".join(text for _, text in sorted(self.items.items()) if text)

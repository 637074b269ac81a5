"""Final-text extraction: what a person may see of a model's answer, never its reasoning nor
a function call it wrote as text (which `written_tool_calls` reads instead).

Pure functions over plain dicts and strings (Responses output items, chat-completions messages).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "responses_final_text",
    "responses_message_text",
    "strip_reasoning_markup",
    "visible_prefix",
    "written_tool_calls",
]

# Tags that local servers and reasoning models use to wrap chain of thought in plain text:
# <think> (DeepSeek-R1, Qwen3, MiniMax-M2, GLM), <thinking>/<thought> (fine-tunes, Gemma-style
# prompts), <reasoning> (some chat templates), <seed:think> (ByteDance Seed-OSS).
_REASONING_TAG = re.compile(
    r"<(/?)\s*(think|thinking|thought|reasoning|seed:think)\b[^>]*>",
    re.IGNORECASE,
)
_FINAL_TAG = re.compile(r"</?\s*final\b[^>]*>", re.IGNORECASE)
# A function call written as text (Hermes, Qwen, many fine-tunes): <tool_call>{JSON}</tool_call>;
# one that is not closed runs to the end (the answer was cut off while it was being written).
_TOOL_CALL_BLOCK = re.compile(
    r"<\s*tool_call\s*>(?P<body>.*?)(?:<\s*/\s*tool_call\s*>|\Z)", re.DOTALL | re.IGNORECASE
)
_TOOL_CALL_TAG = re.compile(r"<\s*/\s*tool_call\s*>", re.IGNORECASE)

# gpt-oss "harmony" format: <|channel|>NAME[ to=…][<|constrain|>…]<|message|>BODY<|end|>
_HARMONY_MARKER = "<|channel|>"
_HARMONY_SEGMENT = re.compile(
    r"<\|channel\|>(?P<header>.*?)<\|message\|>(?P<body>.*?)"
    r"(?=<\|(?:end|return|call|start|channel)\|>|\Z)",
    re.DOTALL,
)
# Harmony leaked with its special tokens removed: "analysis…assistantfinalHello".
_HARMONY_FLATTENED = re.compile(r"\A\s*analysis.*assistantfinal(?P<final>.*)\Z", re.DOTALL)
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{1,64}\|>")
# A harmony function call: `to=functions.NAME` in a message's header, its arguments the body.
_HARMONY_CALL = re.compile(
    r"to=functions\.(?P<name>[A-Za-z0-9_-]{1,64})"
    r"(?:(?!<\|(?:message|end|call|return|start)\|>).){0,200}<\|message\|>"
    r"(?P<body>.*?)(?=<\|(?:end|return|call|start|channel)\|>|\Z)",
    re.DOTALL,
)
# The end of a stream that may still become a tag: a `<` with no `>` after it, not far back.
_PARTIAL_TAG = re.compile(r"<[^<>]{0,64}\Z")
_FLATTENED_HEAD = "analysis"


def strip_reasoning_markup(text: str) -> str:
    """Return only the final answer in `text`: reasoning blocks and special tokens removed.

    Returns "" when nothing final remains; reasoning is never a fallback.
    """
    if not text:
        return ""
    text = _final_harmony_channel(text)
    text = _drop_reasoning_blocks(text)
    text = _TOOL_CALL_TAG.sub("", _TOOL_CALL_BLOCK.sub("", text))
    text = _FINAL_TAG.sub("", text)
    text = _SPECIAL_TOKEN.sub("", text)
    return text.strip()


def visible_prefix(text: str) -> str:
    """The final text that the first part of an answer, `text`, already shows: what
    `strip_reasoning_markup` keeps of it, holding back whatever may still turn out to be
    reasoning or markup (an unclosed `<think>` or `<tool_call>` block, a tag still being
    written, gpt-oss output before its final channel). For an answer whose reasoning blocks
    open before they close, it is a prefix of the whole answer's final text.
    """
    if (partial := _PARTIAL_TAG.search(text)) is not None:
        text = text[: partial.start()]
    if _HARMONY_MARKER not in text:
        head = text.lstrip()[: len(_FLATTENED_HEAD)]
        if head.startswith("<|") or (  # a special token: harmony's header may follow
            _FLATTENED_HEAD.startswith(head) and "assistantfinal" not in text
        ):
            return ""
    return strip_reasoning_markup(text)


def written_tool_calls(text: str) -> list[tuple[str, str]]:
    """The function calls a model wrote into its answer's text instead of the API's call
    items, as (name, arguments as JSON text): `<tool_call>{"name": …, "arguments": {…}}
    </tool_call>` blocks outside reasoning (`"parameters"` for `"arguments"`, or a list of
    such objects, are taken too), and gpt-oss `to=functions.NAME …<|message|>{…}` messages.
    Blocks that hold no such JSON are left out (`strip_reasoning_markup` drops them all)."""
    calls = [
        (match.group("name"), arguments)
        for match in _HARMONY_CALL.finditer(text)
        if (arguments := _json_arguments(match.group("body"))) is not None
    ]
    if "tool_call" not in text.lower():
        return calls
    for match in _TOOL_CALL_BLOCK.finditer(_drop_reasoning_blocks(_final_harmony_channel(text))):
        try:
            written = json.loads(match.group("body"))
        except ValueError:
            continue
        for call in written if isinstance(written, list) else [written]:
            if not isinstance(call, dict) or not isinstance(name := call.get("name"), str):
                continue
            arguments = _json_arguments(call.get("arguments", call.get("parameters", {})))
            if arguments is not None:
                calls.append((name, arguments))
    return calls


def _json_arguments(value: Any) -> str | None:
    """A call's arguments as compact JSON object text (from an object, or from text holding
    one); None when they are no JSON object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def responses_final_text(output: list[dict[str, Any]]) -> str:
    """Return the final text of a Responses API `output` list, ignoring `reasoning` items."""
    return strip_reasoning_markup(responses_message_text(output))


def responses_message_text(output: list[dict[str, Any]]) -> str:
    """The raw text (markup and all) of a Responses API `output` list's assistant messages,
    ignoring `reasoning` and function-call items.

    Messages labelled `phase: "commentary"` are skipped when a `final_answer` message exists.
    """
    messages = [
        item
        for item in output
        if item.get("type") == "message" and item.get("role", "assistant") == "assistant"
    ]
    if any(item.get("phase") == "final_answer" for item in messages):
        messages = [item for item in messages if item.get("phase") == "final_answer"]
    texts = ["".join(_output_texts(item.get("content"))) for item in messages]
    return "\n\n".join(text for text in texts if text)


def _output_texts(content: Any) -> list[str]:
    """Return the `output_text` strings of one message item's content list."""
    if not isinstance(content, list):
        return []
    return [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "output_text"
        and isinstance(part.get("text"), str)
    ]


def _final_harmony_channel(text: str) -> str:
    """Keep only gpt-oss `final` channel messages; other channels are reasoning or tool calls."""
    if _HARMONY_MARKER in text:
        finals = [
            match.group("body")
            for match in _HARMONY_SEGMENT.finditer(text)
            if _channel_name(match.group("header")) == "final"
        ]
        return "".join(finals)
    flattened = _HARMONY_FLATTENED.match(text)
    if flattened is not None:
        return flattened.group("final")
    return text


def _channel_name(header: str) -> str:
    """Return the channel name of a harmony header such as `final` or `commentary to=fn`."""
    name = _SPECIAL_TOKEN.split(header, maxsplit=1)[0].split()
    return name[0].lower() if name else ""


def _drop_reasoning_blocks(text: str) -> str:
    """Remove `<think>`-style blocks, nested or unclosed, and text before a stray closing tag."""
    kept: list[str] = []
    depth = 0
    position = 0
    for match in _REASONING_TAG.finditer(text):
        if depth == 0:
            kept.append(text[position : match.start()])
        position = match.end()
        if match.group(1):  # a closing tag
            if depth == 0:
                kept.clear()  # no opening tag: everything so far was reasoning
            else:
                depth -= 1
        else:
            depth += 1
    if depth == 0:
        kept.append(text[position:])
    return "".join(kept)

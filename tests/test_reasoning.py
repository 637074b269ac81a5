"""Tests for bot.llm.reasoning: only final text survives, reasoning never leaks."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bot.llm.preview import PREVIEW_STEP_CHARS, StreamPreview
from bot.llm.reasoning import (
    responses_final_text,
    strip_reasoning_markup,
    visible_prefix,
    written_tool_calls,
)
from tests.helpers import RecordingPreview, eventually


def _message(*texts: str, phase: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": t, "annotations": []} for t in texts],
    }
    if phase is not None:
        item["phase"] = phase
    return item


def _reasoning(text: str) -> dict[str, Any]:
    return {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
        "content": [{"type": "reasoning_text", "text": text}],
    }


class TestResponsesFinalText:
    def test_reasoning_items_ignored(self) -> None:
        """Reasoning items contribute nothing; only the message's output_text is returned."""
        output = [_reasoning("secret plan"), _message("Hello!")]
        assert responses_final_text(output) == "Hello!"

    def test_message_parts_joined(self) -> None:
        """Several output_text parts of one message are joined in order."""
        assert responses_final_text([_message("Hel", "lo ", "world")]) == "Hello world"

    def test_other_items_and_parts_ignored(self) -> None:
        """Refusal parts, tool calls and non-assistant items are not final text."""
        message = _message("answer")
        message["content"].append({"type": "refusal", "refusal": "no"})
        output = [
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
            {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]},
            message,
        ]
        assert responses_final_text(output) == "answer"

    def test_commentary_skipped_when_final_answer_present(self) -> None:
        """A commentary-phase message is dropped when a final_answer message exists."""
        output = [
            _message("Let me check.", phase="commentary"),
            _message("42", phase="final_answer"),
        ]
        assert responses_final_text(output) == "42"

    def test_think_markup_in_message_stripped(self) -> None:
        """Think blocks a local server leaks into message text are removed."""
        assert responses_final_text([_message("<think>hmm</think>", "Hi")]) == "Hi"

    def test_only_reasoning_gives_empty(self) -> None:
        """An output with reasoning and no message yields "", never the reasoning."""
        assert responses_final_text([_reasoning("thoughts")]) == ""
        assert responses_final_text([]) == ""


class TestStripReasoningMarkup:
    def test_closed_think_block(self) -> None:
        """A closed think block before the answer is removed."""
        assert strip_reasoning_markup("<think>\nplan\n</think>\n\nHello") == "Hello"

    def test_unclosed_think_block(self) -> None:
        """Everything after an unclosed opening tag is reasoning."""
        assert strip_reasoning_markup("Sure. <think>still reasoning when cut off") == "Sure."

    def test_multiple_and_nested_blocks(self) -> None:
        """Several blocks, and a block nested inside another, are all removed."""
        text = "<think>a<think>b</think>c</think>One <thinking>x</thinking>two"
        assert strip_reasoning_markup(text) == "One two"

    @pytest.mark.parametrize(
        "text",
        [
            "<THINK>r</THINK>done",
            "<Thinking>r</Thinking>done",
            "<reasoning>r</reasoning>done",
            "<thought>r</thought>done",
            "<seed:think>r</seed:think>done",
        ],
    )
    def test_tag_variants_and_case(self, text: str) -> None:
        """The well-known reasoning tags are recognised in any letter case."""
        assert strip_reasoning_markup(text) == "done"

    def test_lone_closing_tag(self) -> None:
        """Text before a closing tag with no opening tag is reasoning."""
        assert strip_reasoning_markup("the user wants a greeting</think>\n\nHello") == "Hello"

    def test_final_tags_unwrapped(self) -> None:
        """<final> tags are dropped and their content kept."""
        text = "<think>r</think><final>The answer is 4.</final>"
        assert strip_reasoning_markup(text) == "The answer is 4."

    def test_harmony_keeps_final_channel(self) -> None:
        """Only the gpt-oss final channel's message survives harmony markers."""
        text = (
            "<|channel|>analysis<|message|>User greets; reply politely.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello<|return|>"
        )
        assert strip_reasoning_markup(text) == "Hello"

    def test_harmony_without_final_is_empty(self) -> None:
        """Harmony text with only an analysis channel yields ""."""
        assert strip_reasoning_markup("<|channel|>analysis<|message|>thinking...") == ""

    def test_harmony_flattened(self) -> None:
        """Harmony leaked without its special tokens keeps only the text after assistantfinal."""
        assert strip_reasoning_markup("analysisThe user says hi.assistantfinalHi there!") == (
            "Hi there!"
        )

    def test_stray_special_tokens_removed(self) -> None:
        """Leftover <|…|> tokens such as <|im_end|> are stripped."""
        assert strip_reasoning_markup("Hello<|im_end|>") == "Hello"

    @pytest.mark.parametrize("text", ["", "   ", "<think>only reasoning</think>", "<think>cut"])
    def test_empty_result_stays_empty(self, text: str) -> None:
        """When nothing final remains the result is the empty string."""
        assert strip_reasoning_markup(text) == ""

    @pytest.mark.parametrize(
        "text",
        [
            "I think so.",
            "Let me think about <b>that</b>: thinking is hard.",
            "Use a <thinker> tag? 2 < 3 and analysis shows > 1.",
        ],
    )
    def test_mentions_of_think_untouched(self, text: str) -> None:
        """Text that merely mentions thinking is returned as is."""
        assert strip_reasoning_markup(text) == text


# Answers as models stream them: think blocks (nested, unclosed), final tags, gpt-oss channels
# (with their special tokens, and flattened), and plain text with angle brackets in it.
STREAMS = [
    "<think>SECRET plan of the answer</think>The answer is 42.",
    "<think>SECRET a <think>nested SECRET</think> plan</think>Hello <b>world</b>, and a < b.",
    "Intro first. <thinking>SECRET hidden</thinking> Then the rest.",
    "<|channel|>analysis<|message|>SECRET plan<|end|><|start|>assistant<|channel|>final"
    "<|message|>Final words here.<|return|>",
    "analysis SECRET plan assistantfinalThe flattened answer.",
    "<final>Tagged final answer.</final>",
    "<seed:think>SECRET seed reasoning</seed:think>Seed answer.<|im_end|>",
    "Plain answer with no markup at all: 3 < 4 and 5 > 2.",
    "Answer first <think>SECRET then a thought that never ends",
    "\n\n<reasoning>SECRET</reasoning>\n\nSpaced   answer  \n",
    'Let me look. <tool_call>\n{"name": "SECRET_lookup", "arguments": {"id": "A17"}}\n</tool_call>',
    '<think>SECRET</think>Checking.<tool_call>{"name": "SECRET", "arguments": {}}</tool_call>'
    '<tool_call>{"name": "SECRET_too"',
]


def shows_all_of(shown: str, final: str) -> bool:
    """Does `shown` show the whole final text, but for a tail from a `<` that had no `>`
    after it (it might have been a tag still being written)?"""
    return final.startswith(shown) and (shown == final or final[len(shown) :].lstrip()[0] == "<")


class TestVisiblePrefix:
    @pytest.mark.parametrize("stream", STREAMS)
    def test_every_prefix_of_a_stream_previews_a_prefix_of_its_final_text(
        self, stream: str
    ) -> None:
        """Cut anywhere, a stream shows a prefix of the final text, and never its reasoning;
        the whole stream shows the final text itself (but a tail that may be a tag)."""
        final = strip_reasoning_markup(stream)
        for cut in range(len(stream) + 1):
            shown = visible_prefix(stream[:cut])
            assert final.startswith(shown), (cut, shown, final)
            assert "SECRET" not in shown
        assert shows_all_of(visible_prefix(stream), final)

    def test_an_unclosed_think_block_shows_nothing(self) -> None:
        """However far an opened <think> has streamed, nothing of it shows."""
        stream = "<think>SECRET the model is still reasoning about the question"
        assert {visible_prefix(stream[:cut]) for cut in range(len(stream) + 1)} == {""}

    @pytest.mark.parametrize("seed", range(20))
    async def test_a_preview_fed_in_random_chunks_only_grows_towards_the_final_text(
        self, seed: int
    ) -> None:
        """Fed a stream in random deltas, the preview sink sees only prefixes of the final
        text, each longer than the last, never a reset, and last the final text (but a tail
        that may be a tag)."""
        chunks = random.Random(seed)
        for stream in STREAMS:
            sink = RecordingPreview()
            feed = StreamPreview(sink)
            cut = 0
            while cut < len(stream):
                cut = min(len(stream), cut + chunks.randint(1, 9))
                await feed.update(stream[:cut])
            final = strip_reasoning_markup(stream)
            assert "reset" not in sink.kinds
            assert all(final.startswith(t) for t in sink.texts)
            assert sink.texts == sorted(set(sink.texts), key=len)
            assert shows_all_of(sink.texts[-1], final)

    async def test_text_that_turns_out_to_be_reasoning_resets_the_preview(self) -> None:
        """A closing tag with no opening one makes all before it reasoning: the preview,
        which could not know, is reset, and then shows only the final text."""
        stream = "Reasoning with its opening tag in the prompt.</think>The answer."
        sink = RecordingPreview()
        feed = StreamPreview(sink)
        for cut in range(1, len(stream) + 1):
            await feed.update(stream[:cut])
        after = sink.calls[sink.kinds.index("reset") + 1 :]
        assert {kind for kind, _ in after} <= {"thinking", "text"}
        assert all("The answer.".startswith(text) for kind, text in after if kind == "text")
        assert sink.texts[-1] == "The answer."

    async def test_a_stepped_preview_skips_deltas_and_settles_on_the_final_text(self) -> None:
        """With `step_chars`, the final text is worked out every so many characters (the
        first text at once), each still a prefix of the answer, and `settle` shows the rest."""
        answer = "The answer is written word by word, " * 6
        sink = RecordingPreview()
        feed = StreamPreview(sink, step_chars=PREVIEW_STEP_CHARS)
        for cut in range(1, len(answer) + 1):
            await feed.update(answer[:cut])
        assert sink.texts[0] == "T"
        assert 3 <= len(sink.texts) <= len(answer) // PREVIEW_STEP_CHARS + 2
        assert all(answer.startswith(text) for text in sink.texts)
        await feed.settle()
        assert sink.texts[-1] == answer.strip()

    async def test_text_a_step_held_back_is_shown_soon_when_the_model_pauses(self) -> None:
        """A model that pauses after a few words: what the step held back still reaches the
        sink (within PREVIEW_LAG_SECONDS), with no later delta to carry it."""
        sink = RecordingPreview()
        feed = StreamPreview(sink, step_chars=PREVIEW_STEP_CHARS)
        for cut in range(1, 15):
            await feed.update("The first words"[:cut])
        assert sink.texts == ["T"]
        await eventually(lambda: sink.texts[-1] == "The first word", within=2)

    async def test_a_held_preview_never_shows_reasoning_without_its_opening_tag(self) -> None:
        """For a reasoning model (`hold`), reasoning whose opening tag was in the prompt is
        never shown: only "thinking" until `</think>`, then the final text alone, no reset."""
        stream = "SECRET reasoning with its opening tag in the prompt.</think>The answer."
        sink = RecordingPreview()
        feed = StreamPreview(sink, hold=True)
        for cut in range(1, len(stream) + 1):
            await feed.update(stream[:cut])
        assert sink.kinds[0] == "thinking"
        assert "reset" not in sink.kinds
        assert not any("SECRET" in text for text in sink.texts)
        assert all("The answer.".startswith(text) for text in sink.texts)
        assert sink.texts[-1] == "The answer."

    async def test_a_reasoning_event_releases_a_held_preview(self) -> None:
        """A held preview whose server sends reasoning apart (a reasoning event) shows the
        text as it grows: that text is final."""
        sink = RecordingPreview()
        feed = StreamPreview(sink, hold=True)
        await feed.reasoning()
        for cut in range(1, 12):
            await feed.update("The answer."[:cut])
        assert sink.kinds[0] == "thinking"
        assert sink.texts[0] == "T"  # shown from the first character on
        assert all("The answer.".startswith(text) for text in sink.texts)
        assert sink.texts[-1] == "The answer."


HERMES_CALL = (
    "<think>The user wants order A17.</think>Let me check.\n"
    '<tool_call>\n{"name": "orders__lookup_order", "arguments": {"order_id": "A17"}}\n</tool_call>'
)
HARMONY_CALL = (
    "<|channel|>analysis<|message|>Need the order.<|end|><|start|>assistant<|channel|>commentary"
    ' to=functions.orders__lookup_order <|constrain|>json<|message|>{"order_id": "A17"}<|call|>'
)


class TestWrittenToolCalls:
    def test_a_tool_call_block_never_reaches_the_final_text(self) -> None:
        """A Hermes/Qwen `<tool_call>` block is dropped from the final text, the text around
        it kept."""
        assert strip_reasoning_markup(HERMES_CALL) == "Let me check."
        assert strip_reasoning_markup(HERMES_CALL + "\nMore.") == "Let me check.\n\nMore."

    def test_an_unclosed_tool_call_block_shows_nothing(self) -> None:
        """However far an opened `<tool_call>` has streamed, neither the final text nor any
        preview of it shows its JSON."""
        stream = 'Sure.<tool_call>{"name": "orders__lookup_order", "arguments": {"order'
        assert strip_reasoning_markup(stream) == "Sure."
        shown = {visible_prefix(stream[:cut]) for cut in range(len(stream) + 1)}
        assert shown <= {"", "S", "Su", "Sur", "Sure", "Sure."}

    def test_a_tool_call_block_is_read_as_a_call(self) -> None:
        """The call in a `<tool_call>` block comes back as its name and its arguments as
        compact JSON text."""
        assert written_tool_calls(HERMES_CALL) == [("orders__lookup_order", '{"order_id":"A17"}')]

    def test_several_blocks_parameters_and_string_arguments(self) -> None:
        """Several blocks, a list of calls in one, `parameters` for `arguments`, and
        arguments written as JSON text are all read, in order."""
        text = (
            '<tool_call>{"name": "a", "parameters": {"x": 1}}</tool_call>'
            '<tool_call>[{"name": "b", "arguments": "{\\"y\\": 2}"}, {"name": "c"}]</tool_call>'
        )
        assert written_tool_calls(text) == [("a", '{"x":1}'), ("b", '{"y":2}'), ("c", "{}")]

    @pytest.mark.parametrize(
        "text",
        [
            "<tool_call>not json</tool_call>",
            '<tool_call>{"arguments": {}}</tool_call>',
            '<tool_call>{"name": "a", "arguments": [1, 2]}</tool_call>',
            '<think><tool_call>{"name": "a", "arguments": {}}</tool_call></think>Answer.',
            "No calls here, just <b>markup</b>.",
        ],
    )
    def test_blocks_that_are_no_call_give_none(self, text: str) -> None:
        """A block without a named call and JSON object arguments, or one inside reasoning,
        is no call (and is still dropped from the final text)."""
        assert written_tool_calls(text) == []
        assert "tool_call" not in strip_reasoning_markup(text)

    def test_a_harmony_call_is_read_and_never_shown(self) -> None:
        """A gpt-oss `to=functions.NAME` message is read as a call; its markers and
        arguments never reach the final text, with the recipient in either header."""
        assert strip_reasoning_markup(HARMONY_CALL) == ""
        assert written_tool_calls(HARMONY_CALL) == [("orders__lookup_order", '{"order_id":"A17"}')]
        in_role = (
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json"
            '<|message|>{"city": "Oslo"}<|call|>'
        )
        assert written_tool_calls(in_role) == [("get_weather", '{"city":"Oslo"}')]
        assert strip_reasoning_markup(in_role) == ""

"""The requests providers send (Responses input in the explicit item form, chat messages plain;
offered functions and tool steps in each API's shape) and the calls they read from streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from bot.config import parse_config
from bot.errors import ModelUnavailable, Severity
from bot.llm.preview import StreamPreview
from bot.llm.providers import OpenAIProvider, data_url
from bot.llm.streams import ChatStream, ResponsesStream
from bot.llm.types import Completion, CompletionRequest, ToolCall, ToolChoice, ToolSpec, ToolStep
from bot.messages import Attachment, Turn
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingPreview, gateway_config_text

Api = Literal["openai-responses", "openai-completions"]
APIS: list[Api] = ["openai-responses", "openai-completions"]

PICTURE = Attachment(content_type="image/png", data=b"\x89PNG not really")
HISTORY = (
    Turn(role="user", text="Summary of earlier turns: Ada likes tea.", ts=0.0),
    Turn(role="user", text="my name is Ada", ts=1.0),
    Turn(role="assistant", text="Nice to meet you, Ada.", ts=2.0),
    Turn(role="user", text="what is in this picture?", ts=3.0),
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["local-model"], default=Reply(text="a cat")) as server:
        yield server


async def ask(fake: FakeOpenAI, api: str) -> str:
    config = parse_config(gateway_config_text(fake.base_url, primary_api=api), source="t", env={})
    provider = OpenAIProvider("local", config.providers()["local"])
    request = CompletionRequest(
        model="local-model",
        instructions="be brief",
        turns=HISTORY,
        max_output_tokens=64,
        images=(PICTURE,),
    )
    try:
        return (await provider.complete(request)).text
    finally:
        await provider.close()


async def test_responses_items_are_explicit_for_every_turn(fake: FakeOpenAI) -> None:
    """Every Responses input item says `"type": "message"` with typed parts: input_text for the
    user's and the summary's turns, output_text for the assistant's, input_image for pictures."""
    assert await ask(fake, "openai-responses") == "a cat"
    [request] = fake.requests_to("/responses")
    assert request.json is not None
    assert request.json["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": HISTORY[0].text}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": HISTORY[1].text}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": HISTORY[2].text}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": HISTORY[3].text},
                     {"type": "input_image", "image_url": data_url(PICTURE)}]},
    ]  # fmt: skip


async def test_chat_messages_stay_plain(fake: FakeOpenAI) -> None:
    """Chat Completions messages keep their plain form; only the picture's turn has parts."""
    assert await ask(fake, "openai-completions") == "a cat"
    [request] = fake.requests_to("/chat/completions")
    assert request.json is not None
    assert request.json["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": HISTORY[0].text},
        {"role": "user", "content": HISTORY[1].text},
        {"role": "assistant", "content": HISTORY[2].text},
        {"role": "user", "content": [
            {"type": "text", "text": HISTORY[3].text},
            {"type": "image_url", "image_url": {"url": data_url(PICTURE)}},
        ]},
    ]  # fmt: skip


LOOKUP = ToolSpec(
    name="orders__lookup_order",
    description="Look an order up by its id.",
    parameters={"type": "object", "properties": {"order_id": {"type": "string"}}},
)
WEATHER = ToolSpec(name="weather__now", description="The weather now.", parameters={})
QUESTION = (Turn(role="user", text="where is A17?", ts=0.0),)
STEPS = (
    ToolStep(
        calls=(
            ToolCall(id="call_a", name="orders__lookup_order", arguments='{"order_id":"A17"}'),
            ToolCall(id="call_b", name="weather__now", arguments="{}"),
        ),
        outputs=("shipped, arrives Tuesday", "sunny"),
    ),
    ToolStep(
        calls=(ToolCall(id="call_c", name="orders__lookup_order", arguments="{bad json"),),
        outputs=("error: the arguments are not valid JSON",),
    ),
)
A17 = '{"order_id": "A17"}'


def tool_request(
    *,
    tools: tuple[ToolSpec, ...] = (LOOKUP, WEATHER),
    steps: tuple[ToolStep, ...] = (),
    tool_choice: ToolChoice = "auto",
) -> CompletionRequest:
    return CompletionRequest(
        model="local-model",
        instructions="be brief",
        turns=QUESTION,
        max_output_tokens=64,
        tools=tools,
        steps=steps,
        tool_choice=tool_choice,
    )


@contextlib.asynccontextmanager
async def provider_for(fake: FakeOpenAI, api: Api) -> AsyncIterator[OpenAIProvider]:
    config = parse_config(gateway_config_text(fake.base_url, primary_api=api), source="t", env={})
    provider = OpenAIProvider("local", config.providers()["local"])
    try:
        yield provider
    finally:
        await provider.close()


async def complete(
    fake: FakeOpenAI, api: Api, request: CompletionRequest, sink: RecordingPreview | None = None
) -> Completion:
    async with provider_for(fake, api) as provider:
        feed = StreamPreview(sink) if sink is not None else None
        return await provider.complete(request, preview=feed)


def body(fake: FakeOpenAI) -> dict[str, Any]:
    [request] = [r for r in fake.requests if r.path.endswith(("/responses", "/completions"))]
    assert request.json is not None
    return request.json


class TestToolRequests:
    @pytest.mark.parametrize(
        ("api", "keys"),
        [
            ("openai-responses", ["model", "instructions", "input", "max_output_tokens"]),
            ("openai-completions", ["model", "messages", "max_tokens", "stream_options"]),
        ],
    )
    async def test_a_request_without_tools_or_steps_is_as_before(
        self, fake: FakeOpenAI, api: Api, keys: list[str]
    ) -> None:
        """Without tools and steps the body has exactly the keys it always had: no `tools`,
        no `tool_choice`, no tool items."""
        await complete(fake, api, tool_request(tools=()))
        sent = body(fake)
        assert list(sent) == [*keys, "stream"]
        items = sent.get("input", sent.get("messages"))
        assert all("tool" not in str(item.get("type")) for item in items)

    async def test_responses_tools_are_flat_functions(self, fake: FakeOpenAI) -> None:
        """Responses gets `{"type": "function", name, description, parameters}` per tool and
        the tool choice."""
        await complete(fake, "openai-responses", tool_request(tool_choice="none"))
        sent = body(fake)
        assert sent["tools"] == [
            {"type": "function", "name": LOOKUP.name, "description": LOOKUP.description,
             "parameters": dict(LOOKUP.parameters)},
            {"type": "function", "name": WEATHER.name, "description": WEATHER.description,
             "parameters": {}},
        ]  # fmt: skip
        assert sent["tool_choice"] == "none"

    async def test_chat_tools_are_nested_functions(self, fake: FakeOpenAI) -> None:
        """Chat Completions gets `{"type": "function", "function": {…}}` per tool and the
        tool choice."""
        await complete(fake, "openai-completions", tool_request())
        sent = body(fake)
        assert sent["tools"] == [
            {"type": "function", "function": {"name": LOOKUP.name,
             "description": LOOKUP.description, "parameters": dict(LOOKUP.parameters)}},
            {"type": "function", "function": {"name": WEATHER.name,
             "description": WEATHER.description, "parameters": {}}},
        ]  # fmt: skip
        assert sent["tool_choice"] == "auto"

    async def test_responses_steps_are_call_items_then_outputs(self, fake: FakeOpenAI) -> None:
        """Each step follows the turns as its function_call items, then their
        function_call_output items, and the fake (which pairs call ids up) answers."""
        completion = await complete(fake, "openai-responses", tool_request(steps=STEPS))
        assert completion.text == "a cat"
        assert body(fake)["input"][1:] == [
            {"type": "function_call", "call_id": "call_a", "name": "orders__lookup_order",
             "arguments": '{"order_id":"A17"}'},
            {"type": "function_call", "call_id": "call_b", "name": "weather__now",
             "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_a",
             "output": "shipped, arrives Tuesday"},
            {"type": "function_call_output", "call_id": "call_b", "output": "sunny"},
            {"type": "function_call", "call_id": "call_c", "name": "orders__lookup_order",
             "arguments": "{bad json"},
            {"type": "function_call_output", "call_id": "call_c",
             "output": "error: the arguments are not valid JSON"},
        ]  # fmt: skip

    async def test_chat_steps_are_assistant_tool_calls_then_tool_messages(
        self, fake: FakeOpenAI
    ) -> None:
        """Each step follows the turns as an assistant message with its tool_calls, then one
        `role: "tool"` message per call, and the fake (which pairs ids up) answers."""
        completion = await complete(fake, "openai-completions", tool_request(steps=STEPS))
        assert completion.text == "a cat"

        def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
            function = {"name": name, "arguments": arguments}
            return {"id": call_id, "type": "function", "function": function}

        assert body(fake)["messages"][2:] == [
            {"role": "assistant", "content": None, "tool_calls": [
                call("call_a", "orders__lookup_order", '{"order_id":"A17"}'),
                call("call_b", "weather__now", "{}"),
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "shipped, arrives Tuesday"},
            {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
            {"role": "assistant", "content": None, "tool_calls": [
                call("call_c", "orders__lookup_order", "{bad json"),
            ]},
            {"role": "tool", "tool_call_id": "call_c",
             "content": "error: the arguments are not valid JSON"},
        ]  # fmt: skip

    @pytest.mark.parametrize("api", APIS)
    async def test_steps_without_tools_go_as_text(self, fake: FakeOpenAI, api: Api) -> None:
        """Steps of a request that offers no tools go as one user text after the turns, with
        no call items, no `tools` and no `tool_choice`."""
        await complete(fake, api, tool_request(tools=(), steps=STEPS))
        sent = body(fake)
        assert "tools" not in sent
        assert "tool_choice" not in sent
        [recorded] = fake.requests_to("/responses" if api == "openai-responses" else "/completions")
        assert recorded.turn_texts[-2:] == [
            "where is A17?",
            "[Tool results so far]\n"
            '- orders__lookup_order({"order_id":"A17"}) → shipped, arrives Tuesday\n'
            "- weather__now({}) → sunny\n"
            "- orders__lookup_order({bad json) → error: the arguments are not valid JSON",
        ]
        items = sent.get("input", sent.get("messages"))
        assert items[-1]["role"] == "user"
        assert not any("tool_call" in item or "call_id" in item for item in items)


class TestToolCallStreams:
    @pytest.mark.parametrize(
        ("api", "style"),
        [
            ("openai-responses", {"args_in": "deltas"}),
            ("openai-responses", {"args_in": "deltas", "completed_output": False}),
            ("openai-responses", {"args_in": "done_only"}),
            ("openai-responses", {"args_in": "done_only", "completed_output": False}),
            ("openai-completions", {"args_in": "deltas"}),
            ("openai-completions", {"args_in": "done_only"}),
        ],
    )
    async def test_several_calls_in_one_step_are_read(
        self, fake: FakeOpenAI, api: Api, style: dict[str, Any]
    ) -> None:
        """Several calls in one streamed step come back with their names, whole arguments and
        the server's ids, however the server streams the arguments (deltas, LM Studio's
        output_item.done only, chat fragments across chunks, a completed event without items)."""
        calls = (("orders__lookup_order", A17), ("weather__now", '{"city": "Oslo"}'))
        fake.script(Reply("", reasoning="hmm", tool_calls=calls, **style))
        completion = await complete(fake, api, tool_request())
        assert completion.text == ""
        assert [(c.name, c.arguments) for c in completion.tool_calls] == list(calls)
        ids = [c.id for c in completion.tool_calls]
        assert all(i.startswith("call_") and len(i) > len("call_99") for i in ids)
        assert len(set(ids)) == 2

    @pytest.mark.parametrize("api", APIS)
    async def test_calls_without_ids_get_stable_ones(self, fake: FakeOpenAI, api: Api) -> None:
        """Calls a server sent without ids are numbered `call_<n>` after the turn's earlier
        calls, so ids stay unique in the transcript and are the same on a retry."""
        reply = Reply("", reasoning=None, tool_calls=(("weather__now", "{}"),) * 2, call_ids=False)
        fake.script(reply, reply)
        first = await complete(fake, api, tool_request(steps=STEPS))
        again = await complete(fake, api, tool_request(steps=STEPS))
        assert [c.id for c in first.tool_calls] == ["call_4", "call_5"]
        assert again.tool_calls == first.tool_calls

    @pytest.mark.parametrize("api", APIS)
    async def test_a_step_with_only_calls_is_no_failure(self, fake: FakeOpenAI, api: Api) -> None:
        """A completion that calls functions and writes no text is an answer, while one with
        neither is still a failed attempt."""
        fake.script(
            Reply("", reasoning=None, tool_calls=(("orders__lookup_order", A17),)),
            Reply("", reasoning=None),
        )
        completion = await complete(fake, api, tool_request())
        assert [c.name for c in completion.tool_calls] == ["orders__lookup_order"]
        with pytest.raises(ModelUnavailable) as caught:
            await complete(fake, api, tool_request())
        assert caught.value.severity is Severity.EMPTY

    @pytest.mark.parametrize("api", APIS)
    async def test_text_before_calls_is_kept_but_its_preview_is_void(
        self, fake: FakeOpenAI, api: Api
    ) -> None:
        """Text a model writes before calling functions comes back as is, but what the preview
        showed of it is reset and the preview then only hears that the model works."""
        calls = (("orders__lookup_order", A17),)
        fake.script(Reply("Let me look that up.", reasoning=None, tool_calls=calls))
        sink = RecordingPreview()
        completion = await complete(fake, api, tool_request(), sink)
        assert completion.text == "Let me look that up."
        assert [c.name for c in completion.tool_calls] == ["orders__lookup_order"]
        assert sink.texts[-1] == "Let me look that up."
        assert sink.kinds[-2:] == ["reset", "thinking"]
        assert not any("order_id" in text for text in sink.texts)


WRITTEN = (
    "<think>The user wants A17.</think>Let me check.<tool_call>\n"
    '{"name": "orders__lookup_order", "arguments": {"order_id": "A17"}}\n</tool_call>'
)
HARMONY = (
    "<|channel|>analysis<|message|>Need the order.<|end|><|start|>assistant<|channel|>commentary"
    ' to=functions.orders__lookup_order <|constrain|>json<|message|>{"order_id": "A17"}<|call|>'
)


class TestCallsWrittenAsText:
    @pytest.mark.parametrize("api", APIS)
    @pytest.mark.parametrize("text", [WRITTEN, HARMONY])
    async def test_a_written_call_of_an_offered_tool_is_a_call(
        self, fake: FakeOpenAI, api: Api, text: str
    ) -> None:
        """A call written as text (a `<tool_call>` block, gpt-oss `to=functions.…`) of an
        offered tool becomes a call `text_call_<n>`, and neither the final text nor any
        preview shows it."""
        fake.script(Reply(text, reasoning=None))
        sink = RecordingPreview()
        completion = await complete(fake, api, tool_request(steps=STEPS[:1]), sink)
        assert completion.tool_calls == (
            ToolCall(id="text_call_3", name="orders__lookup_order", arguments='{"order_id":"A17"}'),
        )
        assert "order_id" not in completion.text
        assert "tool_call" not in completion.text
        assert not any("order_id" in t or "tool_call" in t or "<|" in t for t in sink.texts)
        if sink.texts:  # what showed ("Let me check.") was void once the call was read
            assert sink.kinds[-2:] == ["reset", "thinking"]

    @pytest.mark.parametrize("api", APIS)
    @pytest.mark.parametrize(
        "request_",
        [
            tool_request(tools=()),  # no tools offered
            tool_request(tools=(WEATHER,)),  # another tool offered
            tool_request(tool_choice="none"),  # the last step: an answer, not a call
        ],
    )
    async def test_a_written_call_that_may_not_run_is_only_dropped(
        self, fake: FakeOpenAI, api: Api, request_: CompletionRequest
    ) -> None:
        """A written call of a tool that was not offered, or while the model must answer,
        is no call: it is dropped from the text, which keeps the rest."""
        fake.script(Reply(WRITTEN + " Done.", reasoning=None))
        sink = RecordingPreview()
        completion = await complete(fake, api, request_, sink)
        assert completion.tool_calls == ()
        assert completion.text == "Let me check. Done."
        assert not any("order_id" in text for text in sink.texts)

    @pytest.mark.parametrize("api", APIS)
    async def test_an_answer_that_is_only_a_dropped_call_is_empty(
        self, fake: FakeOpenAI, api: Api
    ) -> None:
        """An answer that held nothing but a call that may not run has no final text: a
        failed attempt, never the call's JSON."""
        fake.script(Reply(WRITTEN.split("Let me check.")[1], reasoning=None))
        with pytest.raises(ModelUnavailable) as caught:
            await complete(fake, api, tool_request(tools=()))
        assert caught.value.severity is Severity.EMPTY


class TestOddStreams:
    async def test_chat_fragments_without_an_index_are_told_apart_by_id(self) -> None:
        """Chat fragments that carry no `index` (some servers omit it) continue the last call
        unless a new id starts the next one."""
        stream = ChatStream(None)
        fragments = [
            {"id": "c1", "function": {"name": "orders__lookup_order", "arguments": '{"order_'}},
            {"function": {"arguments": 'id": "A17"}'}},
            {"id": "c2", "function": {"name": "weather__now", "arguments": "{}"}},
        ]
        for fragment in fragments:
            await stream.take({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]})
        _, calls = await stream.answer(tool_request())
        assert [(c.id, c.name, c.arguments) for c in calls] == [
            ("c1", "orders__lookup_order", A17),
            ("c2", "weather__now", "{}"),
        ]

    async def test_responses_arguments_done_names_a_call_never_added(self) -> None:
        """A Responses call known only from its `function_call_arguments.done` event (name
        and arguments there, no item events) is still read, with a generated id."""
        stream = ResponsesStream(None)
        await stream.take(
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_1",
                "output_index": 0,
                "name": "orders__lookup_order",
                "arguments": A17,
            }
        )
        _, calls = await stream.answer(tool_request())
        assert calls == (ToolCall(id="call_1", name="orders__lookup_order", arguments=A17),)

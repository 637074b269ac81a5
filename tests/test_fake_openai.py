"""Tests for tests.fakes.openai_server: the real openai SDK parses everything the fake says."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_server import (
    DEFAULT_MODEL,
    LLAMACPP_ITEM_MESSAGE,
    FakeOpenAI,
    Recorded,
    Reply,
    closed_port,
    context_overflow,
    model_not_loaded,
    rate_limited,
    server_error,
)

TEXT = "Hello there, how are you?"
REASONING = "The user greets me. I should greet back."


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(default=Reply(TEXT, reasoning=REASONING)) as server:
        yield server


def _client(base_url: str, **options: Any) -> AsyncOpenAI:
    # Strict validation: the fake's JSON must satisfy the SDK's pydantic types, not just parse.
    return AsyncOpenAI(
        base_url=base_url,
        api_key="sk-test",
        max_retries=0,
        _strict_response_validation=True,
        **options,
    )


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    sdk = _client(fake.base_url, timeout=5.0)
    yield sdk
    await sdk.close()


class TestResponses:
    async def test_non_stream_has_reasoning_then_message(self, client: AsyncOpenAI) -> None:
        """A Responses call returns a reasoning item, then a message whose text is output_text."""
        response = await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert [item.type for item in response.output] == ["reasoning", "message"]
        reasoning = response.output[0]
        assert reasoning.type == "reasoning"
        assert reasoning.content is not None
        assert reasoning.content[0].text == REASONING
        assert response.output_text == TEXT
        assert response.status == "completed"
        assert response.usage is not None
        assert response.usage.total_tokens == (
            response.usage.input_tokens + response.usage.output_tokens
        )

    async def test_non_stream_without_reasoning(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A reply with reasoning=None yields only the message item."""
        fake.script(Reply("plain", reasoning=None, usage=(7, 3)))
        response = await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert [item.type for item in response.output] == ["message"]
        assert response.output_text == "plain"
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 3)

    async def test_stream_events_in_order(self, client: AsyncOpenAI) -> None:
        """A streamed response emits OpenAI's event sequence with several text deltas."""
        stream = await client.responses.create(model=DEFAULT_MODEL, input="hi", stream=True)
        events = [event async for event in stream]
        types = [event.type for event in events]
        assert types[:3] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        assert "response.reasoning_text.delta" in types
        assert types.index("response.reasoning_text.done") < types.index(
            "response.output_text.delta"
        )
        assert types[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert len(deltas) > 1
        assert "".join(deltas) == TEXT
        assert [e.sequence_number for e in events] == list(range(len(events)))
        completed = events[-1]
        assert completed.type == "response.completed"
        assert [item.type for item in completed.response.output] == ["reasoning", "message"]
        assert completed.response.output_text == TEXT

    async def test_stream_helper_accumulates(self, client: AsyncOpenAI) -> None:
        """The SDK's responses.stream() helper accumulates the fake's events into the text."""
        async with client.responses.stream(model=DEFAULT_MODEL, input="hi") as stream:
            final = await stream.get_final_response()
        assert final.output_text == TEXT
        assert [item.type for item in final.output] == ["reasoning", "message"]


class TestChatCompletions:
    async def test_non_stream_think_and_reasoning_content(self, client: AsyncOpenAI) -> None:
        """A chat completion carries <think> in content and reasoning_content beside it."""
        completion = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        message = completion.choices[0].message
        assert message.content == f"<think>{REASONING}</think>{TEXT}"
        assert message.model_dump()["reasoning_content"] == REASONING
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None

    async def test_stream_reasoning_then_content(self, client: AsyncOpenAI) -> None:
        """A streamed chat completion sends reasoning_content deltas, then content, then usage."""
        stream = await client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join(d.model_dump().get("reasoning_content") or "" for d in deltas)
        content = "".join(d.content or "" for d in deltas)
        assert reasoning == REASONING
        assert content == f"<think>{REASONING}</think>{TEXT}"
        first_content = next(i for i, d in enumerate(deltas) if d.content)
        last_reasoning = max(
            i for i, d in enumerate(deltas) if d.model_dump().get("reasoning_content")
        )
        assert last_reasoning < first_content
        assert chunks[-1].usage is not None
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    async def test_reasoning_only_in_field(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """think_in_content=False leaves content clean, as servers that split reasoning do."""
        fake.script(Reply("clean", reasoning="r", think_in_content=False))
        completion = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "clean"


class TestErrors:
    async def test_500_is_internal_server_error(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A scripted 500 raises the SDK's InternalServerError."""
        fake.script(server_error())
        with pytest.raises(openai.InternalServerError):
            await client.responses.create(model=DEFAULT_MODEL, input="hi")

    async def test_429_is_rate_limit_with_retry_after(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A 429 raises RateLimitError and carries retry-after."""
        fake.script(rate_limited(retry_after=7))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.code == "rate_limit_exceeded"

    async def test_unknown_model_is_404(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """A model the fake does not serve raises NotFoundError with code model_not_found."""
        fake.script(Reply("unused"))
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="no-such-model", input="hi")
        assert caught.value.code == "model_not_found"
        response = await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert response.output_text == "unused"  # the unknown model did not consume the script

    async def test_any_model_when_models_empty(self) -> None:
        """With models=[] every model name is accepted."""
        async with FakeOpenAI(models=[]) as fake:
            sdk = _client(fake.base_url)
            try:
                response = await sdk.responses.create(model="whatever", input="hi")
                models = await sdk.models.list()
            finally:
                await sdk.close()
        assert response.output_text == "ok"
        assert models.data == []

    @pytest.mark.parametrize(
        ("reply", "code", "phrase"),
        [
            (model_not_loaded(), None, "No models loaded"),
            (context_overflow(), "context_length_exceeded", "greater than the context length"),
            (context_overflow(lmstudio=False), "context_length_exceeded", "maximum context length"),
        ],
    )
    async def test_400s(
        self, client: AsyncOpenAI, fake: FakeOpenAI, reply: Reply, code: str | None, phrase: str
    ) -> None:
        """LM Studio's 400s raise BadRequestError with their code and message."""
        fake.script(reply)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert caught.value.code == code
        assert phrase in caught.value.message

    async def test_an_assistant_item_without_type_gets_llamacpps_400(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """An assistant turn in the short form is refused as llama.cpp refuses it: 400,
        "Cannot determine type of 'item'", its code the status as a number; the scripted
        answer is kept for the next request."""
        fake.script(Reply("scripted"))
        short = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=DEFAULT_MODEL, input=short)
        assert caught.value.body == {
            "code": 400, "message": LLAMACPP_ITEM_MESSAGE, "type": "invalid_request_error",
        }  # fmt: skip
        response = await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert response.output_text == "scripted"

    @pytest.mark.parametrize(
        "item",
        [
            {"role": "user", "content": "short user turns are fine"},
            {"type": "message", "role": "assistant", "content": "typed assistant, string"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "typed assistant, parts"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "a picture"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
            ]},
        ],
        ids=["user-short", "assistant-string", "assistant-parts", "user-image"],
    )  # fmt: skip
    async def test_items_llamacpp_takes_are_answered(
        self, client: AsyncOpenAI, item: dict[str, Any]
    ) -> None:
        """The forms llama.cpp reads are answered."""
        response = await client.responses.create(model=DEFAULT_MODEL, input=[item])
        assert response.output_text == TEXT

    async def test_a_user_part_of_the_wrong_type_is_refused(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A user turn with an assistant's part type gets llama.cpp's 400 for it."""
        wrong = [
            {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]}
        ]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=DEFAULT_MODEL, input=wrong)
        assert "'input_text', 'input_image', or 'input_file'" in caught.value.message

    async def test_fail_helper(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """fail() queues the given number of errors, then normal answers resume."""
        fake.fail(503, message="overloaded", times=2)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert (await client.responses.create(model=DEFAULT_MODEL, input="hi")).output_text == TEXT

    async def test_hang_times_out(self, fake: FakeOpenAI) -> None:
        """A hanging reply makes the SDK raise APITimeoutError once its timeout passes."""
        fake.script(Reply(hang=True))
        sdk = _client(fake.base_url, timeout=0.2)
        try:
            with pytest.raises(openai.APITimeoutError):
                await sdk.responses.create(model=DEFAULT_MODEL, input="hi")
        finally:
            await sdk.close()

    async def test_delay_longer_than_timeout(self, fake: FakeOpenAI) -> None:
        """A delayed reply times out a client whose timeout is shorter than the delay."""
        fake.script(Reply(delay=2.0))
        sdk = _client(fake.base_url, timeout=0.2)
        try:
            with pytest.raises(openai.APITimeoutError):
                await sdk.chat.completions.create(
                    model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            await sdk.close()

    async def test_stall_mid_stream_times_out(self, fake: FakeOpenAI) -> None:
        """A stream that goes silent after its first delta trips the SDK's read timeout."""
        fake.script(Reply(TEXT, stall_after=1))
        sdk = _client(fake.base_url, timeout=0.3)
        deltas: list[str] = []

        async def read_all() -> None:
            stream = await sdk.responses.create(model=DEFAULT_MODEL, input="hi", stream=True)
            async for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)

        try:
            with pytest.raises(openai.APITimeoutError):
                await read_all()
        finally:
            await sdk.close()
        assert deltas == ["Hello "]

    async def test_closed_port_is_connection_error(self) -> None:
        """A port nobody listens on raises APIConnectionError."""
        sdk = _client(f"http://127.0.0.1:{closed_port()}/v1", timeout=2.0)
        try:
            with pytest.raises(openai.APIConnectionError):
                await sdk.responses.create(model=DEFAULT_MODEL, input="hi")
        finally:
            await sdk.close()

    async def test_stop_and_resume_listening(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """stop_listening refuses even a pooled client; start_listening serves the same port."""
        await client.responses.create(model=DEFAULT_MODEL, input="warm the pool")
        port = fake.port
        await fake.stop_listening()
        with pytest.raises(openai.APIConnectionError) as caught:
            await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert not isinstance(caught.value, openai.APITimeoutError)
        await fake.start_listening()
        assert fake.port == port
        assert (await client.responses.create(model=DEFAULT_MODEL, input="hi")).output_text == TEXT


class TestScriptAndRecords:
    async def test_script_order_then_default(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """Scripted replies are used in order across endpoints, then the default."""
        fake.script(Reply("one"), Reply("two"))
        first = await client.responses.create(model=DEFAULT_MODEL, input="a")
        second = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "b"}]
        )
        third = await client.responses.create(model=DEFAULT_MODEL, input="c")
        assert first.output_text == "one"
        assert second.choices[0].message.content is not None
        assert second.choices[0].message.content.endswith("two")
        assert third.output_text == TEXT

    async def test_default_callable_sees_request(self) -> None:
        """A callable default builds each reply from the recorded request."""

        def echo(request: Recorded) -> Reply:
            return Reply(f"echo: {request.prompt}", reasoning=None)

        async with FakeOpenAI(default=echo) as fake:
            sdk = _client(fake.base_url)
            try:
                response = await sdk.responses.create(model=DEFAULT_MODEL, input="ping")
            finally:
                await sdk.close()
        assert response.output_text == "echo: ping"

    async def test_requests_recorded(self, client: AsyncOpenAI, fake: FakeOpenAI) -> None:
        """Every request is recorded with path, body and headers, and its prompt is readable."""
        await client.models.list()
        await client.responses.create(
            model=DEFAULT_MODEL,
            instructions="Be brief.",
            input=[
                {"role": "user", "content": "My name is Ada."},
                {"type": "message", "role": "assistant", "content": "Hi Ada."},
                {"role": "user", "content": [{"type": "input_text", "text": "Who am I?"}]},
            ],
        )
        assert [(r.method, r.path) for r in fake.requests] == [
            ("GET", "/v1/models"),
            ("POST", "/v1/responses"),
        ]
        recorded = fake.requests_to("/responses")[0]
        assert recorded.model == DEFAULT_MODEL
        assert recorded.stream is False
        assert recorded.headers["Authorization"] == "Bearer sk-test"
        assert recorded.prompt.splitlines() == [
            "Be brief.",
            "My name is Ada.",
            "Hi Ada.",
            "Who am I?",
        ]
        assert recorded.json is not None
        assert recorded.json["input"][0]["content"] == "My name is Ada."
        assert recorded.turn_texts == ["My name is Ada.", "Hi Ada.", "Who am I?"]

    async def test_models_list(self) -> None:
        """GET /v1/models lists the configured model ids in OpenAI's list shape."""
        async with FakeOpenAI(models=["a", "b"]) as fake:
            sdk = _client(fake.base_url)
            try:
                models = await sdk.models.list()
                one = await sdk.models.retrieve("b")
                with pytest.raises(openai.NotFoundError):
                    await sdk.models.retrieve("c")
            finally:
                await sdk.close()
        assert [m.id for m in models.data] == ["a", "b"]
        assert one.id == "b"


async def test_transcription_endpoint_takes_multipart_file_and_model(fake: FakeOpenAI) -> None:
    """The SDK's transcription call reaches the fake as multipart `file` + `model` and gets
    the text back; a request without `model` is a 400."""
    client = _client(fake.base_url)
    result = await client.audio.transcriptions.create(
        model="whisper-1", file=("voice.ogg", b"OggS audio", "audio/ogg")
    )
    assert result.text == fake.transcript
    [heard] = fake.transcriptions
    assert (heard.model, heard.filename, heard.audio) == ("whisper-1", "voice.ogg", b"OggS audio")
    with pytest.raises(openai.BadRequestError):
        await client.post("/audio/transcriptions", cast_to=object, body={}, files=[("file", b"x")])
    await client.close()


class TestStreamTimes:
    DELAY = 0.01  # seconds between streamed events

    async def test_responses_stream_records_first_text_and_end(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A streamed Responses answer is recorded with when its first output_text delta (after
        every reasoning delta) was written and when the stream ended, on time.monotonic."""
        await client.responses.create(model=DEFAULT_MODEL, input="no stream")  # not recorded
        fake.script(Reply(TEXT, reasoning=REASONING, token_delay=self.DELAY))
        seen_text = None
        stream = await client.responses.create(model=DEFAULT_MODEL, input="hi", stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta" and seen_text is None:
                seen_text = time.monotonic()
        done = time.monotonic()
        [streamed] = fake.streams
        assert streamed.request.turn_texts == ["hi"]
        assert streamed.first_text is not None
        assert seen_text is not None
        reasoning_deltas = len(REASONING.split())
        assert streamed.first_text - streamed.started >= 0.9 * reasoning_deltas * self.DELAY
        assert streamed.first_text <= seen_text <= streamed.ended <= done

    async def test_chat_stream_first_text_is_past_think(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """In a streamed chat completion the first text delta is the content piece that reaches
        past `<think>…</think>`, not reasoning_content or the think block itself."""
        fake.script(Reply(TEXT, reasoning=REASONING, token_delay=self.DELAY))
        seen_text = None
        stream = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content and "</think>" in content:
                seen_text = time.monotonic()
        [streamed] = fake.streams
        assert streamed.first_text is not None
        assert seen_text is not None
        before = 2 * len(REASONING.split())  # reasoning_content deltas, then the think pieces
        assert streamed.first_text - streamed.started >= 0.9 * (before - 1) * self.DELAY
        assert streamed.first_text <= seen_text <= streamed.ended


LOOKUP = ("orders__lookup_order", '{"order_id": "A17", "verbose": true}')
WEATHER = ("weather__now", '{"city": "Oslo"}')
RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "orders__lookup_order",
    "description": "Look an order up.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
}
CHAT_TOOL: Any = {
    "type": "function",
    "function": {k: v for k, v in RESPONSES_TOOL.items() if k != "type"},
}


class TestToolCalls:
    async def test_responses_stream_sends_argument_deltas(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """`args_in="deltas"`: each call is added with empty arguments, streamed in argument
        deltas, finished by arguments.done and output_item.done, and listed when completed."""
        fake.script(Reply("", reasoning=None, tool_calls=(LOOKUP, WEATHER)))
        stream = await client.responses.create(
            model=DEFAULT_MODEL, input="where is A17?", tools=[RESPONSES_TOOL], stream=True
        )
        events = [event async for event in stream]
        types = [event.type for event in events]
        assert "response.output_text.delta" not in types  # no message item: only calls
        first = types[types.index("response.output_item.added") :]
        deltas = first.index("response.function_call_arguments.done")
        assert set(first[1:deltas]) == {"response.function_call_arguments.delta"}
        assert first[deltas + 1] == "response.output_item.done"
        added = [e for e in events if e.type == "response.output_item.added"]
        assert [e.item.arguments for e in added if e.item.type == "function_call"] == ["", ""]
        for index, (_, arguments) in enumerate((LOOKUP, WEATHER)):
            pieces = [
                e.delta
                for e in events
                if e.type == "response.function_call_arguments.delta" and e.output_index == index
            ]
            assert "".join(pieces) == arguments
        completed = events[-1]
        assert completed.type == "response.completed"
        calls = [i for i in completed.response.output if i.type == "function_call"]
        assert [(c.name, c.arguments) for c in calls] == [LOOKUP, WEATHER]
        assert all(c.call_id.startswith("call_") for c in calls)
        assert completed.response.tools[0].name == "orders__lookup_order"

    async def test_responses_stream_done_only_is_lmstudios(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """`args_in="done_only"`: the call is added with empty arguments and its arguments
        come only in output_item.done, as LM Studio streams them."""
        fake.script(Reply("", reasoning=None, tool_calls=(LOOKUP,), args_in="done_only"))
        stream = await client.responses.create(model=DEFAULT_MODEL, input="hi", stream=True)
        events = [event async for event in stream]
        types = [event.type for event in events]
        assert types == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done",
            "response.completed",
        ]
        added, done = events[2], events[3]
        assert added.type == "response.output_item.added"
        assert done.type == "response.output_item.done"
        assert added.item.type == done.item.type == "function_call"
        assert (added.item.arguments, done.item.arguments) == ("", LOOKUP[1])

    async def test_responses_completed_output_can_be_empty(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """`completed_output=False`: the stream still shows text and calls, but the
        completed response lists no output items."""
        fake.script(Reply("Let me see.", tool_calls=(LOOKUP,), completed_output=False))
        stream = await client.responses.create(model=DEFAULT_MODEL, input="hi", stream=True)
        events = [event async for event in stream]
        types = [event.type for event in events]
        assert "response.output_text.delta" in types
        assert "response.function_call_arguments.done" in types
        completed = events[-1]
        assert completed.type == "response.completed"
        assert completed.response.output == []

    async def test_responses_body_lists_calls_after_the_message(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A non-streamed response holds the message item, then one function_call item per
        call, which the SDK parses."""
        fake.script(Reply("Checking.", reasoning=None, tool_calls=(LOOKUP, WEATHER)))
        response = await client.responses.create(model=DEFAULT_MODEL, input="hi")
        assert [item.type for item in response.output] == [
            "message",
            "function_call",
            "function_call",
        ]
        calls = [i for i in response.output if i.type == "function_call"]
        assert [(c.name, c.arguments) for c in calls] == [LOOKUP, WEATHER]
        assert response.output_text == "Checking."

    async def test_chat_stream_fragments_assemble_in_the_sdks_helper(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """Chat `delta.tool_calls` fragments (id and name first, arguments in pieces, by
        index) assemble into whole calls in the SDK's own stream helper, finish "tool_calls"."""
        fake.script(Reply("", reasoning=None, tool_calls=(LOOKUP, WEATHER)))
        async with client.chat.completions.stream(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], tools=[CHAT_TOOL]
        ) as stream:
            chunks = [event.chunk async for event in stream if event.type == "chunk"]
            final = await stream.get_final_completion()
        fragments = [
            call for c in chunks for call in c.choices[0].delta.tool_calls or [] if c.choices
        ]
        assert len(fragments) > 4  # the arguments came in pieces
        assert [f.id for f in fragments if f.id] == [f.id for f in fragments if f.function.name]
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert calls == [LOOKUP, WEATHER]

    async def test_chat_done_only_sends_each_call_whole(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """Chat `args_in="done_only"`: each call comes whole in one fragment."""
        fake.script(Reply("", reasoning=None, tool_calls=(LOOKUP, WEATHER), args_in="done_only"))
        stream = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        fragments = [
            call
            async for chunk in stream
            if chunk.choices
            for call in chunk.choices[0].delta.tool_calls or []
        ]
        assert [(f.index, f.function and f.function.arguments) for f in fragments] == [
            (0, LOOKUP[1]),
            (1, WEATHER[1]),
        ]

    async def test_chat_body_carries_tool_calls(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """A non-streamed chat completion that calls a function has `tool_calls`, no
        content, and finish_reason "tool_calls"."""
        fake.script(Reply("", reasoning=None, tool_calls=(LOOKUP,)))
        completion = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        [call] = choice.message.tool_calls
        assert call.type == "function"
        assert (call.function.name, call.function.arguments) == LOOKUP
        assert call.id.startswith("call_")


class TestToolTranscripts:
    async def test_a_responses_transcript_that_pairs_up_is_answered(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """Function calls each followed by their outputs are taken; the outputs are part of
        the recorded prompt and the offered tools readable."""
        await client.responses.create(
            model=DEFAULT_MODEL,
            input=[
                {"role": "user", "content": "where is A17?"},
                {"type": "function_call", "call_id": "c1", "name": LOOKUP[0], "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "shipped"},
            ],
            tools=[RESPONSES_TOOL],
            tool_choice="auto",
        )
        [recorded] = fake.requests_to("/responses")
        assert recorded.tool_names == ["orders__lookup_order"]
        assert recorded.prompt.splitlines() == ["where is A17?", "shipped"]

    @pytest.mark.parametrize(
        ("items", "message"),
        [
            (
                [{"type": "function_call_output", "call_id": "c9", "output": "x"}],
                "No tool call found for function call output with call_id c9.",
            ),
            (
                [
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c2", "output": "x"},
                ],
                "No tool call found for function call output with call_id c2.",
            ),
            (
                [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
                "No tool output found for function call c1.",
            ),
        ],
    )
    async def test_a_responses_output_without_its_call_is_refused(
        self, client: AsyncOpenAI, items: list[Any], message: str
    ) -> None:
        """A function_call_output whose call_id no earlier function_call has, or a call
        without its output, gets OpenAI's 400."""
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model=DEFAULT_MODEL, input=[{"role": "user", "content": "hi"}, *items]
            )
        assert message in str(caught.value)

    async def test_a_chat_transcript_that_pairs_up_is_answered(
        self, client: AsyncOpenAI, fake: FakeOpenAI
    ) -> None:
        """An assistant message with tool_calls followed by a tool message per id is taken;
        the tool outputs are part of the recorded prompt."""
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        await client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
            ],
            tools=[CHAT_TOOL],
        )
        [recorded] = fake.requests_to("/chat/completions")
        assert recorded.prompt.splitlines() == ["hi", "shipped"]
        assert recorded.tool_names == ["orders__lookup_order"]

    @pytest.mark.parametrize(
        ("messages", "message"),
        [
            (
                [{"role": "tool", "tool_call_id": "c1", "content": "x"}],
                "messages with role 'tool' must be a response to a preceeding message",
            ),
            (
                [
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f",
                                                                       "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c2", "content": "x"},
                ],
                "'tool_call_id' of 'c2' not found in 'tool_calls' of previous message",
            ),
            (
                [
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f",
                                                                       "arguments": "{}"}}]},
                    {"role": "user", "content": "and?"},
                ],
                "The following tool_call_ids did not have response messages: c1",
            ),
        ],
    )  # fmt: skip
    async def test_a_chat_tool_message_without_its_call_is_refused(
        self, client: AsyncOpenAI, messages: list[Any], message: str
    ) -> None:
        """A tool message whose tool_call_id the assistant message before it did not call, or
        a call left unanswered, gets OpenAI's 400."""
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}, *messages]
            )
        assert message in str(caught.value)

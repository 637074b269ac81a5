"""The requests providers send: Responses input in the explicit item form, chat messages plain."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.config import parse_config
from bot.llm.providers import OpenAIProvider, data_url
from bot.llm.types import CompletionRequest
from bot.messages import Attachment, Turn
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import gateway_config_text

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

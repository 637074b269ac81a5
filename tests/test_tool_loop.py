"""The model side of the tool loop through failover: tools offered per model, a model that
refuses tools asked again without them (and remembered), and steps handed to a fallback in its
own API's shape."""

from __future__ import annotations

import pytest

from bot.config import parse_config
from bot.llm.failover import FailoverClient
from bot.llm.providers import OpenAIProvider
from bot.llm.registry import ModelRegistry
from bot.llm.types import ToolCall, ToolSpec, ToolStep
from bot.messages import Turn
from tests.conftest import CapturedEvents
from tests.fakes.openai_server import FakeOpenAI, Reply, error_reply
from tests.helpers import failover_client

HELLO = [Turn(role="user", text="where is order A17?", ts=0.0)]
LOOKUP = ToolSpec(
    name="orders__lookup_order",
    description="Look up an order",
    parameters={"type": "object", "properties": {"order_id": {"type": "string"}}},
)
STEP = ToolStep(
    calls=(ToolCall(id="call_1", name="orders__lookup_order", arguments='{"order_id": "A17"}'),),
    outputs=("shipped, arrives Tuesday",),
)


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
async def test_a_model_that_refuses_tools_answers_without_them_and_is_not_offered_them_again(
    primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents, api: str
) -> None:
    """A 400 "does not support tools": the same model is asked again at once without tools
    (the person gets its answer, not the fallback's), logged once, and the next call within
    the window offers it none."""
    primary.script(error_reply(400, "This model does not support tools"))
    async with failover_client(primary, backup, events.log, api=api) as client:
        first = await client.complete(instructions="be brief", turns=HELLO, tools=[LOOKUP])
        second = await client.complete(instructions="be brief", turns=HELLO, tools=[LOOKUP])
    assert (first.text, second.text) == ("from primary", "from primary")
    assert [r.tool_names for r in primary.requests] == [[LOOKUP.name], [], []]
    assert backup.requests == []
    [refused] = events.events("tools_refused")
    assert refused["model"] == "local/local-model"


async def test_a_fallback_gets_the_steps_so_far_in_its_own_apis_shape(
    primary: FakeOpenAI, backup: FakeOpenAI, events: CapturedEvents
) -> None:
    """The primary (chat completions) is down mid-loop; the fallback (Responses) is offered
    the tools and gets the step as `function_call` and `function_call_output` items, which
    the fake accepts only when they pair up."""
    primary.script(Reply(status=503))
    async with failover_client(primary, backup, events.log, api="openai-completions") as client:
        answer = await client.complete(
            instructions="be brief", turns=HELLO, tools=[LOOKUP], steps=[STEP]
        )
    assert answer.text == "from backup"
    [request] = backup.requests
    items = (request.json or {})["input"]
    call = next(item for item in items if item.get("type") == "function_call")
    output = next(item for item in items if item.get("type") == "function_call_output")
    assert (call["name"], call["arguments"]) == (LOOKUP.name, '{"order_id": "A17"}')
    assert (output["call_id"], output["output"]) == (call["call_id"], "shipped, arrives Tuesday")
    assert request.tool_names == [LOOKUP.name]


async def test_a_model_with_tools_false_is_offered_none_and_reads_the_steps_as_text(
    primary: FakeOpenAI, events: CapturedEvents
) -> None:
    """A model entry with `tools: false` gets no `tools` in its request, and the turn's steps
    so far as text it can read (never as call items its server might refuse)."""
    text = f"""{{
      agents: {{ defaults: {{ model: "local/local-model" }} }},
      models: {{ mode: "replace", providers: {{ local: {{
        baseUrl: "{primary.base_url}", apiKey: "lm-studio", api: "openai-responses",
        models: [{{ id: "local-model", tools: false }}],
      }} }} }},
    }}"""
    config = parse_config(text, source="bot.json5", env={})
    providers = {pid: OpenAIProvider(pid, pc) for pid, pc in config.providers().items()}
    client = FailoverClient(registry=ModelRegistry(config), providers=providers, log=events.log)
    try:
        answer = await client.complete(
            instructions="be brief", turns=HELLO, tools=[LOOKUP], steps=[STEP]
        )
    finally:
        await client.close()
        for provider in providers.values():
            await provider.close()
    assert answer.text == "from primary"
    [request] = primary.requests
    body = request.json or {}
    assert "tools" not in body
    assert not any(item.get("type") == "function_call" for item in body["input"])
    assert "shipped, arrives Tuesday" in request.prompt

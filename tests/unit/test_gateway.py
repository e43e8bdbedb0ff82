"""The gateway's contract, driven by the official `openai` SDK against a fake vLLM fleet.

Real databases (SQLite and PostgreSQL) hold the keys and the registry; only the model
servers are fakes (httpx.MockTransport), so routing, auth, errors and failover are tested
without a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from adapters.db import make_engine, make_sessionmaker
from gateway import auth
from gateway.settings import Settings
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway, chat, make_gateway


def test_base_model_is_served_without_adapter(gw: Gateway) -> None:
    raw = chat(gw.sdk(), BASE)
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith(f"answer from {BASE}")
    assert raw.headers["x-loraloop-arm"] == "base"
    assert raw.headers["x-loraloop-adapter-version"] == ""
    assert completion.id == raw.headers["x-request-id"]
    assert all(not r.loads for r in gw.fleet.replicas.values())


def test_alias_routes_to_champion_and_says_so(gw: Gateway) -> None:
    raw = chat(gw.sdk(), "default")
    assert raw.parse().model == gw.champion
    assert raw.headers["x-loraloop-adapter-version"] == gw.champion
    assert raw.headers["x-loraloop-arm"] == "champion"
    # The adapter was loaded on the replica that served it, from the store.
    served = [r for r in gw.fleet.replicas.values() if r.seen]
    assert len(served) == 1 and served[0].loads == [gw.champion]
    assert Path(served[0].loaded[gw.champion]).parent == gw.settings.data_dir / "store"


def test_pinned_version_and_alias_without_champion(gw: Gateway) -> None:
    assert chat(gw.sdk(), gw.pinned).headers["x-loraloop-arm"] == "pinned"
    raw = chat(gw.sdk(), "empty")
    assert raw.parse().model == BASE and raw.headers["x-loraloop-arm"] == "champion"


def test_adapter_is_loaded_once_and_reloaded_after_replica_restart(gw: Gateway) -> None:
    for _ in range(4):
        chat(gw.sdk(), gw.pinned)
    loads = sum(len(r.loads) for r in gw.fleet.replicas.values())
    assert loads == 2  # once per replica, however many requests
    for replica in gw.fleet.replicas.values():
        replica.restart()  # forgets its adapters; the gateway has not probed since
    for _ in range(2):
        assert chat(gw.sdk(), gw.pinned).parse().model == gw.pinned
    assert sum(len(r.loads) for r in gw.fleet.replicas.values()) == 4


def test_models_lists_base_versions_and_aliases(gw: Gateway) -> None:
    ids = {m.id for m in gw.sdk().models.list()}
    assert ids == {BASE, gw.pinned, gw.champion, "default", "empty"}  # not the candidate


@pytest.mark.parametrize("model", ["nope", "adapter-000000000000"])
def test_unknown_model_is_404_model_not_found(gw: Gateway, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(gw.sdk(), model)
    assert err.value.code == "model_not_found"
    assert err.value.body["param"] == "model"


def test_candidate_adapter_never_reaches_users(gw: Gateway, tmp_path: Path) -> None:
    candidate = next(v for v in registry_names(gw) if v["state"] == "candidate")["name"]
    with pytest.raises(openai.NotFoundError):
        chat(gw.sdk(), candidate)
    assert all(not r.seen for r in gw.fleet.replicas.values())


def registry_names(gw: Gateway) -> list[dict]:
    resp = gw.http.get("/admin/adapters", headers={"authorization": f"Bearer {gw.admin_key}"})
    assert resp.status_code == 200
    return resp.json()["data"]


def test_keys_missing_invalid_and_revoked_get_401(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        chat(gw.sdk("ll-not-a-key"), BASE)
    resp = gw.http.post("/v1/chat/completions", json={"model": BASE, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine).begin() as session:
        key_id = next(k.id for k in auth.list_keys(session) if k.name == "app")
        auth.revoke_key(session, key_id)
    engine.dispose()
    with pytest.raises(openai.AuthenticationError):
        chat(gw.sdk(), BASE)


def test_app_key_cannot_use_admin_routes(gw: Gateway) -> None:
    resp = gw.http.get("/admin/adapters", headers={"authorization": f"Bearer {gw.app_key}"})
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert {v["name"] for v in registry_names(gw)} >= {gw.pinned, gw.champion}


def test_vllm_admin_endpoints_are_not_exposed(gw: Gateway) -> None:
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        resp = gw.http.post(path, json={"lora_name": "x", "lora_path": "/etc"},
                            headers={"authorization": f"Bearer {gw.admin_key}"})
        assert resp.status_code == 404
        assert "error" in resp.json()
    assert all(not r.loads for r in gw.fleet.replicas.values())


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    (json.dumps({"model": BASE, "messages": "hi"}).encode(), "messages"),
    (json.dumps({"model": BASE, "messages": [{"content": "x"}]}).encode(), "messages.0.role"),
    (json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}).encode(),
     "max_tokens"),
    (json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode(),
     "stream"),
    (json.dumps({"model": 7, "messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
])
def test_malformed_requests_are_400_naming_the_field(gw: Gateway, body: bytes, param: str | None) -> None:
    resp = gw.http.post("/v1/chat/completions", content=body,
                        headers={"authorization": f"Bearer {gw.app_key}", "content-type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if param:
        assert param in error["message"]
    assert all(not r.seen for r in gw.fleet.replicas.values())


def test_completions_prompt_is_checked(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.sdk().completions.create(model=BASE, prompt=[])
    assert err.value.body["param"] == "prompt"
    assert gw.sdk().completions.create(model=BASE, prompt="Hello").choices[0].text.startswith("answer")


def test_body_over_limit_is_413(tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", max_body_bytes=1000)
    with gateway.http:
        with pytest.raises(openai.APIStatusError) as err:
            gateway.sdk().chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x" * 2000}])
        assert err.value.status_code == 413
        assert err.value.code == "request_too_large"
        assert chat(gateway.sdk(), BASE).parse().choices  # and the service carries on


def test_requests_spread_over_healthy_replicas(gw: Gateway) -> None:
    for _ in range(10):
        chat(gw.sdk(), BASE)
    assert [len(r.seen) for r in gw.fleet.replicas.values()] == [5, 5]


def test_failover_before_first_byte(gw: Gateway) -> None:
    down, up = gw.fleet.replicas.values()
    down.down = True
    for _ in range(4):
        assert chat(gw.sdk(), "default").parse().choices[0].message.content.endswith(up.url)
    ready = gw.operator_get("/ready").json()
    assert ready["healthy_upstreams"] == [up.url]


def test_a_dropped_connection_is_retried_on_the_same_replica(gw: Gateway) -> None:
    """A keep-alive connection the server just closed is no sign of a dead replica."""
    first, second = gw.fleet.replicas.values()
    second.down = True
    first.break_next = 1
    assert chat(gw.sdk(), BASE).parse().choices[0].message.content.endswith(first.url)
    assert gw.operator_get("/ready").json()["healthy_upstreams"] == [first.url]


def test_a_replica_dropping_every_connection_is_failed_over(gw: Gateway) -> None:
    first, second = gw.fleet.replicas.values()
    first.break_next = second.break_next = 2
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw.sdk(), BASE)
    assert err.value.status_code == 503
    assert gw.http.get("/ready").status_code == 503


def test_a_busy_replica_stays_in_rotation_until_probes_keep_timing_out(gw: Gateway) -> None:
    fleet = gw.http.app.state.gateway.fleet
    busy = next(iter(gw.fleet.replicas.values()))
    busy.slow_probes = True
    for probes in range(1, 4):
        gw.http.portal.call(fleet.probe_all)
        healthy = gw.operator_get("/ready").json()["healthy_upstreams"]
        assert (busy.url in healthy) == (probes < fleet.SLOW_PROBES_TO_DOWN)
    busy.slow_probes = False
    gw.http.portal.call(fleet.probe_all)
    assert busy.url in gw.operator_get("/ready").json()["healthy_upstreams"]


def test_all_upstreams_down_is_503_with_retry_after_then_recovers(gw: Gateway) -> None:
    for replica in gw.fleet.replicas.values():
        replica.down = True
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw.sdk(), BASE)
    assert err.value.status_code == 503
    assert err.value.response.headers["retry-after"] == str(gw.settings.retry_after_s)
    assert gw.http.get("/ready").status_code == 503
    assert gw.http.get("/health").status_code == 200
    for replica in gw.fleet.replicas.values():
        replica.down = False
    gw.http.portal.call(gw.http.app.state.gateway.fleet.probe_all)  # the periodic probe
    assert chat(gw.sdk(), BASE).parse().choices
    assert gw.http.get("/ready").status_code == 200


def test_upstream_timeout_is_504(gw: Gateway) -> None:
    for replica in gw.fleet.replicas.values():
        replica.slow = True
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw.sdk(), BASE)
    assert err.value.status_code == 504 and err.value.code == "upstream_timeout"


@pytest.mark.parametrize("model", [BASE, "default"])
def test_streaming_passes_chunks_through(gw: Gateway, model: str) -> None:
    stream = gw.sdk().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              stream=True)
    chunks = list(stream)
    assert len(chunks) > 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    expected = gw.champion if model == "default" else BASE
    assert text.startswith(f"answer from {expected}")
    assert len({c.id for c in chunks}) == 1


def test_streamed_request_fails_over_before_first_byte(gw: Gateway) -> None:
    first, second = gw.fleet.replicas.values()
    first.down = True
    text = "".join(c.choices[0].delta.content or "" for c in gw.sdk().chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert text.strip().endswith(second.url)


def test_upstream_client_errors_pass_through_in_openai_shape(gw: Gateway) -> None:
    """A 4xx from vLLM reaches the app unchanged, and the replica stays in rotation."""
    gw.fleet.completion_error = httpx.Response(400, json={"error": {
        "message": "max_tokens too large", "type": "BadRequestError", "param": "max_tokens", "code": 400}})
    with pytest.raises(openai.BadRequestError) as err:
        chat(gw.sdk(), BASE, max_tokens=10**6)
    assert err.value.body["param"] == "max_tokens"
    assert len(gw.operator_get("/ready").json()["healthy_upstreams"]) == 2


def test_auth_none_is_refused_outside_development() -> None:
    with pytest.raises(ValueError, match="development"):
        Settings(auth="none", environment="production")
    assert Settings(auth="none", environment="development").auth == "none"


def test_upstreams_setting_takes_comma_separated_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORALOOP_UPSTREAMS", "http://a:8000/, http://b:8000")
    assert Settings().upstreams == ["http://a:8000", "http://b:8000"]
    assert not Settings().embedded

"""Property-based fuzzing of every public and admin route from the OpenAPI document
(schemathesis + Hypothesis), on SQLite and PostgreSQL: no input makes the gateway fail
with a 5xx, and every error arrives in the OpenAI shape."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from gateway.app import create_app
from gateway.settings import Settings
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway

SPEC = create_app(Settings(upstreams=["http://unused:1"], database_url="sqlite://")).openapi()
schema = schemathesis.openapi.from_dict(SPEC)


def test_every_route_is_documented() -> None:
    documented = {(path, method.upper()) for path, item in SPEC["paths"].items() for method in item}
    assert {("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/feedback", "POST"),
            ("/v1/responses", "POST"), ("/v1/responses/{response_id}", "GET"),
            ("/v1/models", "GET"), ("/admin/experiments", "POST"), ("/ready", "GET")} <= documented


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_gateway_fail(case, gw: Gateway) -> None:  # type: ignore[no-untyped-def]
    key = gw.admin_key if case.path.startswith("/admin") else gw.app_key
    _aim(case, gw)
    request = case.as_transport_kwargs(base_url="http://testserver", headers={"authorization": f"Bearer {key}"})
    response = gw.http.request(request.pop("method"), request.pop("url"), **_httpx(request))
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text


def _aim(case, gw: Gateway) -> None:  # type: ignore[no-untyped-def]
    """Random names mostly miss (404); swap in real ones in about half the cases so the fuzzed
    rest of the request reaches routing, the proxy, the rating writer and the registry."""
    salt = len(str(case.body)) + len(str(case.path_parameters))
    if salt % 2:
        return
    if isinstance(case.body, dict):
        if "model" in case.body:
            case.body["model"] = ("default", gw.pinned, BASE)[salt % 3]
        if "canary" in case.body:
            case.body["canary"], case.body["alias"] = gw.pinned, "default"
        if case.path == "/v1/feedback" and "id" in case.body:
            case.body["id"] = gw.sdk().chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}]).id
    if case.path_parameters:
        for name in case.path_parameters:
            real = {"alias": lambda: "default", "name": lambda: gw.pinned,
                    "response_id": lambda: gw.sdk().responses.create(model="default", input="hi").id}
            case.path_parameters[name] = real[name]() if name in real else case.path_parameters[name]


def _httpx(kwargs: dict) -> dict:
    """requests-style keyword arguments (what schemathesis produces) in httpx's names."""
    out = {"headers": kwargs.get("headers"), "params": kwargs.get("params"), "cookies": kwargs.get("cookies")}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        out["content"] = kwargs["data"]
    return out


def test_nul_characters_get_a_400_and_never_stall_the_log(gw: Gateway) -> None:
    """Found by fuzzing on PostgreSQL, which cannot store NUL in text: a NUL in a rating
    was a 500, and one in a prompt poisoned the interaction log's batch for good."""
    app, admin = {"authorization": f"Bearer {gw.app_key}"}, {"authorization": f"Bearer {gw.admin_key}"}
    answer = gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}]).id
    refused = [
        gw.http.post("/v1/feedback", json={"id": answer, "rating": "up", "comment": "a\x00b"}, headers=app),
        gw.http.post("/v1/chat/completions", headers=app,
                     json={"model": "default", "messages": [{"role": "user", "content": "a\x00b"}]}),
        gw.http.post("/v1/completions", json={"model": "default", "prompt": "x", "user": "\x00"}, headers=app),
        gw.http.get("/admin/adapters/a%00b", headers=admin),
    ]
    assert [r.status_code for r in refused] in ([400, 400, 400, 400], [400, 400, 400, 404])  # 404: SQLite stores it
    assert all(r.json()["error"]["type"] in ("invalid_request_error", "not_found_error") for r in refused)
    # the log still writes, and the earlier answer can still be rated
    assert gw.http.post("/v1/feedback", json={"id": answer, "rating": "up"}, headers=app).status_code == 200


def test_a_row_the_database_refuses_is_dropped_alone(gw: Gateway) -> None:
    """Whatever the reason a database refuses one interaction, the rest of its batch is
    written and the log keeps going (a retried poison batch would stall it for good)."""
    from sqlalchemy.exc import DataError

    log = gw.http.app.state.gateway.log
    original = log._write

    def refusing(batch):  # type: ignore[no-untyped-def]
        if any(b'"q2"' in rec.request_body for rec in batch):
            raise DataError("INSERT", {}, ValueError("refused"))
        original(batch)

    log._write = refusing
    ids = [gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": f"q{i}"}],
                                            user="u").id for i in range(5)]
    gw.http.portal.call(log.flush)
    log._write = original
    app = {"authorization": f"Bearer {gw.app_key}"}
    rated = [gw.http.post("/v1/feedback", json={"id": i, "rating": "up"}, headers=app).status_code for i in ids]
    assert rated == [200, 200, 404, 200, 200] and log.refused == 1 and log.dropped == 0

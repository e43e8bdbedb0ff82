"""Input no client should be able to stall or corrupt anything with: strings that cannot be
stored (lone surrogates, NUL), numbers out of range, deep nesting, odd content parts; rows
the database refuses; and what operators alone may read. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, StatementError

from adapters.db import make_engine, make_sessionmaker
from adapters.errors import LogQueueFull
from adapters.feedback import Rating
from adapters.schema import Interaction
from gateway.interaction_log import InteractionLog, Record
from tests.unit.harness import Gateway, make_gateway

SURROGATE = "\\ud800"  # as it travels in JSON: valid JSON, no valid UTF-8


def post_raw(gw: Gateway, path: str, raw: str, key: str | None = None):  # type: ignore[no-untyped-def]
    return gw.http.post(path, content=raw.encode(), headers={
        "authorization": f"Bearer {key or gw.app_key}", "content-type": "application/json"})


def stored_interactions(gw: Gateway) -> int:
    flush_within(gw, 10)
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        n = session.scalar(select(func.count()).select_from(Interaction))
    engine.dispose()
    return int(n or 0)


def flush_within(gw: Gateway, seconds: float) -> None:
    async def flush() -> None:
        with anyio.fail_after(seconds):
            await gw.http.app.state.gateway.log.flush()

    gw.http.portal.call(flush)


def healthy_loop(gw: Gateway) -> None:
    """The loop still works: a plain answer is logged and can be rated."""
    answer = gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    rated = gw.http.post("/v1/feedback", json={"id": answer.id, "rating": "up"},
                         headers={"authorization": f"Bearer {gw.app_key}"})
    assert rated.status_code == 200, rated.text


CHAT_BODIES = {
    "message": '{"model":"default","messages":[{"role":"user","content":"a%sb"}]}',
    "user": '{"model":"default","user":"%s","messages":[{"role":"user","content":"hi"}]}',
    "regenerates": '{"model":"default","regenerates":"x%s","messages":[{"role":"user","content":"hi"}]}',
    "content part": '{"model":"default","messages":[{"role":"user","content":[{"type":"text","text":"%s"}]}]}',
    "tool arguments": ('{"model":"default","messages":[{"role":"user","content":"hi"},{"role":"assistant",'
                       '"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\\"a\\":\\"%s\\"}"}}]},'
                       '{"role":"tool","tool_call_id":"c1","content":"ok"}]}'),
    "a key": '{"model":"default","messages":[{"role":"user","content":"hi","%s":1}]}',
}


@pytest.mark.parametrize("where", sorted(CHAT_BODIES))
def test_a_lone_surrogate_anywhere_in_a_completion_is_a_400_and_the_loop_lives_on(gw: Gateway, where: str) -> None:
    """One request with "user": "\\ud800" used to fail the log's batch forever: nothing was
    logged again and every later rating was a 404."""
    before = stored_interactions(gw)
    resp = post_raw(gw, "/v1/chat/completions", CHAT_BODIES[where] % SURROGATE)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error" and "surrogate" in resp.json()["error"]["message"]
    assert stored_interactions(gw) == before  # changed nothing
    completion = post_raw(gw, "/v1/completions", '{"model":"default","prompt":"' + SURROGATE + '"}')
    assert completion.status_code == 400
    healthy_loop(gw)


def test_a_valid_surrogate_pair_is_an_ordinary_character(gw: Gateway) -> None:
    resp = post_raw(gw, "/v1/chat/completions", CHAT_BODIES["message"] % "\\ud83d\\ude00")
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("field", ["id", "user", "comment"])
def test_a_lone_surrogate_in_a_rating_is_a_400(gw: Gateway, field: str) -> None:
    answer = gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}]).id
    body = {"id": answer, "rating": "up", field: "x" + SURROGATE}
    if field == "id":
        body["id"] = answer[:20] + SURROGATE
    raw = json.dumps(body).replace("\\\\ud800", SURROGATE)
    resp = post_raw(gw, "/v1/feedback", raw)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
    healthy_loop(gw)


@pytest.mark.parametrize("raw, says", [
    ('{"model":"default","messages":' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"model":"default","messages":[{"role":"user","content":"hi","x":' + '{"a":' * 80 + "1" + "}" * 80 + "}]}",
     "nested too deeply"),
    ('{"model":"default","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}', "NaN"),
    ('{"model":"default","temperature":-Infinity,"messages":[{"role":"user","content":"hi"}]}', "Infinity"),
    ('{"model":"default","temperature":1e999,"messages":[{"role":"user","content":"hi"}]}', "out of range"),
    ('{"model":"default","max_tokens":' + "9" * 5000 + ',"messages":[{"role":"user","content":"hi"}]}', "JSON"),
])
def test_numbers_out_of_range_and_deep_nesting_are_400s(gw: Gateway, raw: str, says: str) -> None:
    resp = post_raw(gw, "/v1/chat/completions", raw)
    assert resp.status_code == 400 and says in resp.json()["error"]["message"], resp.text[:300]


# Hypothesis: JSON values built from what hurts: surrogates, NUL, huge and non-finite
# numbers, deep nesting, content parts of every odd shape.
hostile_text = st.one_of(st.text(max_size=8), st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\x00", "\ud83d\ude00"]))
hostile_number = st.one_of(st.integers(min_value=-(10 ** 40), max_value=10 ** 40),
                           st.floats(allow_nan=True, allow_infinity=True), st.just(10 ** 4000))
leaf = st.one_of(st.none(), st.booleans(), hostile_text, hostile_number)
hostile_json = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(hostile_text, inner, max_size=3)),
                            max_leaves=12)
content = st.one_of(hostile_text, st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "?"]), "text": hostile_json}),
    hostile_json), max_size=3))


def _encode(value: object, depth: int) -> str:
    """JSON text for `value`, written by hand so lone surrogates and non-finite numbers reach
    the wire as a hostile client would send them, nested `depth` extra levels."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    return "[" * depth + text + "]" * depth


@given(message=content, extra=hostile_json, user=hostile_text, depth=st.integers(0, 200))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_bodies_never_fail_the_gateway_or_stall_the_log(gw: Gateway, message: object, extra: object,
                                                                user: str, depth: int) -> None:
    raw = (f'{{"model":"default","user":{json.dumps(user)},"messages":[{{"role":"user",'
           f'"content":{_encode(message, depth)}}}],"metadata":{_encode(extra, 0)}}}')
    resp = post_raw(gw, "/v1/chat/completions", raw)
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code >= 400:
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    flush_within(gw, 5)  # never a stall: whatever was served is written or dropped


@pytest.mark.parametrize("refusal", [
    IntegrityError("INSERT", {}, ValueError("refused")),
    StatementError("encode", "INSERT", {}, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")),
    TypeError("not serializable"),
], ids=["integrity", "encoding", "type"])
def test_any_refusal_that_is_not_an_outage_drops_the_row_alone(gw: Gateway, refusal: Exception) -> None:
    """Only an outage is retried; any other refusal would be refused again forever."""
    log = gw.http.app.state.gateway.log
    original = log._write

    def refusing(batch):  # type: ignore[no-untyped-def]
        if any(rec.end_user == "poison" for rec in batch):
            raise refusal
        original(batch)

    log._write = refusing
    try:
        ids = [gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                                user="poison" if i == 1 else "u").id for i in range(3)]
        flush_within(gw, 5)
    finally:
        log._write = original
    app = {"authorization": f"Bearer {gw.app_key}"}
    rated = [gw.http.post("/v1/feedback", json={"id": i, "rating": "up"}, headers=app).status_code for i in ids]
    assert rated == [200, 404, 200] and log.refused == 1


def test_one_rating_the_database_refuses_does_not_fail_the_others(gw: Gateway) -> None:
    state = gw.http.app.state.gateway
    answers = [gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}]).id
               for _ in range(3)]
    gw.http.portal.call(state.log.flush)
    original = state.ratings._write

    def refusing(ratings):  # type: ignore[no-untyped-def]
        if any(r.comment == "poison" for r in ratings):
            raise StatementError("encode", "INSERT", {}, ValueError("refused"))
        return original(ratings)

    state.ratings._write = refusing

    async def together() -> list:
        return await asyncio.gather(*(state.ratings.submit(Rating(a, None, 1, "poison" if i == 1 else None, "acme"))
                                      for i, a in enumerate(answers)), return_exceptions=True)

    try:
        results = gw.http.portal.call(together)
    finally:
        state.ratings._write = original
    assert [getattr(r, "stored", type(r).__name__) for r in results] == [True, "InvalidRequest", True]


def _record(i: int, size: int = 0) -> Record:
    return Record(id=f"chatcmpl-{i}", key_id=None, tenant="t", end_user="u", requested_model="m",
                  adapter_version=None, arm="base", kind="chat", request_body=b" " * size, regenerates=None,
                  streamed=False, started=time.perf_counter(), status=200, raw=b"{}")


def test_the_log_queue_is_bounded_by_bytes(gw: Gateway) -> None:
    """10,000 entries of 4 MiB prompts would be 40 GiB: bytes bound the queue too."""
    log = InteractionLog(gw.http.app.state.gateway.sessions, 10_000, "drop", max_bytes=10 << 20)

    async def fill() -> None:
        for i in range(5):
            log.record(_record(i, 4 << 20))

    gw.http.portal.call(fill)
    assert (log.queue.qsize(), log.dropped) == (2, 3) and log.queued_bytes <= log.max_bytes
    rejecting = InteractionLog(gw.http.app.state.gateway.sessions, 10_000, "reject", max_bytes=1 << 20)

    async def fill_one() -> None:
        rejecting.record(_record(0, 1 << 20))

    rejecting.admit()
    gw.http.portal.call(fill_one)
    with pytest.raises(LogQueueFull):  # under `reject`, a log full of bytes refuses new completions
        rejecting.admit()


def test_a_rating_waits_for_its_own_answer_not_for_an_idle_log(gw: Gateway) -> None:
    """Under sustained traffic the log is never idle; a fresh answer's rating must not wait
    for that (it used to wait up to a second, holding up every other rating)."""
    sessions = gw.http.app.state.gateway.sessions

    async def scenario() -> tuple[float, bool]:
        log = InteractionLog(sessions, 10_000, "drop", batch_size=5, flush_interval_s=0.05)
        write = log._write

        def slow_write(batch: list[Record]) -> None:  # a database that keeps up only just
            time.sleep(0.02)
            write(batch)

        log._write = slow_write  # type: ignore[method-assign]
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(log.run)

            async def traffic() -> None:
                for i in range(1, 10_000):
                    log.record(_record(10_000 + i))
                    await anyio.sleep(0.001)

            tasks.start_soon(traffic)
            await anyio.sleep(0.1)
            log.record(_record(1))
            started = time.perf_counter()
            await log.wait_written("chatcmpl-1")
            waited = time.perf_counter() - started
            with anyio.move_on_after(1) as idle:
                await log.flush()
            tasks.cancel_scope.cancel()
        return waited, idle.cancelled_caught

    waited, never_idle = gw.http.portal.call(scenario)
    assert never_idle  # the old wait (the whole log idle) would not have returned
    assert waited < 1.0


def test_metrics_and_ready_details_are_for_operators_only(gw: Gateway) -> None:
    """They name upstream URLs and tenant-owned aliases and versions."""
    assert gw.http.get("/metrics").status_code == 401
    assert gw.http.get("/metrics", headers={"authorization": f"Bearer {gw.app_key}"}).status_code == 403
    assert gw.operator_get("/metrics").status_code == 200
    public = gw.http.get("/ready")
    assert public.status_code == 200 and public.json() == {"ready": True}
    assert "upstreams" in gw.operator_get("/ready").json()
    assert all(url not in gw.http.get("/ready", headers={"authorization": f"Bearer {gw.app_key}"}).text
               for url in gw.fleet.urls)


def test_with_an_admin_port_metrics_answer_only_there(tmp_path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(tmp_path, db_url, admin_port=9001)
    with gw.http:
        admin = {"authorization": f"Bearer {gw.admin_key}"}
        assert gw.http.get("/metrics", headers=admin).status_code == 404
        assert gw.http.get("http://testserver:9001/metrics").status_code == 200  # Prometheus: no key
        assert "upstreams" in gw.http.get("http://testserver:9001/ready").json()
        assert gw.http.get("/ready").json() == {"ready": True}


def test_metrics_can_be_public_on_a_trusted_network(tmp_path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(tmp_path, db_url, metrics_public=True)
    with gw.http:
        assert gw.http.get("/metrics").status_code == 200
        assert "upstreams" in gw.http.get("/ready").json()


@pytest.mark.parametrize("raw", [
    '{"model":"default","messages":[{"role":"user","content":"a\ud800b"}]}'.encode("utf-8", "surrogatepass"),
    '{"model":"default","messages":[{"role":"user","content":"\\ud800"}]}'.encode("utf-16-le"),
    b'{"model":"default","messages":[{"role":"user","content":"\xff\xfe"}]}',
], ids=["surrogate-in-the-bytes", "utf-16", "not-utf-8"])
def test_bodies_that_are_not_strict_utf8_are_400s(gw: Gateway, raw: bytes) -> None:
    """json.loads(bytes) guesses UTF-16/32 and decodes UTF-8 with surrogatepass: a surrogate
    sent as raw bytes used to reach the database."""
    before = stored_interactions(gw)
    resp = gw.http.post("/v1/chat/completions", content=raw, headers={
        "authorization": f"Bearer {gw.app_key}", "content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
    rated = gw.http.post("/v1/feedback", content='{"id":"x","rating":"up","comment":"\udc00"}'.encode(
        "utf-8", "surrogatepass"), headers={"authorization": f"Bearer {gw.app_key}",
                                            "content-type": "application/json"})
    assert rated.status_code == 400, rated.text
    assert stored_interactions(gw) == before


@pytest.mark.parametrize("where", ["user", "regenerates", "x-loraloop-user", "x-loraloop-regenerates"])
def test_values_longer_than_their_columns_are_400s(gw: Gateway, where: str) -> None:
    """PostgreSQL refuses a 300-character end user (VARCHAR(256)): it was a 200 whose
    interaction was then dropped, so its rating was a 404."""
    body: dict = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {gw.app_key}"}
    if where.startswith("x-"):
        headers[where] = "u" * 300
    else:
        body[where] = "u" * 300
    resp = gw.http.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == where.removeprefix("x-loraloop-")
    at_limit = {"model": "default", "user": "u" * 256, "regenerates": "r" * 64,
                "messages": [{"role": "user", "content": "hi"}]}
    assert gw.http.post("/v1/chat/completions", json=at_limit, headers={"authorization": headers["authorization"]}) \
        .status_code == 200


def test_one_refused_row_costs_a_few_transactions_not_one_per_row(gw: Gateway) -> None:
    """A refused batch is written in halves: one poisoned row among 512 costs about
    2 log2(512) transactions, where row by row it cost 512 (and ~25x the time)."""
    log = gw.http.app.state.gateway.log
    calls: list[int] = []
    original = log._write

    def counting(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if any(rec.id == "chatcmpl-7" for rec in batch):
            raise IntegrityError("INSERT", {}, ValueError("refused"))
        original(batch)

    log._write = counting
    records = [_record(i) for i in range(512)]
    assert log._write_each(records) == []
    assert log.refused == 1 and log.written == 511 and len(calls) <= 2 * 9 + 2


def test_refused_requests_keep_no_prompt_and_queue_what_they_weigh(gw: Gateway) -> None:
    """Only served answers keep their prompt; a queued entry counts its raw bytes (parsed,
    4 MiB of `{}` was 97 MiB of objects)."""
    gw.fleet.replicas[gw.fleet.urls[0]].error_next = gw.fleet.replicas[gw.fleet.urls[1]].error_next = 3
    gw.fleet.replicas[gw.fleet.urls[0]].error_status = gw.fleet.replicas[gw.fleet.urls[1]].error_status = 400
    resp = post_raw(gw, "/v1/chat/completions", '{"model":"default","messages":[{"role":"user","content":"x"}]}')
    assert resp.status_code == 400
    flush_within(gw, 5)
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        row = session.scalars(select(Interaction).where(Interaction.status == 400)).one()
    engine.dispose()
    assert row.prompt is None and row.response is None
    assert _record(0, 1000).size == 1000 + 2


def test_a_body_of_a_million_containers_is_refused_off_the_event_loop(gw: Gateway) -> None:
    raw = '{"model":"default","messages":[{"role":"user","content":"hi"}],"metadata":[' + \
        ",".join(["[]"] * 200_000) + "]}"
    assert len(raw) > 64 << 10
    resp = post_raw(gw, "/v1/chat/completions", raw)
    assert resp.status_code == 400 and "objects and arrays" in resp.json()["error"]["message"]


def test_a_pool_timeout_is_a_503_not_a_500() -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from gateway.errors import error_response

    resp = error_response(PoolTimeout("QueuePool limit reached"))
    assert resp.status_code == 503 and b"database_unavailable" in resp.body


def test_the_operators_port_serves_metrics_also_without_the_admin_api(tmp_path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(tmp_path, db_url, admin_port=9001, admin_api=False)
    with gw.http:
        assert gw.http.get("http://testserver:9001/metrics").status_code == 200
        admin = {"authorization": f"Bearer {gw.admin_key}"}
        assert gw.http.get("/metrics", headers=admin).status_code == 404
        assert gw.http.get("http://testserver:9001/admin/adapters", headers=admin).status_code == 404

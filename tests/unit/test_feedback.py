"""The interaction log and `POST /v1/feedback`, on SQLite and PostgreSQL, through the gateway."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Feedback, Interaction
from gateway.app import create_app
from tests.fake_vllm import BASE, FakeFleet
from tests.unit.harness import Gateway, chat, make_gateway, new_key


def rows(gw: Gateway, table) -> list:  # type: ignore[no-untyped-def]
    """The table's rows, once the interaction log has written what it holds (a stopped
    gateway has written it on its way out)."""
    if gw.http.portal is not None:
        gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        found = list(session.scalars(select(table)))
    engine.dispose()
    return found


def rate(gw: Gateway, key: str | None = None, **body):  # type: ignore[no-untyped-def]
    return gw.http.post("/v1/feedback", json=body, headers={"authorization": f"Bearer {key or gw.app_key}"})


def test_every_completion_is_logged_with_attribution(gw: Gateway) -> None:
    plain = chat(gw.sdk(), "default", user="u-1").parse()
    streamed = list(gw.sdk().chat.completions.create(
        model=gw.pinned, messages=[{"role": "user", "content": "stream it"}], stream=True,
        extra_headers={"x-loraloop-user": "u-2"}))
    text = gw.sdk().completions.create(model=BASE, prompt="Hello")
    logged = {i.id: i for i in rows(gw, Interaction)}
    assert set(logged) == {plain.id, streamed[0].id, text.id}

    first = logged[plain.id]
    assert (first.tenant, first.end_user, first.requested_model, first.adapter_version, first.arm) == \
        ("acme", "u-1", "default", gw.champion, "champion")
    assert first.prompt == [{"role": "user", "content": "hi"}]
    assert first.response == plain.choices[0].message.content
    assert (first.finish_reason, first.prompt_tokens, first.completion_tokens, first.status) == ("stop", 5, 7, 200)
    assert first.latency_ms > 0 and first.key_id is not None

    second = logged[streamed[0].id]
    assert (second.end_user, second.adapter_version, second.arm) == ("u-2", gw.pinned, "pinned")
    assert second.response == "".join(c.choices[0].delta.content or "" for c in streamed)

    third = logged[text.id]
    assert (third.kind, third.prompt, third.response) == ("completions", "Hello", text.choices[0].text)


def test_keys_that_opt_out_of_prompt_logging_store_no_text(gw: Gateway) -> None:
    key = new_key(gw, "private", log_prompts=False)
    completion = chat(gw.sdk(key), BASE, user="p").parse()
    [logged] = rows(gw, Interaction)
    assert logged.id == completion.id and logged.prompt is None and logged.response is None
    assert logged.completion_tokens == 7  # metadata is still there for metrics


def test_rating_is_stored_and_a_changed_mind_replaces_it(gw: Gateway) -> None:
    completion = chat(gw.sdk(), "default", user="ann").parse()
    first = rate(gw, id=completion.id, rating="up")
    assert first.status_code == 200
    assert first.json() == {"object": "feedback", "id": completion.id, "kind": "rating", "rating": "up", "user": "ann",
                            "replaced": False}
    again = rate(gw, id=completion.id, rating=-1, comment="on second thought, too long")
    assert again.status_code == 200 and again.json()["replaced"] is True
    [stored] = rows(gw, Feedback)
    assert (stored.interaction_id, stored.end_user, stored.rating, stored.comment) == \
        (completion.id, "ann", -1, "on second thought, too long")
    # Another user rating the same answer is a second rating, not a replacement.
    assert rate(gw, id=completion.id, rating="up", user="bob").json()["replaced"] is False
    assert sorted((f.end_user, f.rating) for f in rows(gw, Feedback)) == [("ann", -1), ("bob", 1)]


def test_only_the_tenant_that_got_the_answer_may_rate_it(gw: Gateway) -> None:
    completion = chat(gw.sdk(), "default").parse()
    other = new_key(gw, "someone-else")
    refused = rate(gw, key=other, id=completion.id, rating="down")
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "id"
    same_tenant = new_key(gw, "acme")
    assert rate(gw, key=same_tenant, id=completion.id, rating="up").status_code == 200
    assert [f.rating for f in rows(gw, Feedback)] == [1]


@pytest.mark.parametrize("body,param,status", [
    ({"id": "chatcmpl-nope", "rating": "up"}, "id", 404),
    ({"id": "X", "rating": "sideways"}, "rating", 400),
    ({"id": "X", "rating": 5}, "rating", 400),
    ({"rating": "up"}, "id", 400),
    ({"id": "X", "rating": "up", "comment": "x" * 2001}, "comment", 400),
    ({"id": "X", "rating": "up", "stars": 5}, "stars", 400),
])
def test_bad_ratings_get_clear_errors_and_change_nothing(gw: Gateway, body: dict, param: str,
                                                         status: int) -> None:
    completion = chat(gw.sdk(), "default").parse()
    if body.get("id") == "X":
        body = {**body, "id": completion.id}
    resp = rate(gw, **body)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert rows(gw, Feedback) == []


def test_feedback_needs_a_key(gw: Gateway) -> None:
    resp = gw.http.post("/v1/feedback", json={"id": "x", "rating": "up"})
    assert resp.status_code == 401


def test_regeneration_links_are_recorded(gw: Gateway) -> None:
    disliked = chat(gw.sdk(), "default", user="u").parse()
    retry = chat(gw.sdk(), "default", user="u", extra_body={"regenerates": disliked.id}).parse()
    via_header = chat(gw.sdk(), "default", extra_headers={"x-loraloop-regenerates": retry.id}).parse()
    logged = {i.id: i.regenerates for i in rows(gw, Interaction)}
    assert logged == {disliked.id: None, retry.id: disliked.id, via_header.id: retry.id}
    # The link is loraloop's, not OpenAI's: vLLM never saw it.
    assert all("regenerates" not in body for r in gw.fleet.replicas.values() for body in r.seen)


class Stall:
    """Blocks the interaction log's writer (as a database that stopped answering would)."""

    def __init__(self, gateway: Gateway):
        self.log = gateway.http.app.state.gateway.log
        self.entered, self.gate = threading.Event(), threading.Event()
        original = self.log._write

        def stuck(batch):  # type: ignore[no-untyped-def]
            self.entered.set()
            self.gate.wait(30)
            original(batch)

        self.log._write = stuck

    def __enter__(self) -> Stall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()


def test_full_log_drops_and_counts_by_default(tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", log_queue_size=2)
    with gateway.http, Stall(gateway) as stall:
        chat(gateway.sdk(), BASE)
        assert stall.entered.wait(5)  # the writer holds entry 1; the queue holds 2 more
        for _ in range(4):
            assert chat(gateway.sdk(), BASE).parse().choices  # completions carry on
        assert stall.log.dropped == 2


def test_full_log_can_refuse_with_503(tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", log_queue_size=2,
                           log_overflow="reject")
    with gateway.http, Stall(gateway) as stall:
        chat(gateway.sdk(), BASE)
        assert stall.entered.wait(5)
        for _ in range(2):
            chat(gateway.sdk(), BASE)
        with pytest.raises(openai.InternalServerError) as err:
            chat(gateway.sdk(), BASE)
        assert err.value.status_code == 503 and err.value.code == "interaction_log_full"
        assert "retry-after" in err.value.response.headers
        assert stall.log.dropped == 0
    assert len(rows(gateway, Interaction)) == 3  # a graceful stop wrote what was queued


def test_the_openai_sdk_can_send_feedback(gw: Gateway) -> None:
    """What the README shows apps: the SDK's generic `post` reaches the feedback route."""
    client = gw.sdk()
    answer = client.chat.completions.create(model="default", user="ada",
                                            messages=[{"role": "user", "content": "hi"}])
    stored = client.post("/feedback", cast_to=object, body={"id": answer.id, "rating": "up"})
    assert stored == {"object": "feedback", "id": answer.id, "kind": "rating", "rating": "up", "user": "ada",
                      "replaced": False}
    with pytest.raises(openai.NotFoundError):
        client.post("/feedback", cast_to=object, body={"id": "chatcmpl-unknown", "rating": "up"})


def test_rating_an_answer_another_replica_has_not_written_yet(tmp_path: Path, db_url: str) -> None:
    """Two gateway replicas share a database: one serves, the other gets the thumbs up at
    once, before the first has written the interaction. The rating still lands."""
    served_by = make_gateway(tmp_path, db_url)
    other = TestClient(create_app(served_by.settings, transport=FakeFleet(2).transport()))
    with served_by.http, other:
        log = served_by.http.app.state.gateway.log
        log.flush_interval_s = 0.1  # the serving replica writes its log every 100 ms
        answer = chat(served_by.sdk(), "default").parse()
        assert answer.id in log.pending  # not in the database yet
        resp = other.post("/v1/feedback", json={"id": answer.id, "rating": "up"},
                          headers={"authorization": f"Bearer {served_by.app_key}"})
        assert resp.status_code == 200
    assert [(f.interaction_id, f.rating) for f in rows(served_by, Feedback)] == [(answer.id, 1)]


def test_a_slow_database_never_turns_a_fresh_answers_rating_into_a_404(gw: Gateway) -> None:
    """A busy database (SQLite waits up to 30 s for its write lock) can take seconds to take
    the interaction row. The answer was served: its rating waits for the row and lands; past
    the wait it is a retryable 503, never "no completion with that id"."""
    state = gw.http.app.state.gateway
    write, release = state.log._write, threading.Event()

    def slow_write(batch) -> None:  # type: ignore[no-untyped-def]
        release.wait(10)
        write(batch)

    state.log._write = slow_write
    answer = chat(gw.sdk(), "default", user="ada").parse()
    timer = threading.Timer(2.0, release.set)  # longer than the one second a rating used to wait
    timer.start()
    assert rate(gw, id=answer.id, rating="up").status_code == 200
    timer.join()

    release.clear()
    state.ratings.pending_wait_s = 0.3
    second = chat(gw.sdk(), "default", user="ada").parse()
    refused = rate(gw, id=second.id, rating="down")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "answer_not_stored_yet"
    release.set()
    assert rate(gw, id=second.id, rating="down").status_code == 200
    assert sorted((f.interaction_id, f.rating) for f in rows(gw, Feedback)) == \
        sorted([(answer.id, 1), (second.id, -1)])

"""Feedback beyond one thumb, end to end on SQLite and PostgreSQL: given through
`POST /v1/feedback`, stored once (sent again, it replaces), attributed, exported in TRL's
formats and counted in the data report; bad input is refused in the OpenAI shape and
changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from adapters.db import make_engine, make_sessionmaker
from adapters.feedback import purge_user, votes
from adapters.schema import Feedback, Interaction, Signal
from tests.unit.harness import Gateway, new_key
from tests.unit.test_feedback import rate, rows
from trainer.data import IMPLICIT_WEIGHT, DataConfig, build, report

# every prompt on the training side of the held-out split
ALL_TRAIN = DataConfig(heldout_fraction=0.0)


def ask(gw: Gateway, prompt: str = "hi", user: str = "ann", key: str | None = None, **kw):  # type: ignore[no-untyped-def]
    return gw.sdk(key).chat.completions.create(model="default", user=user,
                                               messages=[{"role": "user", "content": prompt}], **kw)


def data(gw: Gateway, fmt: str) -> list[dict]:
    rows(gw, Interaction)  # the log written
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        out = build(session, fmt, ALL_TRAIN)["train"]
    engine.dispose()
    return out


def figures(gw: Gateway) -> dict:
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        out = report(session, ALL_TRAIN)
    engine.dispose()
    return out


def count(gw: Gateway, table) -> int:  # type: ignore[no-untyped-def]
    return len(rows(gw, table))


def test_each_choice_of_an_n_answer_is_rated_and_they_pair(gw: Gateway) -> None:
    answer = ask(gw, n=3)
    assert len(answer.choices) == 3
    assert rate(gw, id=answer.id, choice=2, rating="up").json()["kind"] == "rating"
    assert rate(gw, id=answer.id, rating="down").status_code == 200  # choice 0
    assert rate(gw, id=answer.id, choice=1, rating="up", user="bob").status_code == 200
    assert rate(gw, id=answer.id, choice=2, rating="up").json()["replaced"] is True  # stored once
    assert count(gw, Feedback) == 3
    logged = rows(gw, Interaction)[0]
    assert logged.choices == [c.message.content for c in answer.choices]

    pairs = data(gw, "dpo")
    texts = [c.message.content for c in answer.choices]
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs} == \
        {(texts[2], texts[0]), (texts[1], texts[0])}
    assert figures(gw)["liked"] == 2

    # experiments and segments count the request once; training each choice
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        counted = [session.scalar(select(func.count()).select_from(votes(per_choice=per))) for per in (False, True)]
    engine.dispose()
    assert counted == [1, 3]

    refused = rate(gw, id=answer.id, choice=3, rating="up")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "choice"
    one = ask(gw)  # a one-choice answer has choice 0 only
    assert rate(gw, id=one.id, choice=1, rating="up").status_code == 400
    assert count(gw, Feedback) == 3


def test_a_streamed_n_answer_keeps_every_choices_text(gw: Gateway) -> None:
    chunks = list(ask(gw, n=2, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == k) for k in (0, 1)]
    assert rows(gw, Interaction)[0].choices == texts and texts[0] != texts[1]


def test_a_preference_between_two_answers_is_a_pair_counted_once(gw: Gateway) -> None:
    a, b = ask(gw, "Plan my trip"), ask(gw, "Plan my trip")
    given = rate(gw, preferred=b.id, other=a.id)
    assert given.status_code == 200 and given.json() == {"object": "feedback", "id": b.id, "kind": "preference",
                                                         "user": "ann", "replaced": False}
    assert rate(gw, preferred=b.id, other=a.id).json()["replaced"] is True
    # another user's verdict on the same two answers, either way round: the answer's own user's counts
    assert rate(gw, preferred=a.id, other=b.id, user="mallory").status_code == 200
    assert count(gw, Signal) == 2

    pairs = data(gw, "dpo")
    assert [(p["source"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == \
        [("preference", b.choices[0].message.content, a.choices[0].message.content)]
    assert figures(gw)["pair_sources"] == {"preference": 1} and figures(gw)["signals"] == {"preference": 2}


def test_a_user_who_changes_their_mind_is_heard_and_invented_users_share_one_cap(gw: Gateway) -> None:
    a, b = ask(gw, "Plan my trip"), ask(gw, "Plan my trip")
    rate(gw, preferred=a.id, other=b.id)
    rate(gw, preferred=b.id, other=a.id)  # the same user (ann), the other way round: this one counts
    [pair] = data(gw, "dpo")
    assert pair["chosen"][0]["content"] == b.choices[0].message.content
    # a key attributing verdicts on ann's answers to invented users is still capped as ann
    for n in range(4):
        c, d = ask(gw, f"prompt {n}"), ask(gw, f"prompt {n}")
        rate(gw, preferred=c.id, other=d.id, user=f"invented-{n}")
    rows(gw, Interaction)
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine)() as session:
        capped = build(session, "dpo", DataConfig(heldout_fraction=0.0, max_per_user=2))["train"]
    engine.dispose()
    assert len(capped) == 2


def test_answers_whose_prompts_were_not_logged_cannot_be_paired(gw: Gateway) -> None:
    quiet = new_key(gw, log_prompts=False)
    a, b = ask(gw, "secret", key=quiet), ask(gw, "secret", key=quiet)
    refused = rate(gw, preferred=a.id, other=b.id)
    assert refused.status_code == 400 and "not logged" in refused.json()["error"]["message"]
    assert rate(gw, preferred=True, other=0, id=a.id).status_code == 400  # a boolean is no choice index


def test_a_preference_between_choices_of_one_answer(gw: Gateway) -> None:
    answer = ask(gw, n=2)
    assert rate(gw, id=answer.id, preferred=1, other=0).status_code == 200
    [pair] = data(gw, "dpo")
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == \
        (answer.choices[1].message.content, answer.choices[0].message.content)


def test_a_preference_needs_two_answers_to_one_prompt_of_ones_own_tenant(gw: Gateway) -> None:
    a, b = ask(gw, "one prompt"), ask(gw, "another prompt")
    refused = rate(gw, preferred=a.id, other=b.id)
    assert refused.status_code == 400 and "same prompt" in refused.json()["error"]["message"]
    theirs = ask(gw, "one prompt", key=new_key(gw, tenant="globex"))
    assert rate(gw, preferred=a.id, other=theirs.id).status_code == 404
    assert rate(gw, preferred=a.id, other=a.id).status_code == 400
    assert count(gw, Signal) == 0


def test_an_edit_trains_as_sft_and_as_a_pair_over_the_original(gw: Gateway) -> None:
    answer = ask(gw, "Write a greeting")
    original = answer.choices[0].message.content
    assert rate(gw, id=answer.id, edit="Good morning, dear Ann.").json()["kind"] == "edit"
    assert data(gw, "sft") == [{"messages": [{"role": "user", "content": "Write a greeting"},
                                             {"role": "assistant", "content": "Good morning, dear Ann."}]}]
    [pair] = data(gw, "dpo")
    assert (pair["source"], pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == \
        ("edit", "Good morning, dear Ann.", original)
    assert [(e["completion"][0]["content"], e["label"]) for e in data(gw, "kto")] == \
        [("Good morning, dear Ann.", True)]


def test_named_scores_are_reported_and_exported(gw: Gateway) -> None:
    answers = [ask(gw, f"q{i}") for i in range(3)]
    for answer, value in zip(answers, (0.5, 1.0, 0.0), strict=True):
        assert rate(gw, id=answer.id, name="accuracy", value=value, comment="checked").status_code == 200
    rate(gw, id=answers[0].id, name="accuracy", value=0.9, user="mallory")  # the answer's own user's counts
    assert figures(gw)["scores"] == {"accuracy": {"answers": 3, "mean": 0.5}}
    exported = data(gw, "scores")
    assert sorted(e["value"] for e in exported) == [0.0, 0.5, 1.0] and exported[0]["name"] == "accuracy"
    assert data(gw, "kto") == [] and data(gw, "dpo") == []  # nothing trains on scores


def test_implicit_signals_are_weak_labels_only_where_nobody_rated(gw: Gateway) -> None:
    answers = [ask(gw, f"prompt {i}") for i in range(40)]
    for answer in answers:
        assert rate(gw, id=answer.id, signal="copied").json()["kind"] == "copied"
    rate(gw, id=answers[0].id, rating="down")  # a thumb says more than a copy
    examples = data(gw, "kto")
    thumbs = [e for e in examples if "source" not in e]
    weak = [e for e in examples if e.get("source") == "implicit"]
    assert [e["label"] for e in thumbs] == [False] and all(e["label"] for e in weak)
    # about IMPLICIT_WEIGHT of them count (a deterministic draw per answer)
    assert 0 < len(weak) < 39 * (IMPLICIT_WEIGHT * 2.5)
    assert "prompt 0" not in {e["prompt"][0]["content"] for e in weak}


@pytest.mark.parametrize("body,param", [
    ({"id": "X", "rating": "up", "edit": "y"}, "edit"),
    ({"id": "X", "name": "accuracy"}, "value"),
    ({"id": "X", "value": 1.0}, "name"),
    ({"preferred": 1, "other": 0}, "id"),
    ({"preferred": "chatcmpl-a", "other": 0}, "other"),
    ({"id": "X", "preferred": 1, "other": 1}, "other"),
    ({"id": "X", "signal": "liked"}, "signal"),
    ({"id": "X", "edit": ""}, "edit"),
    ({"id": "X", "choice": -1, "rating": "up"}, "choice"),
    ({"id": "X"}, "rating"),
    ({"id": "X", "edit": "a\x00b"}, "edit"),
    ({"id": "X", "name": "n\x00", "value": 1.0}, "name"),
    ({"id": "X", "choice": 10**9, "rating": "up"}, "choice"),
])
def test_bad_feedback_is_refused_and_changes_nothing(gw: Gateway, body: dict, param: str) -> None:
    answer = ask(gw)
    body = {k: (answer.id if v == "X" else v) for k, v in body.items()}
    refused = rate(gw, **body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param and refused.json()["error"]["type"] == "invalid_request_error"
    assert count(gw, Feedback) == count(gw, Signal) == 0


def test_a_score_out_of_float_range_is_refused(gw: Gateway) -> None:
    answer = ask(gw)
    refused = gw.http.post("/v1/feedback", content=f'{{"id": "{answer.id}", "name": "a", "value": 1e400}}',
                           headers={"authorization": f"Bearer {gw.app_key}", "content-type": "application/json"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "value"
    assert count(gw, Signal) == 0


def test_signals_are_counted_in_metrics_and_purged_with_the_user(gw: Gateway) -> None:
    answer = ask(gw, user="zoe")
    rate(gw, id=answer.id, signal="copied")
    rate(gw, id=answer.id, edit="better")
    metrics = gw.operator_get("/metrics").text
    assert 'loraloop_feedback_signals_total{adapter_version="' + gw.champion + '",arm="champion",kind="copied"} 1.0' \
        in metrics
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine).begin() as session:
        purge_user(session, "zoe")
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Signal)) == 0
    engine.dispose()

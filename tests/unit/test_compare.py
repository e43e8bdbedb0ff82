"""`loraloop adapters compare`: blind side by side through the gateway; verdicts become
ratings (hence preference pairs) and audit entries."""

from __future__ import annotations

import io

from sqlalchemy import select

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Feedback
from tests.unit.harness import Gateway
from trainer.compare import compare, record
from trainer.data import DataConfig, build

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]


def test_verdicts_are_blind_and_become_preference_pairs(gw: Gateway) -> None:
    gw.http.headers["authorization"] = f"Bearer {gw.app_key}"
    shown = io.StringIO()
    a, b = gw.champion, gw.pinned
    verdicts = compare(gw.http, a, b, PROMPTS, "operator:ann", seed=3, ask=io.StringIO("1\n2\nt\ns\n"), show=shown)
    screens = shown.getvalue().split("better?")[:4]
    firsts = [screen.split("--- 1 ---")[1].split("--- 2 ---")[0] for screen in screens]
    first_versions = [a if f"answer from {a}" in f else b for f in firsts]
    assert len(set(first_versions)) == 2, "the order is shuffled, so neither version is always first"
    assert all(a not in s.split("---")[0] and b not in s.split("---")[0] for s in screens)  # no names shown
    second = lambda v: b if v == a else a  # noqa: E731
    assert [v["winner"] for v in verdicts] == [first_versions[0], second(first_versions[1]), None]  # skip: none

    engine = make_engine(gw.settings.db_url)
    sessions = make_sessionmaker(engine)
    gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    with sessions() as session:
        ratings = sorted((f.end_user, f.rating) for f in session.scalars(select(Feedback)))
        pairs = build(session, "dpo", DataConfig(heldout_fraction=0.0))["train"]
    assert ratings == [("operator:ann", -1)] * 2 + [("operator:ann", 1)] * 2
    assert sorted(p["chosen"][0]["content"].split(" on ")[0] for p in pairs) == \
        sorted(f"answer from {v['winner']}" for v in verdicts[:2])
    record(sessions, verdicts, "operator:ann")
    with sessions() as session:
        tallies = {v: registry.human_verdicts(session, v) for v in (a, b)}
    engine.dispose()
    wins_a = sum(v["winner"] == a for v in verdicts)
    assert tallies[a] == {"win": wins_a, "loss": 2 - wins_a, "tie": 1}
    assert tallies[b] == {"win": 2 - wins_a, "loss": wins_a, "tie": 1}

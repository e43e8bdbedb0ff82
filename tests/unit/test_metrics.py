"""`/metrics`: what operators read in Grafana is what happened, with bounded labels."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import TrainingRun, utcnow
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway, chat, make_gateway
from tests.unit.test_feedback import rate


def scrape(gw: Gateway) -> dict[tuple[str, frozenset], float]:
    resp = gw.operator_get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_status_and_arm(gw: Gateway) -> None:
    for _ in range(3):
        chat(gw.sdk(), "default")
    chat(gw.sdk(), gw.pinned)
    gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": []},
                 headers={"authorization": f"Bearer {gw.app_key}"})
    gw.http.post("/v1/chat/completions", json={})  # no key
    samples = scrape(gw)
    route = "/v1/chat/completions"
    name = "loraloop_request_duration_seconds_count"
    assert value(samples, name, route=route, status="200", alias="default", adapter_version=gw.champion,
                 arm="champion") == 3
    assert value(samples, name, route=route, status="200", alias="", adapter_version=gw.pinned, arm="pinned") == 1
    assert value(samples, name, route=route, status="400", alias="", adapter_version="", arm="") \
        + value(samples, name, route=route, status="404", alias="", adapter_version="", arm="") == 1
    assert value(samples, name, route=route, status="401", alias="", adapter_version="", arm="") == 1


def test_unknown_paths_share_one_label(gw: Gateway) -> None:
    for path in ("/a", "/b/c", "/v1/../etc"):
        gw.http.get(path)
    routes = {dict(labels)["route"] for (name, labels) in scrape(gw)
              if name == "loraloop_request_duration_seconds_count"}
    assert routes == {"other"}


def test_streams_report_time_to_first_token_and_tokens_come_from_usage(gw: Gateway) -> None:
    with gw.sdk().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                          stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    chat(gw.sdk(), BASE)
    gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    samples = scrape(gw)
    assert value(samples, "loraloop_time_to_first_token_seconds_count", alias="default",
                 adapter_version=gw.champion, arm="champion") == 1
    assert value(samples, "loraloop_time_to_first_token_seconds_count", alias="", adapter_version="", arm="base") == 0
    # the fake upstream reports 5 prompt and 7 completion tokens for non-streamed answers
    assert value(samples, "loraloop_tokens_total", direction="prompt", adapter_version="", arm="base") == 5
    assert value(samples, "loraloop_tokens_total", direction="completion", adapter_version="", arm="base") == 7
    assert value(samples, "loraloop_interaction_log_written_total") == 2
    assert value(samples, "loraloop_interaction_log_queue_depth") == 0


def test_ratings_are_counted_by_the_arm_that_served_the_answer(gw: Gateway) -> None:
    served = [chat(gw.sdk(), "default", user=f"u{i}").parse().id for i in range(3)]
    for completion_id, rating in zip(served, ("up", "up", "down"), strict=True):
        assert rate(gw, id=completion_id, rating=rating).status_code == 200
    assert rate(gw, id="chatcmpl-unknown", rating="up").status_code == 404  # not counted
    samples = scrape(gw)
    labels = {"adapter_version": gw.champion, "arm": "champion"}
    assert value(samples, "loraloop_feedback_total", rating="up", **labels) == 2
    assert value(samples, "loraloop_feedback_total", rating="down", **labels) == 1


def test_upstream_health_and_failovers(gw: Gateway) -> None:
    down, up = gw.fleet.replicas.values()
    before = scrape(gw)
    assert value(before, "loraloop_upstream_up", upstream=down.url) == 1
    assert value(before, "loraloop_upstream_failovers_total", upstream=down.url, reason="unreachable") == 0
    down.down = True
    for _ in range(4):
        chat(gw.sdk(), BASE)
    after = scrape(gw)
    assert value(after, "loraloop_upstream_up", upstream=down.url) == 0
    assert value(after, "loraloop_upstream_up", upstream=up.url) == 1
    assert value(after, "loraloop_upstream_failovers_total", upstream=down.url, reason="unreachable") == 1
    assert value(after, "loraloop_upstream_down_events_total", upstream=down.url) == 1


def test_training_runs_and_gate_come_from_the_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    engine = make_engine(gw.settings.db_url)
    now = utcnow()
    with make_sessionmaker(engine).begin() as session:
        session.add_all([
            TrainingRun(method="dpo", outcome="approved", started_at=now - timedelta(hours=5),
                        finished_at=now - timedelta(hours=4, minutes=50)),
            TrainingRun(method="dpo", outcome="failed", started_at=now - timedelta(hours=3),
                        finished_at=now - timedelta(hours=3)),
            TrainingRun(method="kto", outcome="failed", started_at=now - timedelta(hours=2),
                        finished_at=now - timedelta(hours=2)),
            TrainingRun(method="dpo", outcome="running", started_at=now),
        ])
        from adapters.schema import AdapterVersion
        version = session.get(AdapterVersion, gw.pinned)
        assert version is not None
        version.eval_report = {"passed": False, "reasons": ["x"], "metrics": {"sampled_kl": 7.5, "win_rate": 0.2}}
    engine.dispose()
    with gw.http:
        samples = scrape(gw)
    assert value(samples, "loraloop_training_runs_total", method="dpo", outcome="approved") == 1
    assert value(samples, "loraloop_training_runs_total", method="dpo", outcome="failed") == 1
    assert value(samples, "loraloop_training_runs_total", method="kto", outcome="failed") == 1
    assert value(samples, "loraloop_training_runs_running") == 1
    assert value(samples, "loraloop_training_consecutive_failures") == 2
    assert value(samples, "loraloop_training_run_duration_seconds_count") == 3
    assert value(samples, "loraloop_training_run_duration_seconds_bucket", le="900.0") == 3  # 10 min, 0, 0
    assert value(samples, "loraloop_training_run_duration_seconds_bucket", le="300.0") == 2
    assert value(samples, "loraloop_gate_metric", metric="sampled_kl") == 7.5
    assert value(samples, "loraloop_gate_last_passed") == 0
    assert [value(samples, "loraloop_adapter_versions", state=s) for s in ("candidate", "approved", "champion",
                                                                           "retired")] == [1, 1, 1, 0]


def test_prompt_drift_compares_recent_prompts_with_the_champions_training_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from adapters.db import upgrade
    from adapters.schema import Feedback, Interaction
    from adapters.stats import prompt_drift

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    now = utcnow()
    champion_made = now - timedelta(days=1)

    def served(i: int, text: str, age: timedelta, rated: bool) -> list:
        with make_sessionmaker(engine).begin() as session:
            session.add(Interaction(
                id=f"c{i}", tenant="t", requested_model="default", arm="champion", kind="chat",
                prompt=[{"role": "system", "content": "be nice"}, {"role": "user", "content": text}],
                status=200, latency_ms=1.0, created_at=now - age))
        return [Feedback(interaction_id=f"c{i}", rating=1)] if rated else []

    with make_sessionmaker(engine).begin() as session:
        for i in range(20):  # what the champion was trained on: rated, before it was made
            session.add_all(served(i, "help me bake a cake please", timedelta(days=2), rated=True))
        session.add_all(served(100, "never rated so not training data", timedelta(days=2), rated=False))
    with make_sessionmaker(engine)() as session:
        assert prompt_drift(session, champion_made, timedelta(hours=1), 100) is None  # nothing recent
    with make_sessionmaker(engine).begin() as session:
        for i in range(20):
            session.add_all(served(200 + i, "help me bake a cake", timedelta(minutes=5), rated=False))
    with make_sessionmaker(engine)() as session:
        similar = prompt_drift(session, champion_made, timedelta(hours=1), 100)
    with make_sessionmaker(engine).begin() as session:
        for i in range(60):
            session.add_all(served(300 + i, "fix my tax return now", timedelta(minutes=1), rated=False))
    with make_sessionmaker(engine)() as session:
        moved = prompt_drift(session, champion_made, timedelta(hours=1), 100)
    engine.dispose()
    assert similar is not None and moved is not None
    assert similar < 0.15 < 0.5 < moved <= 1.0


def test_experiments_are_exported_with_the_sequential_test(gw: Gateway) -> None:
    from adapters import experiments

    engine = make_engine(gw.settings.db_url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        experiments.start(session, "default", gw.pinned, 0.5, 24, actor="ops")
    state = gw.http.app.state.gateway
    gw.http.portal.call(state.router.refresh)
    gw.http.portal.call(state.sync_fleet)
    for i in range(40):
        answer = chat(gw.sdk(), "default", user=f"u{i}").parse()
        assert rate(gw, id=answer.id, rating="up").status_code == 200
    experiments.judge_all(sessions, experiments.Policy())
    engine.dispose()
    from gateway.background import refresh_stats as _refresh_stats

    gw.http.portal.call(_refresh_stats, state)
    samples = scrape(gw)
    assert value(samples, "loraloop_experiment_running", alias="default") == 1
    assert value(samples, "loraloop_experiment_canary_share", alias="default") == 0.5
    rated = [value(samples, "loraloop_experiment_ratings", alias="default", arm=arm) for arm in ("champion", "canary")]
    assert sum(rated) == 40 and min(rated) > 0
    assert value(samples, "loraloop_experiment_thumbs_up_rate", alias="default", arm="canary") == 1.0
    # log(1 / alpha) of the thumbs-up share test, whose part of alpha is 1 - COMPLAINT_ALPHA
    threshold = math.log(1 / (experiments.Policy().alpha * (1 - experiments.COMPLAINT_ALPHA)))
    assert value(samples, "loraloop_experiment_threshold", alias="default") == pytest.approx(threshold, abs=1e-3)
    assert value(samples, "loraloop_experiments_ended_total", outcome="promoted", decided_by="auto") == 0

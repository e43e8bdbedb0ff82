"""Experiments through the gateway (fake vLLM, real SQLite and PostgreSQL): the lifecycle and
its audit trail, sticky splits, the automatic judge, operator overrides, races."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters import experiments, registry
from adapters.db import make_engine, make_sessionmaker
from adapters.errors import InvalidTransition, LoraloopError, NotFound
from adapters.schema import AdapterEvent, AdapterState, AdapterVersion, Alias, Experiment, utcnow
from tests.unit.harness import Gateway, chat
from tests.unit.test_feedback import rate

POLICY = experiments.Policy()


@pytest.fixture
def db(gw: Gateway):  # type: ignore[no-untyped-def]
    engine = make_engine(gw.settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def refresh(gw: Gateway) -> None:
    """What the gateway's background loops do: write the log, re-read routes, sync replicas."""
    state = gw.http.app.state.gateway
    gw.http.portal.call(state.log.flush)
    gw.http.portal.call(state.router.refresh)
    gw.http.portal.call(state.sync_fleet)


def start(db, gw: Gateway, share: float = 0.5, max_hours: float = 24) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        experiments.start(session, "default", gw.pinned, share, max_hours, actor="ops", reason="try it")
    refresh(gw)


def state_of(db, name: str) -> AdapterState:  # type: ignore[no-untyped-def]
    with db() as session:
        version = session.get(AdapterVersion, name)
        assert version is not None
        return version.state


def traffic(gw: Gateway, users: int, taste: dict[str, float], seed: int = 0) -> dict[str, int]:
    """Each user asks once and rates: thumbs up with probability taste[arm]."""
    import random

    rng = random.Random(seed)
    served = {"champion": 0, "canary": 0}
    for i in range(users):
        response = chat(gw.sdk(), "default", user=f"user-{seed}-{i}")
        arm = response.headers["x-loraloop-arm"]
        served[arm] += 1
        up = rng.random() < taste[arm]
        assert rate(gw, id=response.parse().id, rating="up" if up else "down").status_code == 200
    refresh(gw)
    return served


def test_the_lifecycle_is_enforced_and_audited(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        candidate = session.scalars(select(AdapterVersion).where(AdapterVersion.state == AdapterState.candidate)).one()
        with pytest.raises(InvalidTransition):  # never judged by the gate: cannot go to users
            experiments.start(session, "default", candidate.name, 0.1, 24, actor="ops")
    start(db, gw)
    assert state_of(db, gw.pinned) == AdapterState.canary
    with db.begin() as session, pytest.raises(InvalidTransition, match="already"):
        experiments.start(session, "default", gw.pinned, 0.1, 24, actor="ops")
    with db.begin() as session:
        experiments.promote(session, "default", actor="ops", reason="looks good")
    assert (state_of(db, gw.pinned), state_of(db, gw.champion)) == (AdapterState.champion, AdapterState.retired)
    with db.begin() as session, pytest.raises(NotFound):
        experiments.promote(session, "default", actor="ops")  # nothing left to promote
    with db.begin() as session:  # no experiment: rollback restores the previous champion
        assert experiments.rollback(session, "default", actor="ops", reason="complaints") == gw.champion
    assert (state_of(db, gw.pinned), state_of(db, gw.champion)) == (AdapterState.retired, AdapterState.champion)
    with db() as session:
        history = [(e.action, e.version, e.from_state, e.to_state, e.actor, e.reason)
                   for e in session.scalars(select(AdapterEvent).where(AdapterEvent.alias == "default")
                                            .order_by(AdapterEvent.id))]
    assert history[-6:] == [
        ("transition", gw.pinned, "approved", "canary", "ops", "try it"),
        ("experiment_start", gw.pinned, None, None, "ops", "try it"),
        ("transition", gw.pinned, "canary", "champion", "ops", "looks good"),
        ("transition", gw.champion, "champion", "retired", "ops", f"replaced by {gw.pinned}"),
        ("transition", gw.champion, "retired", "champion", "ops", "complaints"),
        ("transition", gw.pinned, "champion", "retired", "ops", "complaints"),
    ]


def test_users_are_split_by_share_and_keep_their_arm(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    start(db, gw, share=0.3)
    arms = {}
    for i in range(300):
        response = chat(gw.sdk(), "default", user=f"u{i}")
        arms[f"u{i}"] = response.headers["x-loraloop-arm"]
        assert response.headers["x-loraloop-adapter-version"] == (gw.pinned if arms[f"u{i}"] == "canary"
                                                                   else gw.champion)
    assert 0.22 <= sum(a == "canary" for a in arms.values()) / 300 <= 0.38
    for i in range(0, 300, 10):  # sticky
        assert chat(gw.sdk(), "default", user=f"u{i}").headers["x-loraloop-arm"] == arms[f"u{i}"]
    with db.begin() as session:
        experiments.pause(session, "default", actor="ops")
    refresh(gw)
    assert {chat(gw.sdk(), "default", user=f"u{i}").headers["x-loraloop-arm"] for i in range(30)} == {"champion"}
    assert chat(gw.sdk(), gw.pinned).headers["x-loraloop-arm"] == "pinned"  # pinning is not an experiment


def until_decided(gw: Gateway, db, taste: dict[str, float]) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Rounds of 60 users rating by `taste`, the judge after each: (decision, why)."""
    decision, why = "continue", ""
    for round_ in range(6):
        traffic(gw, 60, taste, seed=round_)
        judged = experiments.judge_all(db, POLICY)
        if not judged:  # the gateway's own judge (every 10 s) decided first: read its verdict
            with db() as session:
                experiment = session.scalars(select(Experiment)).one()
                return {"promoted": "promote", "rolled_back": "rollback"}[experiment.status], experiment.reason or ""
        ((_, decision, why),) = judged
        if decision != "continue":
            break
    return decision, why


def test_a_better_canary_is_promoted_by_the_sequential_test(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    start(db, gw)
    decision, why = until_decided(gw, db, {"champion": 0.3, "canary": 0.8})
    assert decision == "promote" and why.startswith("sequential test")
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
        alias = session.get(Alias, "default")
        assert alias is not None
        assert (experiment.status, experiment.decided_by, alias.champion) == ("promoted", "auto", gw.pinned)
        assert experiment.stats is not None and experiment.stats["log_lambda"] >= experiment.stats["threshold"]
        event = session.scalars(select(AdapterEvent).where(AdapterEvent.to_state == "champion")
                                .order_by(AdapterEvent.id.desc())).first()
        assert event is not None and event.actor == "auto" and event.numbers["arms"]["canary"]["ratings"] >= 30
    refresh(gw)
    assert chat(gw.sdk(), "default", user="anyone").headers["x-loraloop-adapter-version"] == gw.pinned


def test_a_worse_canary_is_rolled_back(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    start(db, gw)
    decision, _ = until_decided(gw, db, {"champion": 0.8, "canary": 0.3})
    assert decision == "rollback"
    assert (state_of(db, gw.pinned), state_of(db, gw.champion)) == (AdapterState.retired, AdapterState.champion)


def test_one_client_inventing_users_cannot_decide_an_experiment(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """Rating stuffing: a key rates canary answers up and champion answers down under 20
    invented users each. Only one vote per answer counts, the answer's own user's first."""
    start(db, gw)
    served: dict[str, list[str]] = {"champion": [], "canary": []}
    for i in range(24):
        response = chat(gw.sdk(), "default", user=f"real-{i}")
        served[response.headers["x-loraloop-arm"]].append(response.parse().id)
    refresh(gw)
    for arm, ids in served.items():
        for answer in ids:  # the real users: the champion is liked, the canary is not
            assert rate(gw, id=answer, rating="up" if arm == "champion" else "down").status_code == 200
            for fake in range(20):
                assert rate(gw, id=answer, rating="down" if arm == "champion" else "up",
                            user=f"sock-{fake}").status_code == 200
    with db.begin() as session:
        experiment = experiments.current(session, "default")
        assert experiment is not None
        numbers = experiments.arm_numbers(session, experiment)
    for arm, ids in served.items():  # one vote per answer, and it is the real user's
        assert numbers[arm].ratings == len(ids)
        assert numbers[arm].up == (len(ids) if arm == "champion" else 0)
    [(_, decision, _)] = experiments.judge_all(db, POLICY)
    assert decision in ("continue", "rollback")  # never a promotion bought by sock puppets


def test_guardrails_and_the_deadline_roll_back(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    start(db, gw)
    served = traffic(gw, 120, {"champion": 0.5, "canary": 0.5})
    assert min(served.values()) >= 50
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
        numbers = experiments.arm_numbers(session, experiment)
    assert numbers["canary"].requests == served["canary"] and numbers["canary"].ratings == served["canary"]
    bad = dict(numbers, canary=experiments.ArmNumbers(numbers["canary"].requests, 10, 5.0, 60, 30))
    decision, why, _ = experiments.judge(experiment, bad, POLICY, utcnow())
    assert (decision, why.split(":")[0]) == ("rollback", "guardrail")
    champion_ms = numbers["champion"].mean_latency_ms
    for canary_ms, expected in ((champion_ms + 500, "rollback"), (champion_ms + 50, "continue")):  # ms: noise
        slow = dict(numbers, canary=experiments.ArmNumbers(numbers["canary"].requests, 0, canary_ms, 60, 30))
        assert experiments.judge(experiment, slow, POLICY, utcnow())[0] == expected
    decision, why, _ = experiments.judge(experiment, numbers, POLICY, utcnow() + timedelta(hours=25))
    assert decision == "rollback" and "no decision within 24 h" in why
    assert experiments.judge(experiment, numbers, POLICY, utcnow())[0] == "continue"


def test_a_rollback_racing_a_promotion_always_wins(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """The judge promotes while an operator rolls back, at the same instant. Whichever commits
    first, the operator's intent holds: the old champion serves, the canary is retired."""
    start(db, gw)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def act(action: str) -> None:
        barrier.wait()
        try:
            with db.begin() as session:
                getattr(experiments, action)(session, "default", actor=action)
            outcomes.append(action)
        except LoraloopError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=act, args=(a,)) for a in ("promote", "rollback")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
        alias = session.get(Alias, "default")
        assert alias is not None
        states = {v.name: v.state for v in session.scalars(select(AdapterVersion))}
    # promote first then rollback (of the new champion), or rollback first and nothing to promote
    assert outcomes in (["promote", "rollback"], ["rollback", "NotFound"])
    assert experiment.status == ("promoted" if outcomes[0] == "promote" else "rolled_back")
    assert (alias.champion, states[gw.champion], states[gw.pinned]) == \
        (gw.champion, AdapterState.champion, AdapterState.retired)


def test_admin_api_drives_experiments(gw: Gateway) -> None:
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    app = {"authorization": f"Bearer {gw.app_key}"}
    body = {"alias": "default", "canary": gw.pinned, "share": 0.2, "reason": "weekly candidate"}
    assert gw.http.post("/admin/experiments", json=body, headers=app).status_code == 403
    bad = gw.http.post("/admin/experiments", json={**body, "share": 1.5}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "share"
    started = gw.http.post("/admin/experiments", json=body, headers=admin)
    assert started.status_code == 200 and started.json()["status"] == "running"
    again = gw.http.post("/admin/experiments", json=body, headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    assert gw.http.post("/admin/aliases/default/pause", json={}, headers=admin).json()["status"] == "paused"
    assert gw.http.post("/admin/aliases/default/resume", json={}, headers=admin).json()["status"] == "running"
    promoted = gw.http.post("/admin/aliases/default/promote", json={"reason": "manual"}, headers=admin).json()
    assert (promoted["status"], promoted["decided_by"]) == ("promoted", "ops")
    assert chat(gw.sdk(), "default", user="x").headers["x-loraloop-adapter-version"] == gw.pinned  # at once
    shown = gw.http.get(f"/admin/adapters/{gw.pinned}", headers=admin).json()
    assert [(h["from"], h["to"], h["actor"]) for h in shown["history"] if h["action"] == "transition"][-2:] == \
        [("approved", "canary", "ops"), ("canary", "champion", "ops")]
    missing = gw.http.post("/admin/aliases/nope/rollback", json={}, headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    listed = gw.http.get("/admin/experiments", headers=admin).json()["data"]
    assert [e["status"] for e in listed] == ["promoted"]


def test_a_second_gateway_converges_within_its_refresh_interval(gw: Gateway) -> None:
    """Two gateway replicas on one database: an action taken through one reaches the other's
    routing within LORALOOP_REGISTRY_REFRESH_S."""
    import time

    from fastapi.testclient import TestClient

    from gateway.app import create_app

    other_settings = gw.settings.model_copy(update={"registry_refresh_s": 0.3})
    with TestClient(create_app(other_settings, transport=gw.fleet.transport())) as other:
        def served_by_other() -> str:
            return other.post("/v1/chat/completions", headers={"authorization": f"Bearer {gw.app_key}"},
                              json={"model": "default", "messages": [{"role": "user", "content": "hi"}],
                                    "user": "x"}).headers["x-loraloop-adapter-version"]

        assert served_by_other() == gw.champion
        admin = {"authorization": f"Bearer {gw.admin_key}"}
        assert gw.http.post("/admin/experiments", json={"alias": "default", "canary": gw.pinned, "share": 0.5},
                            headers=admin).status_code == 200
        assert gw.http.post("/admin/aliases/default/promote", json={}, headers=admin).status_code == 200
        switched = time.monotonic()
        while served_by_other() != gw.pinned:
            assert time.monotonic() - switched < 0.3 + 1.0, "the other gateway did not converge"
            time.sleep(0.02)


def test_replicas_hold_what_aliases_serve_and_free_retired_versions(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """The probe loop loads champions and canaries onto every replica before their traffic
    (also after a restart) and unloads a version once it retires."""
    from gateway.background import probe as _probe

    state = gw.http.app.state.gateway
    replicas = list(gw.fleet.replicas.values())
    gw.http.portal.call(_probe, state)
    assert all(set(r.loaded) == {gw.champion} for r in replicas)  # no request needed
    start(db, gw)
    gw.http.portal.call(_probe, state)
    assert all(set(r.loaded) == {gw.champion, gw.pinned} for r in replicas)
    replicas[0].restart()  # forgets every adapter
    gw.http.portal.call(_probe, state)
    assert set(replicas[0].loaded) == {gw.champion, gw.pinned}
    with db.begin() as session:
        experiments.promote(session, "default", actor="ops")
    refresh(gw)
    gw.http.portal.call(_probe, state)
    assert all(set(r.loaded) == {gw.pinned} and r.unloads == [gw.champion] for r in replicas)
    # still servable when pinned: loaded again on demand, and not unloaded again
    assert chat(gw.sdk(), gw.champion).headers["x-loraloop-adapter-version"] == gw.champion
    gw.http.portal.call(_probe, state)
    assert sum(gw.champion in r.loaded for r in replicas) == 1


def test_an_approved_version_goes_to_users_by_itself_against_the_base_model(gw: Gateway, db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run trained for alias `fresh` (no champion: the base model serves it) is approved by
    the gate; the judge starts its experiment against the base model, users rate, and the
    better canary becomes the alias's first champion, with nobody in between."""
    from tests.fake_vllm import BASE
    from tests.unit.harness import fake_adapter

    with db.begin() as session:
        registry.lock_alias(session, "fresh", create=True)
        trained = registry.register(session, fake_adapter(tmp_path / "run", 9), gw.settings.adapter_store, BASE,
                                    prefix="dpo", state=AdapterState.approved)
        trained.provenance = {"config": {"alias": "fresh", "method": "dpo"}}
        name = trained.name
    policy = experiments.Policy(default_share=0.5)
    assert experiments.judge_all(db, policy) == [("fresh", "start", name)]
    assert experiments.judge_all(db, policy) == [("fresh", "continue", "")]  # one at a time
    refresh(gw)
    import random

    rng = random.Random(0)
    decision = "continue"
    for round_ in range(8):
        for i in range(40):
            response = chat(gw.sdk(), "fresh", user=f"r{round_}-{i}")
            arm = response.headers["x-loraloop-arm"]
            assert response.headers["x-loraloop-adapter-version"] == (name if arm == "canary" else "")
            up = rng.random() < (0.85 if arm == "canary" else 0.3)
            rate(gw, id=response.parse().id, rating="up" if up else "down")
        refresh(gw)
        ((_, decision, _),) = experiments.judge_all(db, policy)
        if decision != "continue":
            break
    assert decision == "promote"
    with db() as session:
        alias = session.get(Alias, "fresh")
        assert alias is not None and alias.champion == name
        experiment = session.scalars(select(Experiment).where(Experiment.alias == "fresh")).one()
        assert experiment.champion is None and experiment.decided_by == "auto"


def test_a_canary_gets_no_users_before_a_replica_holds_it(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        experiments.start(session, "default", gw.pinned, 0.5, 24, actor="ops")
    state = gw.http.app.state.gateway
    gw.http.portal.call(state.router.refresh)  # routes re-read, replicas not synced yet
    assert {chat(gw.sdk(), "default", user=f"u{i}").headers["x-loraloop-arm"] for i in range(20)} == {"champion"}
    gw.http.portal.call(state.sync_fleet)
    assert all(gw.pinned in r.loaded for r in gw.fleet.replicas.values())  # loaded everywhere, then routed
    assert "canary" in {chat(gw.sdk(), "default", user=f"u{i}").headers["x-loraloop-arm"] for i in range(20)}


@pytest.mark.parametrize("operator", ["rollback", "pause", "pause,resume"])
def test_the_judge_counts_before_locking_and_acts_only_on_the_same_running_experiment(
        gw: Gateway, db, monkeypatch: pytest.MonkeyPatch, operator: str) -> None:  # type: ignore[no-untyped-def]
    """Counting both arms takes a while at scale, so the judge counts before lock_alias (a
    write: SQLite's write lock, PostgreSQL's alias row): an operator acting meanwhile does not
    wait on it. If the experiment stopped running meanwhile, the judge leaves it alone."""
    start(db, gw)
    traffic(gw, 80, {"champion": 0.0, "canary": 1.0})
    with db() as session:
        experiment = experiments.current(session, "default")
        assert experiment is not None
        assert experiments.judge(experiment, experiments.arm_numbers(session, experiment), POLICY, utcnow())[0] == \
            "promote"  # what the judge does, left alone
    counted = experiments.arm_numbers

    def count_while_an_operator_acts(session, experiment):  # type: ignore[no-untyped-def]
        numbers = counted(session, experiment)
        acted: list[str] = []

        def act() -> None:
            for action in operator.split(","):
                with db.begin() as other:
                    getattr(experiments, action)(other, "default", actor="ops")
                acted.append(action)

        thread = threading.Thread(target=act)
        thread.start()
        thread.join(10)
        assert acted == operator.split(","), "the operator waited on the judge's count"
        return numbers

    monkeypatch.setattr(experiments, "arm_numbers", count_while_an_operator_acts)
    results = experiments.judge_all(db, experiments.Policy(auto_start=False))
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
        status, decided_by, stats = experiment.status, experiment.decided_by, experiment.stats
    if operator == "pause,resume":  # the same experiment, running again: the numbers stand
        assert [d for _, d, _ in results] == ["promote"] and (status, decided_by) == ("promoted", "auto")
    else:  # the operator's action holds
        assert results == [] and stats is None
        assert (status, decided_by) == (("rolled_back", "ops") if operator == "rollback" else ("paused", None))


def test_the_migrations_build_what_schema_py_declares(db_url: str) -> None:
    """Alembic's autogenerate comparison finds nothing to change after `upgrade`, on SQLite and
    PostgreSQL; the judge's index is there, and the newest migration goes down and up again."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from adapters.db import MIGRATIONS, upgrade
    from adapters.schema import Base

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("interactions")}
        assert indexes["ix_interactions_requested_model_created_at"] == ["requested_model", "created_at"]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        with engine.connect() as conn:  # 0012, feedback signals
            assert "feedback_signals" not in inspect(conn).get_table_names()
            assert "choice" not in {c["name"] for c in inspect(conn).get_columns("feedback")}
            assert "choices" not in {c["name"] for c in inspect(conn).get_columns("interactions")}
        upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def one_sided(requests: int, liked: float, rate_liked: float = 0.03, rate_disliked: float = 0.2,
              noise: float = 0.2) -> experiments.ArmNumbers:
    """An arm's expected numbers when users rate mostly what they dislike, 20% of thumbs flipped."""
    up = requests * (liked * rate_liked * (1 - noise) + (1 - liked) * rate_disliked * noise)
    down = requests * ((1 - liked) * rate_disliked * (1 - noise) + liked * rate_liked * noise)
    return experiments.ArmNumbers(requests, 0, 100.0, round(up + down), round(up))


def test_a_better_canary_that_users_rate_less_often_is_promoted_not_rolled_back(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """Users who rate mostly what they dislike rate a better canary LESS often (here 4.7% of
    its answers vs 11.5% of the champion's). That is the improvement showing, not a reason
    to roll it back: the rating-coverage guardrail that did so is gone, and the test on the
    rated answers' thumbs-up share promotes it."""
    start(db, gw)
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
    better = {"champion": one_sided(2000, 0.5), "canary": one_sided(2000, 0.9)}
    assert better["canary"].coverage < 0.5 * better["champion"].coverage
    decision, why, evidence = experiments.judge(experiment, better, POLICY, utcnow())
    assert decision == "promote", why
    assert evidence["arms"]["canary"]["coverage"] < evidence["arms"]["champion"]["coverage"]
    # a worse canary collects MORE ratings; the share test alone would need ~20,000 answers per
    # arm to see it (noise squeezes the shares together), complaints per served answer see it
    # at 2,000
    worse = {"champion": one_sided(2000, 0.5), "canary": one_sided(2000, 0.2)}
    decision, why, _ = experiments.judge(experiment, worse, POLICY, utcnow())
    assert decision == "rollback" and "thumbs-down" in why, why
    # users of one arm rating half as often, with the same taste, decide nothing (fewer
    # complaints per answer there, but that test never promotes)
    champion = one_sided(20_000, 0.6)
    shy = experiments.ArmNumbers(20_000, 0, 100.0, champion.ratings // 2, champion.up // 2)
    assert experiments.judge(experiment, {"champion": champion, "canary": shy}, POLICY, utcnow())[0] == "continue"


def test_no_difference_decides_at_most_alpha_of_experiments_checked_all_along() -> None:
    """Both tests together, checked every 25 answers of a one-sided, noisy rating regime,
    on a canary exactly as good as the champion: any decision at most alpha (5%) of the time."""
    import random

    rng = random.Random(3)
    experiment = experiments.Experiment(started_at=utcnow(), max_hours=1e9)
    sims, decided = 400, 0
    for _ in range(sims):
        arms = {arm: [0, 0, 0] for arm in ("champion", "canary")}  # served, rated, up
        for served in range(1, 2001):
            for counts in arms.values():
                counts[0] += 1
                liked = rng.random() < 0.5
                if rng.random() < (0.05 if liked else 0.15):
                    counts[1] += 1
                    counts[2] += liked != (rng.random() < 0.2)
            if served % 25 == 0:
                numbers = {arm: experiments.ArmNumbers(c[0], 0, 100.0, c[1], c[2]) for arm, c in arms.items()}
                if experiments.judge(experiment, numbers, POLICY, utcnow())[0] != "continue":
                    decided += 1
                    break
    assert decided / sims <= 0.05 + 2 * (0.05 * 0.95 / sims) ** 0.5, decided


def test_more_thumbs_up_with_more_complaints_is_no_promotion(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """A canary whose satisfied users rate more often (its thumbs-up share rises) while its
    complaints per answer rise too is not better: that is the arms being rated differently."""
    start(db, gw)
    with db() as session:
        experiment = session.scalars(select(Experiment)).one()
    champion = experiments.ArmNumbers(4000, 0, 100.0, 400, 140)  # 260 complaints
    canary = experiments.ArmNumbers(4000, 0, 100.0, 700, 420)  # more thumbs up AND 280 complaints
    decision, why, evidence = experiments.judge(experiment, {"champion": champion, "canary": canary}, POLICY,
                                                utcnow())
    assert evidence["difference"] > 0 and evidence["complaints"]["difference"] < 0
    assert decision != "promote", why


def test_a_canary_the_pre_screen_preferred_is_promoted_on_fewer_ratings(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """The gate's reward model preferring the canary to THIS champion on held-out prompts (win
    rate > 0.5) centres the share test's prior on +prior_lift: the same numbers that leave a
    flat-prior test undecided promote. A win rate at or below 0.5 (or a bool), none, one measured against
    another champion, or a change after the first judging changes nothing."""
    start(db, gw)
    numbers = {"champion": one_sided(1400, 0.5, 0.05, 0.15), "canary": one_sided(1400, 0.8, 0.05, 0.15)}
    with db.begin() as session:
        experiment = session.scalars(select(Experiment)).one()
        assert experiments.prior_mean(session, experiment, POLICY) == 0.0  # no gate report
        assert experiments.judge(experiment, numbers, POLICY, utcnow())[0] == "continue"
        canary = session.get(AdapterVersion, experiment.canary)
        for against, win_rate, prior in ((experiment.champion, 0.5, 0.0), (experiment.champion, True, 0.0),
                                         (experiment.champion, None, 0.0), ("someone-else", 0.9, 0.0),
                                         (experiment.champion, 0.75, POLICY.prior_lift)):
            canary.provenance = {"gate_champion": against}
            canary.eval_report = {"passed": True, "reasons": [], "metrics": {"win_rate": win_rate}}
            session.flush()
            assert experiments.prior_mean(session, experiment, POLICY) == prior, (against, win_rate)
        decision, why, evidence = experiments.judge(experiment, numbers, POLICY, utcnow(), prior=POLICY.prior_lift)
        assert decision == "promote" and "pre-screen" in why and evidence["prior_mean"] == POLICY.prior_lift, why
        # the prior is no licence: a canary the users like less is still rolled back
        worse = {"champion": one_sided(2000, 0.5), "canary": one_sided(2000, 0.2)}
        assert experiments.judge(experiment, worse, POLICY, utcnow(), prior=POLICY.prior_lift)[0] == "rollback"
    # the automatic judge reads it once and keeps it for the experiment's life
    assert experiments.judge_all(db, POLICY)[0][1] == "continue"
    with db.begin() as session:
        experiment = session.scalars(select(Experiment)).one()
        assert experiment.stats["prior_mean"] == POLICY.prior_lift
        session.get(AdapterVersion, experiment.canary).eval_report = None  # type: ignore[union-attr]
    experiments.judge_all(db, POLICY)
    with db() as session:
        assert session.scalars(select(Experiment)).one().stats["prior_mean"] == POLICY.prior_lift


def test_an_undecided_canary_makes_way_for_a_candidate_trained_on_twice_the_feedback(gw: Gateway, db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Sparse thumbs leave a no-better canary undecided until the deadline while newer
    candidates wait. Once each arm has its minimum of ratings, an approved candidate for the
    alias that learned from >= 2x the canary's feedback replaces it (a rollback: the champion
    keeps serving), and its own experiment starts. One with less data than that waits."""
    from tests.fake_vllm import BASE
    from tests.unit.harness import fake_adapter

    def trained(seed: int, liked: int, disliked: int) -> str:
        with db.begin() as session:
            version = registry.register(session, fake_adapter(tmp_path / f"run{seed}", seed), gw.settings.adapter_store,
                                        BASE, prefix="kto", state=AdapterState.approved)
            version.provenance = {"config": {"alias": "fresh"}, "examples": liked + disliked,
                                  "method_choice": {"chose": "kto", "pairs": 0, "liked": liked, "disliked": disliked}}
            return version.name

    with db.begin() as session:
        registry.lock_alias(session, "fresh", create=True)
    first = trained(11, 36, 65)
    policy = experiments.Policy(default_share=0.5, min_ratings=5)
    assert experiments.judge_all(db, policy) == [("fresh", "start", first)]
    refresh(gw)
    for i in range(30):  # both arms rated alike: undecided
        response = chat(gw.sdk(), "fresh", user=f"u{i}")
        rate(gw, id=response.parse().id, rating="up" if i % 2 else "down")
    refresh(gw)
    trained(12, 60, 100)  # 160 < 2 x 101: not enough more to cut the first one's test short
    assert experiments.judge_all(db, policy) == [("fresh", "continue", "")]
    third = trained(13, 135, 238)
    ((_, decision, why), started) = experiments.judge_all(db, policy)
    assert decision == "rollback" and third in why and "superseded" in why, why
    assert started == ("fresh", "start", third)  # the newest approved one, not the 160-thumb one
    assert state_of(db, first) == AdapterState.retired
    # an operator's policy without auto-start keeps its experiments to itself
    fourth = trained(14, 1000, 1000)
    manual = experiments.Policy(default_share=0.5, min_ratings=0, auto_start=False)
    assert experiments.judge_all(db, manual) == [("fresh", "continue", "")]
    assert state_of(db, fourth) == AdapterState.approved

"""Segments (adapters/segments.py) through the gateway (fake vLLM, real SQLite and PostgreSQL)
and in the trainer's data and scheduler: routing by the declared segment, one segment's
experiment and training never touching another's users or feedback, the caps."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from adapters import experiments, registry, segments
from adapters.db import make_engine, make_sessionmaker
from adapters.errors import InvalidAdapter, InvalidRequest, NotFound
from adapters.feedback import write_interactions
from adapters.schema import AdapterEvent, AdapterState, AdapterVersion, Experiment, Interaction, TrainingRun
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway, chat, fake_adapter, new_key
from tests.unit.test_experiments import refresh
from tests.unit.test_preference_data import Store
from tests.unit.test_scheduler import approved, settings_for
from trainer.data import DataConfig, for_alias, rated_answers
from trainer.scheduler import run_once
from trainer.train import champion_of

FORMAL = {"x-loraloop-segment": "formal"}


@pytest.fixture
def db(gw: Gateway):  # type: ignore[no-untyped-def]
    engine = make_engine(gw.settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def served(gw: Gateway, user: str, headers: dict | None = None, model: str = "default") -> tuple[str, str, str]:
    """(adapter version, alias, segment) that answered, as the response headers say."""
    h = chat(gw.sdk(), model, user=user, extra_headers=headers or {}).headers
    return h["x-loraloop-adapter-version"], h["x-loraloop-alias"], h["x-loraloop-segment"]


def logged(gw: Gateway, db) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    with db() as session:
        return [(i.requested_model, i.segment, i.adapter_version)
                for i in session.scalars(select(Interaction).order_by(Interaction.created_at))]


def test_a_declared_segment_is_served_by_the_alias_until_it_has_its_own(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    assert served(gw, "ada", FORMAL) == (gw.champion, "default", "formal")
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops", reason="formal customers")
    refresh(gw)
    # its own alias now, serving the alias's champion: nothing changes for its users yet
    assert served(gw, "ada", FORMAL) == (gw.champion, "default@formal", "formal")
    models = {m.id: m for m in gw.sdk().models.list()}
    assert models["default@formal"].model_extra == {"kind": "alias", "champion": gw.champion}
    with db.begin() as session:
        registry.set_champion(session, "default@formal", gw.pinned, actor="ops")
    refresh(gw)
    assert served(gw, "ada", FORMAL) == (gw.pinned, "default@formal", "formal")
    assert served(gw, "bob") == (gw.champion, "default", "")  # no segment: the alias's champion
    assert served(gw, "cy", {"x-loraloop-segment": "casual"}) == (gw.champion, "default", "casual")
    assert served(gw, "dan", model="default@formal") == (gw.pinned, "default@formal", "formal")  # named directly
    assert logged(gw, db) == [("default", "formal", gw.champion), ("default@formal", "formal", gw.champion),
                              ("default@formal", "formal", gw.pinned), ("default", "", gw.champion),
                              ("default", "casual", gw.champion), ("default@formal", "formal", gw.pinned)]
    with db() as session:
        [event] = session.scalars(select(AdapterEvent).where(AdapterEvent.action == "segment_create"))
        assert (event.alias, event.actor, event.reason) == ("default@formal", "ops", "formal customers")


@pytest.mark.parametrize("segment", ["Formal", "a b", "x" * 33, "-lead", "\xe9".encode("latin-1"), b"\xff\xfe",
                                     "formal@x"])
def test_a_bad_segment_is_refused_and_logs_nothing(gw: Gateway, db, segment: str | bytes) -> None:  # type: ignore[no-untyped-def]
    response = gw.http.post("/v1/chat/completions", json={"model": "default", "messages": [{"role": "user",
                                                                                            "content": "hi"}]},
                            headers={"authorization": f"Bearer {gw.app_key}", "x-loraloop-segment": segment})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "segment"
    assert logged(gw, db) == []


def test_a_segments_experiment_reaches_only_its_users(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops")
        experiment = experiments.start(session, "default@formal", gw.pinned, 0.5, 24, actor="ops")
        assert experiment.champion == gw.champion  # a segment without its own: tested against the alias's
    refresh(gw)
    formal = {served(gw, f"u{i}", FORMAL)[0] for i in range(40)}
    others = {served(gw, f"u{i}")[0] for i in range(40)}
    # what its candidates sample from, and the gate compares with: what its users get
    assert champion_of(gw.settings.db_url, "default@formal")[0] == gw.champion
    assert formal == {gw.pinned, gw.champion}
    assert others == {gw.champion}  # the canary of one segment never reaches anyone else
    with db.begin() as session:
        experiments.promote(session, "default@formal", actor="ops")
    refresh(gw)
    assert {served(gw, f"u{i}", FORMAL)[0] for i in range(10)} == {gw.pinned}
    assert {served(gw, f"u{i}")[0] for i in range(10)} == {gw.champion}
    with db() as session:
        assert registry.snapshot(session).aliases["default"] == gw.champion  # the alias kept its champion


def test_segments_are_capped_per_alias(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        for name in ("a", "b"):
            segments.create(session, "default", name, actor="ops", max_segments=2)
        with pytest.raises(InvalidAdapter, match="most allowed"):
            segments.create(session, "default", "c", actor="ops", max_segments=2)
        with pytest.raises(InvalidAdapter, match="itself a segment"):
            segments.create(session, "default@a", "x", actor="ops")
        with pytest.raises(NotFound):
            segments.create(session, "nope", "x", actor="ops")
        with pytest.raises(InvalidRequest):
            segments.create(session, "default", "Bad Name", actor="ops")
        with pytest.raises(NotFound):  # a segment's alias is made by segments.create only
            registry.set_champion(session, "default@z", gw.pinned)


def test_declared_segments_earn_an_alias_by_rated_answers_most_rated_first(db_url: str) -> None:
    store = Store(db_url)
    d = "default"  # the tenant whose feedback trains the shared alias `default` (trainer/data.py)
    for label, rated in (("big", 5), ("mid", 3), ("small", 1)):
        for i in range(rated + 2):
            answer = store.answer(f"{label} {i}", "text", user=f"{label}-{i}", segment=label, tenant=d)
            if i < rated:
                store.rate(answer, 1, tenant=d)
    stuffed = store.answer("stuffed", "text", user="victim", segment="stuffed", tenant=d)
    for fake in range(10):  # one answer rated under ten invented users is one vote
        store.rate(stuffed, 1, user=f"fake-{fake}", tenant=d)
    for i in range(20):  # another tenant's keys cannot claim the shared alias's segment slots
        store.rate(store.answer(f"squat {i}", "text", segment="squat", tenant="t"), 1, tenant="t")
    with store.session() as session:
        assert segments.declared_counts(session, "default")["big"] == (7, 5)
        assert "squat" not in segments.declared_counts(session, "default")
    assert segments.ensure_segments(store.sessions, min_ratings=2, max_segments=2) == ["default@big", "default@mid"]
    assert segments.ensure_segments(store.sessions, min_ratings=2, max_segments=2) == []  # none twice, cap kept
    with store.session() as session:
        listed = segments.overview(session, "default")
    assert [(s["alias"], s["segment"]) for s in listed] == [
        ("default@big", "big"), ("default@mid", "mid"), (None, "small"), (None, "stuffed")]


def test_a_client_sending_thousands_of_labels_gets_a_bounded_answer(db_url: str) -> None:
    """Labels cost the scheduler a GROUP BY with a LIMIT, whatever their number; the used ones win."""
    store = Store(db_url)
    rows = [{"id": f"chatcmpl-spam-{i}", "key_id": 1, "tenant": "default", "end_user": "spam",
             "requested_model": "default", "adapter_version": None, "arm": "champion", "kind": "chat", "prompt": [],
             "response": "x", "finish_reason": "stop", "status": 200, "latency_ms": 1.0, "segment": f"spam-{i}"}
            for i in range(3000)]
    with store.sessions.begin() as session:
        write_interactions(session, rows)
    for i in range(3):
        store.rate(store.answer(f"q{i}", "text", user=f"u{i}", segment="real", tenant="default"), 1, tenant="default")
    with store.session() as session:
        top = segments.declared_counts(session, "default", limit=5)
        assert len(top) == 5 and top["real"] == (3, 3)
        assert segments.declared_counts(session, "default", min_rated=1) == {"real": (3, 3)}
    assert segments.ensure_segments(store.sessions, min_ratings=3) == ["default@real"]


def test_a_segment_trains_on_its_own_feedback_and_the_alias_on_the_rest(db_url: str) -> None:
    """Its rows from before it had an alias count for it; what it served since, for it only."""
    store = Store(db_url)
    ids = {"plain": store.answer("p", "plain", segment=""),
           "formal-early": store.answer("f1", "formal early", segment="formal"),
           "formal-late": store.answer("f2", "formal late", segment="formal", model="default@formal"),
           "casual": store.answer("c", "casual", segment="casual"),
           "other-alias": store.answer("o", "other", model="support")}
    for answer in ids.values():
        store.rate(answer, 1)
    with store.sessions.begin() as session:
        session.add(registry.Alias(name="support"))
        session.flush()
        segments.create(session, "default", "formal", actor="ops")

    def trains(alias: str) -> set[str]:
        with store.session() as session:
            cfg = for_alias(session, alias, DataConfig(heldout_fraction=0.0, cross_tenant=True))
            return {a.text for a in rated_answers(session, cfg)}

    assert trains("default@formal") == {"formal early", "formal late"}
    # any other alias, as before segments: its tenants' feedback (trainer/data.py), less the segment's
    assert trains("default") == trains("support") == {"plain", "casual", "other"}


def test_the_scheduler_trains_each_alias_in_turn_on_its_own_new_ratings(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path, segment_min_ratings=3)
    for i in range(3):
        store.rate(store.answer(f"f{i}", "text", segment="formal", tenant="default"), 1, tenant="default")
    for i in range(4):
        store.rate(store.answer(f"p{i}", "text", tenant="default"), 1, tenant="default")

    def trained() -> list[str | None]:
        with store.session() as session:
            return list(session.scalars(select(TrainingRun.alias).order_by(TrainingRun.id)))

    # the tick creates default@formal (3 rated answers), then trains the alias never trained
    # with the most new ratings: "default" (its 4) before the segment (its 3)
    assert run_once(settings, approved) == "approved"
    assert trained() == ["default"]
    assert run_once(settings, approved) == "approved"
    assert trained() == ["default", "default@formal"]
    assert run_once(settings, approved) == "not_enough_data"
    for i in range(3):  # new ratings of the segment count for it, not for the alias
        store.rate(store.answer(f"g{i}", "text", segment="formal", model="default@formal", tenant="default"), 1,
                   tenant="default")
    assert run_once(settings, approved) == "approved"
    assert trained() == ["default", "default@formal", "default@formal"]
    assert run_once(settings, approved) == "not_enough_data"


def test_operators_create_and_inspect_segments_through_the_admin_api(gw: Gateway) -> None:
    admin, app = ({"authorization": f"Bearer {k}"} for k in (gw.admin_key, gw.app_key))
    served(gw, "ada", FORMAL)
    assert gw.http.post("/admin/aliases/default/segments", json={"segment": "formal"}, headers=app).status_code == 403
    created = gw.http.post("/admin/aliases/default/segments", json={"segment": "formal", "reason": "cohort"},
                           headers=admin)
    assert created.json() == {"alias": "default@formal", "parent": "default", "segment": "formal"}
    # the creating replica routes by it at once
    assert served(gw, "ada", FORMAL) == (gw.champion, "default@formal", "formal")
    # declared labels without an alias, as counted for it: tenant "default"'s (the shared alias's)
    chat(gw.sdk(new_key(gw, tenant="default")), "default", user="bob", extra_headers={"x-loraloop-segment": "casual"})
    chat(gw.sdk(), "default", user="cy", extra_headers={"x-loraloop-segment": "elsewhere"})  # tenant acme's
    gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    listed = gw.http.get("/admin/segments", headers=admin).json()["data"]
    assert [(s["alias"], s["segment"]) for s in listed] == [("default@formal", "formal"), (None, "casual")]
    shown = gw.http.get("/admin/segments/default@formal", headers=admin).json()
    assert (shown["serves"], shown["champion"], shown["answers"], shown["users"]) == (gw.champion, None, 2, 1)
    assert [h["action"] for h in shown["history"]] == ["segment_create"]
    bad = gw.http.post("/admin/aliases/default/segments", json={"segment": "No Spaces"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "segment"
    assert gw.http.get("/admin/segments/default", headers=admin).status_code == 404


def test_rolling_back_a_segments_first_champion_gives_it_its_parents_again(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops")
        experiments.start(session, "default@formal", gw.pinned, 0.5, 24, actor="ops")
        experiments.promote(session, "default@formal", actor="auto")
    refresh(gw)
    assert served(gw, "ada", FORMAL)[0] == gw.pinned
    with db.begin() as session:  # no experiment open: rollback restores the previous champion
        assert experiments.rollback(session, "default@formal", actor="ops", reason="worse") == gw.champion
    refresh(gw)
    assert served(gw, "ada", FORMAL)[0] == gw.champion
    with db() as session:
        row = session.get(registry.Alias, "default@formal")
        assert row is not None and row.champion is None  # following its parent again
        assert session.get(AdapterVersion, gw.pinned).state == AdapterState.retired  # type: ignore[union-attr]


def test_a_parents_promotion_does_not_swap_a_segment_experiments_champion_arm(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    """The judge counts each arm's version; the segment's champion arm stays the one the
    experiment started with, and its users' answers keep counting."""
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops")
        # a third version, approved, to be the canary; `pinned` becomes the parent's new champion
        canary = registry.register(session, fake_adapter(gw.settings.data_dir / "d", 4), gw.settings.data_dir / "store",
                                   BASE, prefix="canary", state=AdapterState.approved).name
        experiments.start(session, "default@formal", canary, 0.5, 24, actor="ops")
        registry.set_champion(session, "default", gw.pinned, actor="ops", reason="parent moves on")
    refresh(gw)
    assert {served(gw, f"u{i}", FORMAL)[0] for i in range(40)} == {gw.champion, canary}
    assert {served(gw, f"u{i}")[0] for i in range(10)} == {gw.pinned}
    gw.http.portal.call(gw.http.app.state.gateway.log.flush)
    with db() as session:
        [experiment] = session.scalars(select(Experiment))
        numbers = experiments.arm_numbers(session, experiment)
    assert numbers["champion"].requests + numbers["canary"].requests == 40  # every formal answer counted
    with db.begin() as session:  # it ended: the segment follows its parent again
        experiments.rollback(session, "default@formal", actor="ops")
    refresh(gw)
    assert served(gw, "u1", FORMAL)[0] == gw.pinned


def test_the_new_ratings_trigger_counts_other_tenants_only_with_cross_tenant(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    for i in range(3):
        store.rate(store.answer(f"q{i}", "text", tenant="globex"), 1, tenant="globex")
    assert run_once(settings_for(db_url, tmp_path), approved) == "not_enough_data"
    assert run_once(settings_for(db_url, tmp_path, train_args="--cross-tenant"), approved) == "approved"


def test_an_alias_a_tenant_owns_is_trained_on_that_tenants_new_ratings(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    with store.sessions.begin() as session:
        session.add(registry.Alias(name="acme-support", tenant="acme"))
    for i in range(3):
        store.rate(store.answer(f"a{i}", "text", tenant="acme", model="acme-support"), 1, tenant="acme")
    settings = settings_for(db_url, tmp_path)
    assert run_once(settings, approved) == "approved"
    assert run_once(settings, approved) == "not_enough_data"  # "default" (tenant default's) has nothing new
    with store.session() as session:
        assert list(session.scalars(select(TrainingRun.alias))) == ["acme-support"]


def test_more_live_adapters_than_vllm_batches_is_logged_once(gw: Gateway, db, caplog) -> None:  # type: ignore[no-untyped-def]
    state = gw.http.app.state.gateway
    state.settings.engine.max_loras = 1
    gw.http.portal.call(state.sync_fleet)
    assert "adapter versions are live" not in caplog.text  # one champion: it fits
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops")
        registry.set_champion(session, "default@formal", gw.pinned, actor="ops")
    refresh(gw)
    for _ in range(2):
        gw.http.portal.call(state.sync_fleet)
    assert caplog.text.count("2 adapter versions are live") == 1  # not once a sync


def test_a_deleted_segment_serves_its_users_the_alias_and_trains_the_alias_again(gw: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    with db.begin() as session:
        segments.create(session, "default", "formal", actor="ops")
        experiments.start(session, "default@formal", gw.pinned, 0.5, 24, actor="ops")
    refresh(gw)
    refused = gw.http.delete("/admin/segments/default@formal", headers=admin)
    assert refused.status_code == 400 and "roll it back" in refused.json()["error"]["message"]
    with db.begin() as session:
        experiments.promote(session, "default@formal", actor="ops")
    refresh(gw)
    assert served(gw, "ada", FORMAL) == (gw.pinned, "default@formal", "formal")
    deleted = gw.http.delete("/admin/segments/default@formal", params={"reason": "too small"}, headers=admin)
    assert deleted.status_code == 200
    assert served(gw, "ada", FORMAL) == (gw.champion, "default", "formal")  # the alias's champion again
    assert gw.http.post("/v1/chat/completions", json={"model": "default@formal", "messages": [
        {"role": "user", "content": "hi"}]}, headers={"authorization": f"Bearer {gw.app_key}"}).status_code == 404
    with db() as session:
        assert session.get(AdapterVersion, gw.pinned).state == AdapterState.retired  # type: ignore[union-attr]
        scope = for_alias(session, "default", DataConfig())
        assert scope.segments_off == ()  # its traffic is the alias's again
        [event] = session.scalars(select(AdapterEvent).where(AdapterEvent.action == "segment_delete"))
        assert (event.reason, event.numbers["champion"]) == ("too small", gw.pinned)
        assert [s.alias for s in segments.list_segments(session)] == []
    # the scheduler does not bring it back, whatever its users rate; an operator can
    assert segments.ensure_segments(db, min_ratings=0) == []
    with db.begin() as session:
        restored = segments.create(session, "default", "formal", actor="ops", reason="back")
        assert (restored.deleted_at, restored.champion) == (None, None)  # following the alias's champion
    refresh(gw)
    assert served(gw, "ada", FORMAL) == (gw.champion, "default@formal", "formal")
    with db.begin() as session, pytest.raises(InvalidAdapter, match="only segments"):
        segments.delete(session, "default", actor="ops")

"""Learned segments (trainer/taste_clusters.py, trainer/segment_learning.py): users whose
thumbs disagree are split and each group served its own segment's alias; users who all want
one thing are never split; a user is moved by their own thumbs only, stickily; routing,
training scope and operators' views follow. Real SQLite and PostgreSQL, fake vLLM."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import select

from adapters.feedback import Rating, write_interactions, write_ratings
from adapters.schema import AdapterEvent, Alias, SegmentAssignment
from demo.personas import persona
from demo.population import Habits
from gateway.routing import Assignments
from tests.unit.harness import Gateway, chat, new_key
from tests.unit.test_experiments import refresh
from tests.unit.test_preference_data import Store
from trainer import segment_learning, taste_clusters
from trainer.data import DataConfig, for_alias, rated_answers
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt
from trainer.segment_learning import LearnConfig

HABITS = Habits(liked=0.3, disliked=0.6, noise=0.2)  # one-sided and noisy, denser than real users for speed


def population(tastes: list[str], users: int = 40, votes: int = 30, seed: int = 0, prefix: str = "user"
               ) -> list[tuple[str, str, str, int]]:
    """(user, prompt, answer, +1/-1) thumbs of simulated users, user i of tastes[i * len // users]."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        taste, got = persona(tastes[u * len(tastes) // users]), 0
        while got < votes:
            task, name = rng.randrange(len(TASKS)), rng.choice(NAMES)
            prompt, answer = make_prompt(task, name, rng), make_answer(task, name, Style.random(rng), rng)
            thumb = HABITS.thumb(taste.likes(prompt, answer), rng)
            if thumb is not None:
                rows.append((f"{prefix}-{u}", prompt, answer, 1 if thumb else -1))
                got += 1
    return rows


def as_votes(rows: list[tuple[str, str, str, int]]) -> taste_clusters.Votes:
    x, columns = taste_clusters.features([r[2] for r in rows])
    return taste_clusters.Votes([r[0] for r in rows], x, np.array([float(r[3]) for r in rows]),
                                np.arange(len(rows)) % 2 == 1, columns=columns)


def store_thumbs(store: Store, rows: list[tuple[str, str, str, int]], model: str = "default",
                 tenant: str = "default", rater: str | None = None, version: str = "v1") -> list[str]:
    """Logs each row as an answer to `model` and its thumb, given by its own user (or by
    `rater`); returns the answer ids."""
    start = store.n
    store.n += len(rows)
    answers = [{"id": f"chatcmpl-l{start + i}", "key_id": 1, "tenant": tenant, "end_user": user,
                "requested_model": model, "adapter_version": version, "arm": "champion", "kind": "chat",
                "prompt": [{"role": "user", "content": prompt}], "response": text, "finish_reason": "stop",
                "status": 200, "latency_ms": 1.0, "segment": ""} for i, (user, prompt, text, _) in enumerate(rows)]
    with store.sessions.begin() as session:
        write_interactions(session, answers)
        write_ratings(session, [Rating(a["id"], rater, r[3], None, tenant) for a, r in zip(answers, rows, strict=True)])
    return [a["id"] for a in answers]


def placed(store: Store) -> dict[str, str]:
    with store.session() as session:
        return dict(session.execute(select(SegmentAssignment.end_user, SegmentAssignment.segment)).tuples().all())


def wrong(assigned: dict[str, str], half: int = 20) -> int:
    """Users sitting with the other taste's majority (users 0..half-1 have the first taste)."""
    first = Counter(s for u, s in assigned.items() if int(u.rsplit("-", 1)[1]) < half).most_common(1)[0][0]
    return sum((s == first) != (int(u.rsplit("-", 1)[1]) < half) for u, s in assigned.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opposite_tastes_are_split_in_two_with_few_users_misplaced(seed: int) -> None:
    rows = population(["formal", "casual"], seed=seed)
    split = taste_clusters.find_split(as_votes(rows), seed=seed)
    assert split is not None and split.k == 2 and split.heldout_users == 40
    assert wrong({u: str(c) for u, c in split.clusters.items()}) <= 2


@pytest.mark.parametrize("tastes", [["formal"], ["formal-for-errands"], ["casual+no-name"]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_users_who_want_one_thing_are_never_split(tastes: list[str], seed: int) -> None:
    """A request-dependent taste shared by all is one taste, not two groups."""
    assert taste_clusters.find_split(as_votes(population(tastes, seed=seed)), seed=seed) is None


def test_learning_creates_a_segment_per_taste_and_places_users(db_url: str) -> None:
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    done = segment_learning.learn(store.sessions, "default")
    assert done["created"] == ["taste-1", "taste-2"] and done["assigned"] == 40, done
    assigned = placed(store)
    assert len(assigned) == 40 and wrong(assigned) <= 2
    with store.session() as session:
        rows = {a.name: a for a in session.scalars(select(Alias).where(Alias.parent == "default"))}
        assert {n: (a.learned, a.champion) for n, a in rows.items()} == {
            "default@taste-1": (True, None), "default@taste-2": (True, None)}  # serving the alias's champion
        actions = [e.action for e in session.scalars(select(AdapterEvent).order_by(AdapterEvent.id))]
        assert actions == ["segment_create", "segment_create", "segment_assign"]
    # each segment trains on what its users were served by the alias before; the alias on the rest
    store_thumbs(store, population(["formal"], users=2, votes=2, prefix="newcomer"))
    with store.session() as session:
        for segment in ("taste-1", "taste-2"):
            cfg = for_alias(session, f"default@{segment}", DataConfig(heldout_fraction=0.0))
            users = {a.end_user for a in rated_answers(session, cfg)}
            assert users == {u for u, s in assigned.items() if s == segment}
        cfg = for_alias(session, "default", DataConfig(heldout_fraction=0.0))
        assert {a.end_user for a in rated_answers(session, cfg)} == {"newcomer-0", "newcomer-1"}
    assert segment_learning.learn(store.sessions, "default")["added"] == 0  # newcomers: too few thumbs yet


def test_a_user_moves_only_on_their_own_thumbs_and_only_by_a_margin(db_url: str) -> None:
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    segment_learning.learn(store.sessions, "default")
    before = placed(store)
    formal = before["user-0"]
    assert before["user-39"] != formal  # users 20-39 like casual answers
    # a few thumbs the other way: nobody bounces between adapters (sticky)
    store_thumbs(store, [("user-39", p, a, r) for _, p, a, r in population(["formal"], users=1, votes=4, seed=7)])
    segment_learning.learn(store.sessions, "default")
    assert placed(store) == before
    # user-38's answers thumbed the formal way by other user ids (a client inventing raters): ignored
    store_thumbs(store, [("user-38", p, a, r) for _, p, a, r in population(["formal"], users=1, votes=90, seed=8)],
                 rater="attacker")
    # user-39 now likes formal answers, by their own thumbs: they move, and where they were is kept
    store_thumbs(store, [("user-39", p, a, r) for _, p, a, r in population(["formal"], users=1, votes=90, seed=9)])
    segment_learning.learn(store.sessions, "default")
    after = placed(store)
    assert {u for u in before if before[u] != after[u]} == {"user-39"} and after["user-39"] == formal
    with store.session() as session:
        row = session.get(SegmentAssignment, ("default", "default", "user-39"))
        assert row is not None and row.previous_segment == before["user-39"]
        event = session.scalars(select(AdapterEvent).order_by(AdapterEvent.id.desc())).first()
        assert event is not None and event.action == "segment_assign" and event.numbers["moved"] == 1


def test_a_split_needs_free_slots_and_another_tenants_users_count_for_nothing(db_url: str) -> None:
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]), tenant="acme")  # not the shared alias's tenant
    assert segment_learning.learn(store.sessions, "default") == {"alias": "default", "skipped": "no rated answers"}
    store_thumbs(store, population(["formal", "casual"], seed=3))
    done = segment_learning.learn(store.sessions, "default", LearnConfig(max_segments=1))
    assert done["split"] == 2 and "slots" in done["skipped"]
    assert placed(store) == {}


def test_a_placed_user_is_routed_to_their_segment_for_the_placing_tenant_only(gw: Gateway, db_url: str) -> None:
    store = Store(gw.settings.db_url)
    store_thumbs(store, population(["formal", "casual"]))
    segment_learning.learn(store.sessions, "default")
    mine = placed(store)["user-3"]
    refresh(gw)
    default_tenant = gw.sdk(new_key(gw, tenant="default"))

    def route(client, user: str, headers: dict | None = None) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        h = chat(client, "default", user=user, extra_headers=headers or {}).headers
        return h["x-loraloop-alias"], h["x-loraloop-segment"]

    assert route(default_tenant, "user-3") == (f"default@{mine}", mine)
    assert route(default_tenant, "someone-new") == ("default", "")
    assert route(gw.sdk(), "user-3") == ("default", "")  # tenant acme's user-3 is someone else
    declared = route(default_tenant, "user-3", {"x-loraloop-segment": "vip"})
    assert declared == ("default", "vip")  # the app's declaration wins
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    users = gw.http.get(f"/admin/segments/default@{mine}/users", params={"limit": 5}, headers=admin).json()["data"]
    assert len(users) == 5 and all(placed(store)[u["user"]] == mine for u in users)
    page = gw.http.get(f"/admin/segments/default@{mine}/users", params={"after": users[-1]["user"]},
                       headers=admin).json()["data"]
    assert page and page[0]["user"] > users[-1]["user"]
    shown = gw.http.get(f"/admin/segments/default@{mine}", headers=admin).json()
    assert shown["learned"] is True and shown["members"] == sum(s == mine for s in placed(store).values())


def test_an_unreadable_assignment_serves_the_alias() -> None:
    """The database down: a user is served as if they had no segment, not refused."""
    from sqlalchemy.exc import OperationalError

    def broken():  # type: ignore[no-untyped-def]
        raise OperationalError("select", {}, Exception("down"))

    import anyio

    assert anyio.run(Assignments(broken).segment, "default", "default", "u") == ""  # type: ignore[arg-type]


def test_deleting_a_learned_segment_unassigns_its_users_and_its_name_is_not_reused(db_url: str) -> None:
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    segment_learning.learn(store.sessions, "default")
    with store.sessions.begin() as session:
        from adapters import segments

        segments.delete(session, "default@taste-1", actor="ops")
        segments.delete(session, "default@taste-2", actor="ops")
    assert placed(store) == {}
    done = segment_learning.learn(store.sessions, "default")  # the users still disagree: a new split
    assert done["created"] == ["taste-3", "taste-4"], done
    assert set(placed(store).values()) == {"taste-3", "taste-4"}


def served_by_own_segment(assigned: dict[str, str], votes: int = 100, seed: int = 11,
                          formal_segment: str | None = None) -> list[tuple]:
    """Thumbs of users each served their segment's style only (formal for users 0-19's
    segment), a third of the answers broken (about another task): what users see once each
    segment has its own champion. (user, prompt, answer, thumb, version)"""
    rng = random.Random(seed)
    formal_segment = formal_segment or assigned["user-0"]
    rows = []
    for user, segment in sorted(assigned.items()):
        taste = persona("formal" if int(user.split("-")[1]) < 20 else "casual")
        got = 0
        while got < votes:
            task, name = rng.randrange(len(TASKS)), rng.choice(NAMES)
            style = Style(formal=segment == formal_segment, long=rng.random() < 0.5, name=rng.random() < 0.5,
                          question=rng.random() < 0.5)
            answered = (task + 1) % len(TASKS) if rng.random() < 0.3 else task
            prompt, answer = make_prompt(task, name, rng), make_answer(answered, name, style, rng)
            thumb = HABITS.thumb(taste.likes(prompt, answer), rng)
            if thumb is not None:
                rows.append((user, prompt, answer, 1 if thumb else -1, f"champion-{segment}"))
                got += 1
    return rows


def test_users_served_their_own_style_stay_put(db_url: str) -> None:
    """Thumbs are read against what the user was shown: a formal user thumbing down broken
    formal answers has not started to like casual ones."""
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    segment_learning.learn(store.sessions, "default")
    before = placed(store)
    for version in sorted(set(before.values())):
        mine = [r for r in served_by_own_segment(before) if r[4] == f"champion-{version}"]
        store_thumbs(store, [r[:4] for r in mine], model=f"default@{version}", version=f"champion-{version}")
    # newcomers, served the alias's champion (both styles), are placed by the tastes stored
    # with the split: members' recent thumbs no longer show them
    store_thumbs(store, population(["formal", "casual"], users=10, votes=20, seed=12, prefix="new"))
    done = segment_learning.learn(store.sessions, "default")
    assert (done["moved"], done["added"]) == (0, 10), done
    after = placed(store)
    assert {u: s for u, s in after.items() if u.startswith("user-")} == before
    newcomers = {u: s for u, s in after.items() if u.startswith("new-")}
    assert sum(s != before["user-0"] for u, s in newcomers.items() if int(u.split("-")[1]) < 5) <= 1
    assert sum(s == before["user-0"] for u, s in newcomers.items() if int(u.split("-")[1]) >= 5) <= 1


def test_one_user_rating_thousands_of_answers_does_not_hide_the_others(db_url: str) -> None:
    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    store_thumbs(store, population(["formal"], users=1, votes=3000, seed=4, prefix="bot"))  # the newest rows
    done = segment_learning.learn(store.sessions, "default", LearnConfig(max_votes=2000))
    assert done["created"] == ["taste-1", "taste-2"], done
    assert sum(1 for u in placed(store) if u.startswith("user-")) == 40


def test_learned_names_are_reserved(gw: Gateway) -> None:
    """A client cannot declare its way into a learned segment nor take a learned name."""
    response = gw.http.post("/v1/chat/completions", json={"model": "default", "messages": [
        {"role": "user", "content": "hi"}]}, headers={"authorization": f"Bearer {gw.app_key}",
                                                      "x-loraloop-segment": "taste-1"})
    assert response.status_code == 400 and "reserved" in response.json()["error"]["message"]
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    taken = gw.http.post("/admin/aliases/default/segments", json={"segment": "taste-1"}, headers=admin)
    assert taken.status_code == 400


def test_a_failing_learning_pass_does_not_stop_training(db_url: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_scheduler import add_ratings, approved, settings_for
    from trainer.scheduler import run_once

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(segment_learning, "learn", broken)
    add_ratings(Store(db_url), 3)
    assert run_once(settings_for(db_url, tmp_path), approved) == "approved"


def test_a_misplaced_user_leaves_their_segment_and_is_placed_right(db_url: str) -> None:
    """A member who likes their segment's answers far less than its other members do gets
    the alias's champion again, and their next thumbs place them where they belong."""
    from adapters import segment_assignments
    from adapters.segment_assignments import Placement

    store = Store(db_url)
    store_thumbs(store, population(["formal", "casual"]))
    segment_learning.learn(store.sessions, "default")
    before = placed(store)
    formal, casual = before["user-1"], before["user-39"]
    with store.sessions.begin() as session:  # user-0 likes formal answers but sits with casual users
        segment_assignments.place(session, "default", "default", {"user-0": Placement(casual, 6, 0.1)},
                                  actor="test", reason="misplaced")
    misplaced = {**before, "user-0": casual}
    for segment in (formal, casual):
        mine = [r for r in served_by_own_segment(misplaced, votes=60, formal_segment=formal)
                if r[4] == f"champion-{segment}"]
        store_thumbs(store, [r[:4] for r in mine], model=f"default@{segment}", version=f"champion-{segment}")
    done = segment_learning.learn(store.sessions, "default")
    assert done["unplaced"] == 1 and "user-0" not in placed(store), done
    assert {u: s for u, s in placed(store).items()} == {u: s for u, s in before.items() if u != "user-0"}
    # back on the alias's champion (both styles), user-0's thumbs place them with the formal users
    store_thumbs(store, [("user-0", p, a, r) for _, p, a, r in population(["formal"], users=1, votes=40, seed=13)])
    segment_learning.learn(store.sessions, "default")
    assert placed(store)["user-0"] == formal


def test_one_bad_lookup_does_not_make_everyone_skip_the_database() -> None:
    """An error of one user's read (say PostgreSQL refusing an id) costs that request its
    learned segment only; a dead database makes every lookup back off for a while."""
    import anyio
    from sqlalchemy.exc import DataError, OperationalError

    calls: list[str] = []

    class Failing:
        def __init__(self, error: Exception):
            self.error = error

        def __call__(self):  # type: ignore[no-untyped-def]
            calls.append("read")
            raise self.error

    odd = Assignments(Failing(DataError("select", {}, Exception("bad id"))))  # type: ignore[arg-type]
    assert anyio.run(odd.segment, "default", "default", "u1") == ""
    assert anyio.run(odd.segment, "default", "default", "u2") == "" and calls == ["read", "read"]
    calls.clear()
    down = Assignments(Failing(OperationalError("select", {}, Exception("down"))))  # type: ignore[arg-type]
    assert anyio.run(down.segment, "default", "default", "u1") == ""
    assert anyio.run(down.segment, "default", "default", "u2") == "" and calls == ["read"]  # backed off

"""Feedback -> DPO/KTO/SFT data: pairing rules, dedupe, per-user caps, held-out split by prompt,
purge; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.feedback import Rating, purge_before, purge_user, write_interactions, write_ratings
from adapters.schema import Alias, Feedback, Interaction, utcnow
from trainer.data import DataConfig, build, for_alias, is_heldout, prompt_key, report, sample_pairs, served_prompts


class Store:
    def __init__(self, db_url: str):
        self.engine = make_engine(db_url)
        upgrade(self.engine)
        self.sessions = make_sessionmaker(self.engine)
        self.n = 0

    def answer(self, prompt: str | list[dict], text: str, *, user: str = "u", regenerates: str | None = None,
               logged: bool = True, version: str | None = "v1", age_days: int = 0, tenant: str = "t",
               model: str = "default", prompt_tokens: int = 3, key: int = 1, segment: str = "",
               kind: str = "chat") -> str:
        self.n += 1
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and kind == "chat" else prompt
        row = {"id": f"chatcmpl-{self.n}", "key_id": key, "tenant": tenant, "end_user": user,
               "requested_model": model, "adapter_version": version, "arm": "champion", "kind": kind,
               "prompt": messages if logged else None,
               "response": text if logged else None, "finish_reason": "stop", "status": 200,
               "prompt_tokens": prompt_tokens, "completion_tokens": 5, "latency_ms": 1.0, "regenerates": regenerates,
               "created_at": utcnow() - timedelta(days=age_days), "segment": segment}
        with self.sessions.begin() as session:
            write_interactions(session, [row])
        return row["id"]

    def rate(self, answer_id: str, rating: int, user: str | None = None, tenant: str = "t") -> None:
        with self.sessions.begin() as session:
            [result] = write_ratings(session, [Rating(answer_id, user, rating, None, tenant)])
        assert result.stored

    def session(self) -> Session:
        return self.sessions()


@pytest.fixture
def store(db_url: str):
    s = Store(db_url)
    yield s
    s.engine.dispose()


ALL_TRAIN = DataConfig(heldout_fraction=0.0)


def test_liked_and_disliked_answers_to_the_same_prompt_make_a_pair(store: Store) -> None:
    good = store.answer("Book a table", "Certainly, Ada.")
    bad = store.answer("Book a table", "k")
    store.rate(good, 1)
    store.rate(bad, -1)
    store.rate(bad, -1, user="second opinion")
    other = store.answer("Reset my password", "Done.")
    store.rate(other, -1)  # a different prompt: pairs with nothing
    with store.session() as session:
        pairs = build(session, "dpo", ALL_TRAIN)["train"]
    assert pairs == [{"prompt": [{"role": "user", "content": "Book a table"}],
                      "chosen": [{"role": "assistant", "content": "Certainly, Ada."}],
                      "rejected": [{"role": "assistant", "content": "k"}], "source": "same_prompt"}]


def test_an_answer_has_one_vote_its_own_users(store: Store) -> None:
    """One client rating an answer under 50 invented users does not outvote the person who
    got it: the answer's own end user's rating is its vote, counted once."""
    stuffed = store.answer("Plan a trip", "Mountains!", user="ada")
    with store.sessions.begin() as session:
        write_ratings(session, [Rating(stuffed, f"sock-{n}", -1, None, "t") for n in range(50)])
    store.rate(stuffed, 1)  # ada's own thumbs-up, given last
    bad = store.answer("Plan a trip", "no", user="ada")
    store.rate(bad, -1)
    with store.session() as session:
        kto = build(session, "kto", ALL_TRAIN)["train"]
        assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [("Mountains!", True), ("no", False)]
        assert [p["chosen"][0]["content"] for p in build(session, "dpo", ALL_TRAIN)["train"]] == ["Mountains!"]
        summary = report(session, ALL_TRAIN)
    assert (summary["rated_answers"], summary["liked"], summary["disliked"]) == (2, 1, 1)
    assert summary["per_adapter_version"]["v1"] == {"interactions": 2, "rated": 2, "up": 1, "down": 1}


def test_without_its_own_users_rating_the_first_rater_decides(store: Store) -> None:
    first_up = store.answer("Plan a trip", "Mountains!", user="ada")
    store.rate(first_up, 1, user="bob")
    first_down = store.answer("Plan a trip", "no", user="ada")
    store.rate(first_down, -1, user="bob")
    for n in range(50):  # later raters, however many, change nothing
        store.rate(first_up, -1, user=f"sock-{n}")
        store.rate(first_down, 1, user=f"sock-{n}")
    with store.session() as session:
        kto = build(session, "kto", ALL_TRAIN)["train"]
    assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [("Mountains!", True), ("no", False)]


def test_regeneration_links_make_pairs_and_duplicates_are_kept_once(store: Store) -> None:
    bad = store.answer("Fix my bike", "bike bike bike")
    good = store.answer("Fix my bike", "Oil the chain.", regenerates=bad)
    store.rate(bad, -1)
    store.rate(good, 1)
    same_text = store.answer("Fix my bike", "Oil the chain.")
    store.rate(same_text, 1)  # the same pair again through the prompt grouping: deduplicated
    with store.session() as session:
        pairs = build(session, "dpo", ALL_TRAIN)["train"]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["source"]) for p in pairs] == \
        [("Oil the chain.", "bike bike bike", "regeneration")]


def test_every_liked_regeneration_pairs_with_its_original_under_the_originals_prompt(store: Store) -> None:
    bad = store.answer("Fix my bike", "bike bike bike")
    store.rate(bad, -1)
    for text in ("Oil the chain.", "Pump the tyres."):
        store.rate(store.answer("Fix my bike", text, regenerates=bad), 1)
    edited = store.answer("Fix my bike, please", "Check the brakes.", regenerates=bad)  # the client edited it
    store.rate(edited, 1)
    with store.session() as session:
        pairs = build(session, "dpo", ALL_TRAIN)["train"]
    assert sorted((p["prompt"][0]["content"], p["chosen"][0]["content"]) for p in pairs
                  if p["source"] == "regeneration") == \
        [("Fix my bike", "Check the brakes."), ("Fix my bike", "Oil the chain."), ("Fix my bike", "Pump the tyres.")]
    assert all(p["rejected"][0]["content"] == "bike bike bike" for p in pairs)
    assert len(pairs) == 3  # the same-prompt pairs of "Fix my bike" are two of these again: kept once


def test_a_regeneration_link_never_crosses_the_held_out_split(store: Store) -> None:
    """A client may point `regenerates` at any answer. A link whose own prompt is on the other
    side of the split from its original's makes no pair: it would put an answer on both sides."""
    half = DataConfig(heldout_fraction=0.5)

    def side(text: str) -> bool:
        return is_heldout(prompt_key([{"role": "user", "content": text}]), 0.5)

    texts = [f"Fix my bike {i}" for i in range(40)]
    original = next(t for t in texts if not side(t))
    same_side = next(t for t in texts if t != original and not side(t))
    other_side = next(t for t in texts if side(t))
    bad = store.answer(original, "bike bike bike")
    store.rate(bad, -1)
    store.rate(store.answer(same_side, "Oil the chain.", regenerates=bad), 1)
    store.rate(store.answer(other_side, "Pump the tyres.", regenerates=bad), 1)
    with store.session() as session:
        data = build(session, "dpo", half)
    regenerations = [p for split in data.values() for p in split if p["source"] == "regeneration"]
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"]) for p in regenerations] == \
        [(original, "Oil the chain.")]


def test_regeneration_pairs_win_the_per_user_cap(store: Store) -> None:
    for i in range(3):  # served first: same-prompt pairs of the loud user
        good = store.answer(f"question {i}", "good", user="loud")
        store.rate(good, 1)
        store.rate(store.answer(f"question {i}", "bad", user="loud"), -1)
    for i in range(2):
        bad = store.answer(f"later {i}", "bad", user="loud")
        store.rate(bad, -1)
        store.rate(store.answer(f"later {i}", "better", user="loud", regenerates=bad), 1)
    cfg = DataConfig(heldout_fraction=0.0, max_per_user=3)
    with store.session() as session:
        pairs = build(session, "dpo", cfg)["train"]
        summary = report(session, cfg)
    assert sorted(p["source"] for p in pairs) == ["regeneration", "regeneration", "same_prompt"]
    assert summary["dpo_pairs"] == {"train": 3, "heldout": 0}
    assert summary["pair_sources"] == {"regeneration": 2, "same_prompt": 1}
    assert summary["pairs_per_prompt"] == {"max": 1, "mean": 1.0}
    assert (summary["prompts"], summary["users"], summary["users_over_cap"]) == (5, 1, 1)


def test_a_shared_alias_trains_on_tenant_default_unless_cross_tenant(store: Store) -> None:
    with store.sessions.begin() as session:
        session.add(Alias(name="acme-bot", tenant="acme"))
    for tenant in ("default", "acme", "globex"):
        store.rate(store.answer(f"{tenant} question", f"{tenant} answer", tenant=tenant), 1, tenant=tenant)

    def tenants(alias: str, **kwargs: bool) -> set[str]:
        with store.session() as session:
            cfg = for_alias(session, alias, DataConfig(heldout_fraction=0.0, **kwargs))
            return {e["completion"][0]["content"].split()[0] for e in build(session, "kto", cfg)["train"]}

    assert tenants("default") == {"default"}  # the shared alias, without the opt-in
    assert tenants("default", cross_tenant=True) == {"default", "globex"}  # acme owns an alias: never
    assert tenants("acme-bot") == tenants("acme-bot", cross_tenant=True) == {"acme"}
    with store.sessions.begin() as session:
        session.add(Alias(name="house", tenant="default"))
    assert tenants("default") == set()  # "default" owns an alias now: its data stays with it


def test_train_and_the_scheduler_pass_the_cross_tenant_opt_in(store: Store, db_url: str) -> None:
    from trainer.scheduler import SchedulerSettings, train_config
    from trainer.train import TrainConfig, load_examples, parse_args

    assert parse_args([]).cross_tenant is False and parse_args(["--cross-tenant"]).cross_tenant is True
    assert train_config(SchedulerSettings(train_args="--cross-tenant")).cross_tenant is True
    for tenant in ("default", "globex"):
        store.rate(store.answer("q", f"{tenant} answer", tenant=tenant), 1, tenant=tenant)
    for opt_in, expected in ((False, 1), (True, 2)):
        cfg = TrainConfig(method="kto", heldout_fraction=0.0, cross_tenant=opt_in)
        assert len(load_examples(cfg, db_url)["train"]) == expected


def test_identical_answers_never_pair_with_themselves(store: Store) -> None:
    a = store.answer("Hi", "Hello.")
    b = store.answer("Hi", "Hello.")
    store.rate(a, 1)
    store.rate(b, -1)
    with store.session() as session:
        assert build(session, "dpo", ALL_TRAIN)["train"] == []


def test_one_user_cannot_dominate(store: Store) -> None:
    for i in range(10):
        store.rate(store.answer(f"prompt {i}", "yes", user="loud"), 1)
    store.rate(store.answer("prompt x", "yes", user="quiet"), 1)
    cfg = DataConfig(heldout_fraction=0.0, max_per_user=3)
    with store.session() as session:
        examples = build(session, "kto", cfg)["train"]
        assert len(examples) == 4
        assert report(session, cfg)["users_over_cap"] == 1


def test_heldout_split_is_by_prompt_and_never_leaks(store: Store) -> None:
    for i in range(60):
        for text, rating in (("good answer", 1), ("bad answer", -1), ("other good", 1)):
            store.rate(store.answer(f"question {i}", text, user=f"user{i % 7}"), rating)
    cfg = DataConfig(heldout_fraction=0.25)
    with store.session() as session:
        for fmt in ("dpo", "kto", "sft"):
            data = build(session, fmt, cfg)
            keys = {split: {prompt_key(e["prompt"] if "prompt" in e else e["messages"][:-1]) for e in rows}
                    for split, rows in data.items()}
            assert keys["train"] and keys["heldout"], fmt
            assert not keys["train"] & keys["heldout"], f"{fmt}: a prompt is on both sides"
        again = build(session, "dpo", cfg)  # the split is stable
        assert again == build(session, "dpo", cfg)


def test_kto_and_sft_formats(store: Store) -> None:
    up = store.answer("Bake a cake", "Vanilla sponge.")
    down = store.answer("Bake a cake", "cake cake")
    store.rate(up, 1)
    store.rate(down, -1)
    with store.session() as session:
        kto = build(session, "kto", ALL_TRAIN)["train"]
        sft = build(session, "sft", ALL_TRAIN)["train"]
    assert {(e["completion"][0]["content"], e["label"]) for e in kto} == \
        {("Vanilla sponge.", True), ("cake cake", False)}
    assert sft == [{"messages": [{"role": "user", "content": "Bake a cake"},
                                 {"role": "assistant", "content": "Vanilla sponge."}]}]


def test_best_of_n_samples_for_the_prompts_users_sent_rated_or_not_capped_per_user(store: Store) -> None:
    store.rate(store.answer("rated question", "yes", user="a"), 1)
    for i in range(5):
        store.answer(f"unrated question {i}", "maybe", user="a")
    for i in range(30):
        store.answer(f"flood {i}", "spam", user="flooder")
    store.answer("someone else's", "hidden", user="b", tenant="other")
    store.answer("secret", "unlogged", user="a", logged=False)
    store.answer("unrated question 0", "again", user="c")  # a repeat is one prompt
    store.answer("an evaluation", "pinned", user="eval", model="v1")  # named a version, not the alias
    store.answer("huge", "long", user="d", prompt_tokens=51)  # no room left for an answer
    store.answer([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "words to learn"},
                  {"role": "user", "content": "again"}], "ok", user="e")  # the client wrote an assistant turn
    store.answer([{"role": "user", "content": [{"type": "text", "text": "parts"}]}], "ok", user="e")
    everything = DataConfig(heldout_fraction=0.0, tenant="t")
    with store.session() as session:
        prompts = served_prompts(session, everything, "default", limit=100, per_user=10, max_tokens=50)
        assert all(len(p) == 1 for p in prompts)  # only the plain one-turn requests
        texts = [p[0]["content"] for p in prompts]
        assert len(texts) == len(set(texts))
        assert sum(t.startswith("flood") for t in texts) == 10  # one client cannot fill the sample
        assert {"rated question", "unrated question 0"} <= set(texts)
        assert not {"someone else's", "secret", "an evaluation", "huge"} & set(texts)
        assert texts[0] == "unrated question 0"  # newest first
        assert len(served_prompts(session, everything, "default", limit=2, per_user=10, max_tokens=50)) == 2
        half = DataConfig(heldout_fraction=0.5, tenant="t")
        kept = {p[0]["content"] for p in served_prompts(session, half, "default", limit=100, per_user=100,
                                                           max_tokens=50)}
        assert kept and all(not is_heldout(prompt_key([{"role": "user", "content": t}]), 0.5) for t in kept)


def test_api_keys_take_turns_in_best_of_n_prompts_so_one_flooding_client_cannot_fill_them(store: Store) -> None:
    """A client inventing a user id per request gets past the per-user cap; it still gets
    no more of the sample than the other key with traffic, however many requests it sends
    and however recent they are."""
    for i in range(20):
        store.answer(f"app question {i}", "ok", user=f"user {i}", key=1, age_days=1)
    for i in range(300):
        store.answer(f"planted {i}", "ok", user=f"invented {i}", key=2)
    everything = DataConfig(heldout_fraction=0.0, tenant="t")
    with store.session() as session:
        texts = [p[0]["content"] for p in served_prompts(session, everything, "default", limit=30, per_user=30,
                                                         max_tokens=50)]
        assert len(texts) == 30 and sum(t.startswith("app question") for t in texts) == 15
        assert texts[:2] == ["planted 299", "app question 19"]  # turns, each key's newest first
        more = [p[0]["content"] for p in served_prompts(session, everything, "default", limit=100, per_user=100,
                                                        max_tokens=50)]
        assert sum(t.startswith("app question") for t in more) == 20  # the rest of the room goes to who has more


def test_best_of_n_judge_gets_a_bounded_uniform_sample_of_the_training_pairs(store: Store) -> None:
    for i in range(12):
        store.rate(store.answer(f"prompt {i:02d}", "Certainly.", user=f"u{i}"), 1)
        store.rate(store.answer(f"prompt {i:02d}", "meh", user=f"v{i}"), -1)
    with store.session() as session:
        every = build(session, "dpo", ALL_TRAIN)["train"]
        assert len(every) == 12
        sample = sample_pairs(session, ALL_TRAIN, most=4, seed=0)
        assert len(sample) == 4 and all(p in every for p in sample)
        assert sample != every[:4]  # not the first ones in prompt order
        assert sample == sample_pairs(session, ALL_TRAIN, most=4, seed=0)
        assert sorted(map(json.dumps, sample_pairs(session, ALL_TRAIN, most=100))) == sorted(map(json.dumps, every))
        half = DataConfig(heldout_fraction=0.5)
        assert all(not is_heldout(prompt_key(p["prompt"]), 0.5) for p in sample_pairs(session, half, most=100))
    for i in range(5):  # a popular prompt: 5 x 5 answers make 25 pairs
        store.rate(store.answer("popular", f"Certainly {i}.", user=f"p{i}"), 1)
        store.rate(store.answer("popular", f"meh {i}", user=f"q{i}"), -1)
    with store.session() as session:
        sample = sample_pairs(session, ALL_TRAIN, most=100, per_prompt=4)
        assert sum(p["prompt"][0]["content"] == "popular" for p in sample) == 4 and len(sample) == 12 + 4


def test_unlogged_interactions_never_train(store: Store) -> None:
    store.rate(store.answer("secret", "secret answer", logged=False), 1)
    store.rate(store.answer("secret", "other", logged=False), -1)
    with store.session() as session:
        for fmt in ("dpo", "kto", "sft"):
            assert build(session, fmt, ALL_TRAIN) == {"train": [], "heldout": []}


def test_purge_by_age_and_by_user(store: Store) -> None:
    old = store.answer("old", "x", age_days=40)
    store.rate(old, 1)
    mine = store.answer("mine", "y", user="leaving")
    store.rate(mine, 1)
    theirs = store.answer("theirs", "z", user="staying")
    store.rate(theirs, -1, user="leaving")  # a rating the leaving user gave goes too
    with store.sessions.begin() as session:
        assert purge_before(session, utcnow() - timedelta(days=30)) == 1
        assert purge_user(session, "leaving") == 1
    with store.session() as session:
        assert set(session.scalars(select(Interaction.id))) == {theirs}
        assert session.scalar(select(func.count()).select_from(Feedback)) == 0


def test_cli_export_and_report(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'loraloop.db'}")
    store.rate(store.answer("Call a taxi", "Five minutes."), 1)
    store.rate(store.answer("Call a taxi", "taxi?"), -1)
    store.engine.dispose()
    env = {**os.environ, "LORALOOP_DATA_DIR": str(tmp_path)}
    out = tmp_path / "dpo.jsonl"
    subprocess.run([sys.executable, "-m", "gateway.cli", "data", "export", "--format", "dpo",
                    "--heldout-fraction", "0", "--out", str(out)], env=env, check=True, capture_output=True)
    [pair] = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["chosen"][0]["content"] == "Five minutes."
    printed = subprocess.run([sys.executable, "-m", "gateway.cli", "data", "report", "--heldout-fraction", "0"],
                             env=env, check=True, capture_output=True, text=True).stdout
    summary = json.loads(printed)
    assert summary["dpo_pairs"] == {"train": 1, "heldout": 0}
    assert summary["per_adapter_version"]["v1"] == {"interactions": 2, "rated": 2, "up": 1, "down": 1}
    for opt_in, rated in (([], 0), (["--cross-tenant"], 2)):  # tenant "t" is not "default"
        printed = subprocess.run([sys.executable, "-m", "gateway.cli", "data", "report", "--alias", "default",
                                  *opt_in], env=env, check=True, capture_output=True, text=True).stdout
        assert json.loads(printed)["rated_answers"] == rated
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "data", "report", "--cross-tenant"],
                             env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--cross-tenant needs --alias" in refused.stderr

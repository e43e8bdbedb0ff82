"""`--method auto` and the pieces of best-of-n that need no model: which method the data
supports, KTO's weights from the label balance, the judge's pairs and its AUC."""

from __future__ import annotations

import math

import pytest

from trainer.best_of_n import (
    JUDGE_ALPHA,
    auc,
    distinct_prompts,
    exact_upper_tail,
    judge_pairs,
    judge_passes,
    label_pairs,
)
from trainer.method_choice import choose, kto_weights, with_kto_weights
from trainer.train import parse_args
from trainer.train_config import TrainConfig


def test_auto_picks_best_of_n_for_thumbs_dpo_for_pairs_alone_and_sft_for_praise_only() -> None:
    # The live case: a best-of-n champion served, and the store held 92 pairs among 1,800
    # thumbs. DPO from the base on those lost to the champion; the judge gets the pairs instead.
    method, why = choose(pairs=92, liked=600, disliked=1200, min_pairs=64)
    assert method == "best-of-n" and "92 pairs" in why
    assert choose(pairs=80, liked=10, disliked=300, min_pairs=64)[0] == "best-of-n"
    assert choose(pairs=80, liked=0, disliked=0, min_pairs=64)[0] == "dpo"  # a pairs file
    assert choose(pairs=80, liked=3, disliked=300, min_pairs=64)[0] == "dpo"  # too few liked for a judge
    # realistic feedback: few pairs, complaints outnumber praise
    method, why = choose(pairs=3, liked=35, disliked=110, min_pairs=64)
    assert method == "best-of-n" and "35 liked and 110 disliked" in why
    # many thumbs too: only best-of-n learned a taste that depends on the request (bench/README.md)
    assert choose(pairs=3, liked=700, disliked=1100, min_pairs=64)[0] == "best-of-n"
    assert choose(pairs=3, liked=7, disliked=1100, min_pairs=64)[0] == "sft"  # too few liked to judge by
    assert choose(pairs=0, liked=3, disliked=1, min_pairs=64)[0] == "sft"
    assert choose(pairs=0, liked=0, disliked=40, min_pairs=64)[0] == "kto"
    # completions-API thumbs: best-of-n's judge scores conversations only, so KTO takes them
    assert choose(pairs=0, liked=300, disliked=500, min_pairs=64, judged=(2, 5))[0] == "kto"
    assert choose(pairs=0, liked=300, disliked=500, min_pairs=64, judged=(20, 50))[0] == "best-of-n"


def test_kto_weights_balance_the_labels_one_to_one_as_trl_advises() -> None:
    desirable, undesirable = kto_weights(liked=35, disliked=110)
    assert undesirable == 1.0 and math.isclose(desirable * 35, undesirable * 110, rel_tol=1e-3)
    assert kto_weights(liked=200, disliked=50) == (1.0, 4.0)
    assert kto_weights(liked=0, disliked=9) == (1.0, 1.0)
    assert kto_weights(liked=1, disliked=300) == (10.0, 1.0)  # capped: one example must not outweigh a batch
    examples = [{"label": True}] * 10 + [{"label": False}] * 30
    assert (with_kto_weights(TrainConfig(method="kto"), examples).desirable_weight,
            with_kto_weights(TrainConfig(method="kto"), examples).undesirable_weight) == (3.0, 1.0)
    by_hand = TrainConfig(method="kto", desirable_weight=1.5, undesirable_weight=1.0)
    assert with_kto_weights(by_hand, examples) == by_hand  # an operator's weights are kept


def test_auto_is_a_method_of_the_cli_and_takes_its_learning_rate_once_chosen() -> None:
    cfg = parse_args(["--method", "auto"])
    assert cfg.method == "auto" and cfg.learning_rate == 0.0
    with pytest.raises(ValueError):
        TrainConfig(method="best-of-m")
    assert TrainConfig(method="best-of-n").learning_rate == TrainConfig(method="sft").learning_rate


def example(prompt: str, answer: str, label: bool) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}],
            "label": label}


def test_the_judge_learns_from_every_thumb_paired_liked_over_disliked() -> None:
    thumbs = [example(f"q{i}", f"good {i}", True) for i in range(3)] + \
             [example(f"q{i}", f"bad {i}", False) for i in range(9)]
    pairs = label_pairs(thumbs, per_example=2)
    assert len(pairs) == 18
    assert all(p["chosen"][-1]["content"].startswith("good") and p["rejected"][-1]["content"].startswith("bad")
               for p in pairs)
    assert {p["rejected"][-1]["content"] for p in pairs} == {f"bad {i}" for i in range(9)}  # none unused
    assert label_pairs(thumbs[:3]) == []  # one label only: nothing to rank


def test_the_judges_pairs_are_bounded_however_many_thumbs_there_are() -> None:
    """A million thumbs must not become two million pairs in memory: the judge trains a
    bounded number of steps, so pairs past what it can see are never built."""
    thumbs = [example(f"q{i}", f"good {i}", True) for i in range(5000)] + \
             [example(f"q{i}", f"bad {i}", False) for i in range(300)]
    pairs = label_pairs(thumbs, per_example=2, most=1000)
    assert len(pairs) == 1000
    assert len({p["chosen"][-1]["content"] for p in pairs}) == 500  # a sample of the common label, each twice
    assert {p["chosen"][-1]["content"] for p in pairs} != {f"good {i}" for i in range(500)}  # not the first ones
    assert label_pairs(thumbs[:10] + thumbs[-10:], most=1000) == label_pairs(thumbs[:10] + thumbs[-10:])


def test_auc_counts_pairs_ranked_right_with_ties_half() -> None:
    assert auc([(0.9, True), (0.1, False)]) == 1.0
    assert auc([(0.1, True), (0.9, False)]) == 0.0
    assert auc([(0.5, True), (0.5, False), (0.7, True), (0.2, False)]) == 0.875
    assert math.isnan(auc([(0.5, True)]))


def test_best_of_n_samples_each_distinct_chat_prompt_once() -> None:
    thumbs = [example("same", "a", True), example("same", "b", False), example("other", "c", False),
              {"prompt": "plain text", "completion": "d", "label": True}]
    prompts = distinct_prompts(thumbs, limit=10)
    assert sorted(p[0]["content"] for p in prompts) == ["other", "same"]
    assert len(distinct_prompts(thumbs, limit=1)) == 1


def test_completions_thumbs_are_left_out_of_the_judge_not_a_crash() -> None:
    from trainer.best_of_n import is_chat

    plain = {"prompt": "Say hi", "completion": "hi", "label": True}
    assert not is_chat(plain) and is_chat(example("q", "a", True))
    thumbs = [plain, example("q1", "good", True), example("q2", "bad", False)]
    assert all(p["chosen"][-1]["content"] == "good" for p in label_pairs(thumbs))
    assert distinct_prompts([plain], limit=5) == []


def test_auto_on_a_file_counts_its_thumbs_and_refuses_what_it_cannot_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from trainer.train import resolve_method

    thumbs = [example(f"q{i}", "a", i % 3 == 0) for i in range(300)]
    data = tmp_path / "thumbs.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in thumbs))
    cfg, choice = resolve_method(TrainConfig(method="auto", data=str(data)), "sqlite://")
    assert cfg.method == "best-of-n" and choice is not None and (choice["liked"], choice["disliked"]) == (100, 200)
    data.write_text("\n".join(json.dumps(e) for e in thumbs[:3] + [example("q", "b", False)] * 20))
    assert resolve_method(TrainConfig(method="auto", data=str(data)), "sqlite://")[0].method == "sft"
    for text in ("", json.dumps({"prompt": "x", "completion": "y"})):
        data.write_text(text)
        with pytest.raises(SystemExit):
            resolve_method(TrainConfig(method="auto", data=str(data)), "sqlite://")


def test_the_judge_learns_from_same_prompt_pairs_first_then_from_the_thumbs() -> None:
    thumbs = [example(f"q{i}", f"good {i}", True) for i in range(3)] + \
             [example(f"q{i}", f"bad {i}", False) for i in range(9)]
    same_prompt = [{"prompt": [{"role": "user", "content": f"r{i}"}], "chosen": [{"role": "assistant", "content":
                    f"regenerated {i}"}], "rejected": [{"role": "assistant", "content": f"first {i}"}]}
                   for i in range(4)]
    completions_api = {"prompt": "text", "chosen": "a", "rejected": "b"}  # plain text: not the chat judge's
    pairs, explicit = judge_pairs(thumbs, [*same_prompt, completions_api], most=100, seed=0)
    assert explicit == 4 and len(pairs) == 4 + 18
    asked = {"role": "user", "content": "r0"}
    assert pairs[0] == {"chosen": [asked, {"role": "assistant", "content": "regenerated 0"}],
                        "rejected": [asked, {"role": "assistant", "content": "first 0"}]}
    pairs, explicit = judge_pairs(thumbs, same_prompt * 500, most=100, seed=0)
    assert (len(pairs), explicit) == (50 + 18, 50)  # bounded at half: pairs never push the thumbs out


def test_the_judge_gate_asks_for_better_than_chance_not_a_fixed_auc_on_a_handful_of_thumbs() -> None:
    """The AUCs of the live runs' judges on ~10% of the thumbs: a fixed 0.6 passed 0.65 on 14
    thumbs (a standard error of ~0.16: possibly chance) and failed 0.59 on 23."""
    assert not judge_passes(0.65, liked=5, disliked=9)[0]
    assert not judge_passes(0.59, liked=8, disliked=15)[0]
    assert judge_passes(0.75, liked=16, disliked=30)[0]  # the judge of the first live promotion
    assert judge_passes(1.0, liked=3, disliked=6)[0]  # perfect on 9: p = 1/84
    assert judge_passes(1.0, liked=3, disliked=6)[1] == pytest.approx(1 / 84)
    assert not judge_passes(1.0, liked=1, disliked=4)[0]  # perfect, but 1 in 5 orders of chance are too
    assert judge_passes(0.58, liked=100, disliked=100)[0]  # under 0.6, but on 200 thumbs clearly not chance
    significant_but_weak = judge_passes(0.53, liked=2000, disliked=2000)
    assert significant_but_weak[1] < 0.01 and not significant_but_weak[0]  # too weak to pick anything
    assert judge_passes(float("nan"), liked=0, disliked=5) == (False, 1.0)


def test_the_exact_tail_counts_every_order_and_a_chance_judge_passes_at_most_alpha_of_the_time() -> None:
    import itertools

    for m, n in ((1, 1), (1, 4), (2, 3), (3, 3), (2, 5)):
        orders = [set(c) for c in itertools.combinations(range(m + n), m)]  # where the m values sit
        us = [sum(sum(1 for j in range(pos) if j not in c) for pos in c) for c in orders]  # others below each
        for u in range(m * n + 1):
            assert exact_upper_tail(m, n, u) == pytest.approx(sum(x >= u for x in us) / len(us)), (m, n, u)
    # the gate's false-pass rate for a judge no better than chance, at the held-out sizes
    # best-of-n sees (a rare label with a few thumbs), never above JUDGE_ALPHA
    for liked in range(1, 7):
        for disliked in range(1, 40, 3):
            cells = liked * disliked
            passing = [u for u in range(cells + 1) if judge_passes(u / cells, liked, disliked)[0]]
            chance = sum(exact_upper_tail(liked, disliked, u) - exact_upper_tail(liked, disliked, u + 1)
                         for u in passing)
            assert chance <= JUDGE_ALPHA + 1e-9, (liked, disliked, chance)


def test_auto_on_the_store_counts_only_chat_thumbs_for_best_of_n(db_url: str) -> None:
    from tests.unit.test_preference_data import Store
    from trainer.train import TrainConfig, resolve_method

    store = Store(db_url)
    for i in range(20):  # completions-API thumbs of both kinds, and a handful of chat ones
        store.rate(store.answer(f"Complete {i}:", "text", kind="completions", tenant="default"), 1 if i % 2 else -1,
                   tenant="default")
    for i in range(4):
        store.rate(store.answer(f"chat {i}", "text", tenant="default"), 1 if i % 2 else -1, tenant="default")
    cfg, choice = resolve_method(TrainConfig(method="auto"), db_url)
    assert (cfg.method, choice["liked"], choice["disliked"]) == ("kto", 12, 12)  # type: ignore[index]
    for i in range(20):
        store.rate(store.answer(f"more chat {i}", "text", tenant="default"), 1 if i % 2 else -1, tenant="default")
    assert resolve_method(TrainConfig(method="auto"), db_url)[0].method == "best-of-n"

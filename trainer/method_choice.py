"""`--method auto`: the method the data supports, chosen at the start of each run.

    chat thumbs, >= 8 of each kind        -> best-of-n (its judge also learns from the pairs;
                                             kto if the judge fails its gate)
    preference pairs only (a --data file)  -> dpo, when there are at least --min-pairs
    other thumbs (completions API)         -> kto (the judge scores conversations only)
    thumbs-up only                         -> sft

Real feedback is mostly unpaired: users seldom send the same prompt twice, rate a few
answers, and thumb down more than up. Measured on the same simulated thumbs (bench/methods.py,
5%/15% of liked/disliked answers rated, 20% flipped; TRUE held-out rate, base 0.48-0.60):

    taste                          thumbs   kto    best-of-n
    formal (one style everywhere)      56   0.60   0.82
    formal                            198   0.95   0.90
    formal-for-errands (depends       743   0.67   0.83
      on the request)                1269          0.95 (generation 2, sampling generation 1)

KTO learns a global style a little better once there are enough thumbs of both kinds, but
it does not learn WHEN (its push on the implicit reward moves the style everywhere at once);
best-of-n's judge scores each (request, answer), so it learns both. Best-of-n is the choice
that reaches the target on every taste; KTO stays the fallback when the judge fails its gate
(too few or too noisy thumbs to rank by).

Pairs (same prompt, or a disliked answer and its liked regeneration) no longer pick DPO
when there are thumbs: both answers of every pair are thumbs too, so the judge sees them
(as same-prompt comparisons, the clearest it gets), and best-of-n samples from the champion
while DPO trains from the base. Measured live (formal-for-errands, realistic regime): once a
best-of-n champion served at 0.81, the store held 92 pairs, past --min-pairs; DPO on them
from the base made canaries liked 0.52 of the time live, two rolled back and one refused by
the gate, and the loop stopped improving.

KTO's weights follow TRL's advice for imbalanced labels: desirable_weight x liked and
undesirable_weight x disliked in a ratio between 1:1 and 4:3; here 1:1, the rarer label
weighted up, neither weight below 1.
"""

from __future__ import annotations

from dataclasses import replace

from trainer.train_config import TrainConfig

MIN_EACH_LABEL = 8  # thumbs of each kind before a judge can learn anything


def choose(pairs: int, liked: int, disliked: int, min_pairs: int,
           judged: tuple[int, int] | None = None) -> tuple[str, str]:
    """(method, why) for data with `pairs` training pairs and `liked`/`disliked` thumbs, of
    which `judged` (liked, disliked; default: all) are chat answers: best-of-n's judge scores
    conversations only, so completions-API thumbs cannot make it the choice."""
    chat_liked, chat_disliked = judged if judged is not None else (liked, disliked)
    if chat_liked >= MIN_EACH_LABEL and chat_disliked >= MIN_EACH_LABEL:
        return "best-of-n", (f"{chat_liked} liked and {chat_disliked} disliked chat answers ({pairs} pairs): a "
                             "reward model on the thumbs and pairs picks the champion's best samples")
    if pairs >= min_pairs:
        return "dpo", f"{pairs} preference pairs (>= {min_pairs}) and too few thumbs to judge by: DPO on the pairs"
    if liked >= MIN_EACH_LABEL and disliked >= MIN_EACH_LABEL:
        return "kto", (f"{liked} liked and {disliked} disliked answers, too few of them chat answers for best-of-n's "
                       "judge: KTO on the thumbs")
    if liked:
        return "sft", f"only {liked} liked and {disliked} disliked answers: SFT on the liked ones"
    return "kto", f"no liked answers, {disliked} disliked: KTO learns what to avoid"


MAX_KTO_WEIGHT = 10.0  # past this, a handful of rare-label examples would dominate every batch's gradient


def kto_weights(liked: int, disliked: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the labels 1:1, both >= 1 (TRL's
    advice: weighted desirable to undesirable between 1 and 4/3), the rarer label's weight
    at most MAX_KTO_WEIGHT (1 liked among 300 disliked gets 10, not 300: past the cap the
    balance stays off TRL's range, which beats a few examples steering every step)."""
    if not liked or not disliked:
        return 1.0, 1.0
    if liked < disliked:
        return round(min(disliked / liked, MAX_KTO_WEIGHT), 4), 1.0
    return 1.0, round(min(liked / disliked, MAX_KTO_WEIGHT), 4)


def with_kto_weights(cfg: TrainConfig, examples: list[dict]) -> TrainConfig:
    """`cfg` with KTO weights from the label balance of `examples`, unless set by hand."""
    if cfg.desirable_weight and cfg.undesirable_weight:
        return cfg
    liked = sum(bool(e["label"]) for e in examples)
    desirable, undesirable = kto_weights(liked, len(examples) - liked)
    return replace(cfg, desirable_weight=cfg.desirable_weight or desirable,
                   undesirable_weight=cfg.undesirable_weight or undesirable)

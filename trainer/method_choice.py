"""`--method auto`: the method the data supports, chosen at the start of each run.

    enough preference pairs (same prompt, or a regeneration)  -> dpo
    unpaired thumbs, >= 50 of each kind                      -> kto, weighted by the label balance
    unpaired thumbs, >= 8 of each kind                       -> best-of-n (kto if its judge fails)
    thumbs-up only                                           -> sft

Real feedback is mostly unpaired: users seldom send the same prompt twice, rate a few
answers, and thumb down more than up. Measured on the same simulated thumbs (bench/methods.py,
5%/15% of liked/disliked answers rated, 20% flipped; held-out true rate from a base of 0.47-0.60):
with 56 thumbs, best-of-n 0.82, KTO 0.60 (unchanged); with 175 thumbs, KTO 0.97, best-of-n
0.86, SFT on the thumbs-up 0.52. Best-of-n's judge learns from few thumbs; KTO, once there
are enough of both kinds, learns most.

KTO's weights follow TRL's advice for imbalanced labels: desirable_weight x liked and
undesirable_weight x disliked in a ratio between 1:1 and 4:3; here 1:1, the rarer label
weighted up, neither weight below 1.
"""

from __future__ import annotations

from dataclasses import replace

from trainer.train_config import TrainConfig

MIN_EACH_LABEL = 8  # thumbs of each kind before a judge can learn anything
MIN_EACH_FOR_KTO = 50  # thumbs of each kind from which KTO learned more than best-of-n


def choose(pairs: int, liked: int, disliked: int, min_pairs: int) -> tuple[str, str]:
    """(method, why) for data with `pairs` training pairs and `liked`/`disliked` thumbs."""
    if pairs >= min_pairs:
        return "dpo", f"{pairs} preference pairs (>= {min_pairs}): DPO learns from them directly"
    if liked >= MIN_EACH_FOR_KTO and disliked >= MIN_EACH_FOR_KTO:
        return "kto", (f"{pairs} pairs (< {min_pairs}), {liked} liked and {disliked} disliked answers: "
                       "KTO, weighted by the label balance")
    if liked >= MIN_EACH_LABEL and disliked >= MIN_EACH_LABEL:
        return "best-of-n", (f"{pairs} pairs (< {min_pairs}) but {liked} liked and {disliked} disliked answers: "
                             "a reward model on the thumbs picks the champion's best samples")
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

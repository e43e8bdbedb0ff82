"""An always-valid sequential test on two thumbs-up rates (champion vs canary).

Operators watch an A/B test continuously and the system acts the moment the evidence is in,
so a fixed-sample test (peek once, at a planned n) does not apply: checked after every
rating, it would promote a no-better canary far more often than its nominal 5%. This is the
mixture sequential probability ratio test (mSPRT; Johari, Koomen, Pekelis and Walsh,
"Always Valid Inference", 2017), as used by commercial A/B platforms:

    d      = canary rate - champion rate             (the estimate)
    V      = p(1 - p) (1/n_champion + 1/n_canary)     (its variance under "no difference",
                                                       p the pooled rate)
    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))

Lambda is a likelihood ratio of "the difference is drawn from N(0, tau^2)" against "no
difference"; under no difference it is a martingale with mean 1, so by Ville's inequality
the chance it EVER reaches 1/alpha is at most alpha, however often it is checked. When it
does, the sign of d says promote or roll back. tau is the size of difference the test is
most sensitive to (0.1 = ten points of thumbs-up rate). The normal approximation needs some
ratings on each arm first (`min_ratings`); waiting only makes the test more conservative.

The prior may be centred on an expected difference instead of 0 (`prior_mean`: the canary's
pre-screen by a gated reward model on held-out prompts says it is better). Lambda stays a
martingale under "no difference" for ANY prior fixed before the experiment, so the error
bound is unchanged; evidence in the expected direction counts sooner (measured: a canary
liked 0.8 vs 0.5 under one-sided, noisy thumbs decides after ~25% fewer answers with the
prior at +0.1), and evidence against it needs more (the complaint test rolls back worse
canaries either way). With mean m:

    log Lambda = 1/2 log(V / (V + tau^2)) + ((d tau^2 + m V)^2 / (V (V + tau^2)) - m^2) / (2 tau^2)

Error rates measured by simulation (tests/unit/test_sequential.py, figures in bench/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    up: int  # thumbs up
    n: int  # ratings

    @property
    def rate(self) -> float:
        return self.up / self.n if self.n else 0.0


@dataclass(frozen=True)
class Verdict:
    decision: str  # "promote" | "rollback" | "continue"
    log_lambda: float  # the test statistic (log of the mixture likelihood ratio)
    threshold: float  # log(1 / alpha): a decision once log_lambda reaches it
    difference: float  # canary rate - champion rate


def log_mixture_ratio(champion: Arm, canary: Arm, tau: float, prior_mean: float = 0.0) -> tuple[float, float]:
    """(log Lambda, d); log Lambda is 0 (no evidence) while the rates are degenerate."""
    d = canary.rate - champion.rate
    if not champion.n or not canary.n:
        return 0.0, d
    pooled = (champion.up + canary.up) / (champion.n + canary.n)
    v = pooled * (1 - pooled) * (1 / champion.n + 1 / canary.n)
    if v <= 0:
        return 0.0, d
    t2, m = tau * tau, prior_mean
    return 0.5 * math.log(v / (v + t2)) + ((d * t2 + m * v) ** 2 / (v * (v + t2)) - m * m) / (2 * t2), d


def decide(champion: Arm, canary: Arm, alpha: float = 0.05, tau: float = 0.1, min_ratings: int = 30,
           prior_mean: float = 0.0) -> Verdict:
    """Promote the canary, roll it back, or keep collecting. P(any decision when the two
    rates are equal) <= alpha, whenever and however often this is called."""
    log_lambda, d = log_mixture_ratio(champion, canary, tau, prior_mean)
    threshold = math.log(1 / alpha)
    if min(champion.n, canary.n) < min_ratings or log_lambda < threshold:
        return Verdict("continue", log_lambda, threshold, d)
    return Verdict("promote" if d > 0 else "rollback", log_lambda, threshold, d)

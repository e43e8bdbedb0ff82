"""The A/B test's error rates, by simulation: checked after every batch of ratings, an A/A
experiment (canary no better) ends in a decision at most alpha of the time, and a real
difference is found and acted on in the right direction."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.sequential import Arm, decide

ALPHA = 0.05


def simulate(p_champion: float, p_canary: float, canary_share: float, sims: int, ratings: int,
             every: int, seed: int, prior_mean: float = 0.0) -> dict[str, float]:
    """Share of simulated experiments ending in each decision, peeking every `every` ratings,
    and (key "ratings") the median ratings to a decision."""
    rng = np.random.default_rng(seed)
    peeks = ratings // every
    to_canary = rng.binomial(every, canary_share, size=(sims, peeks))
    up_canary = rng.binomial(to_canary, p_canary)
    up_champion = rng.binomial(every - to_canary, p_champion)
    n_canary, n_champion = to_canary.cumsum(1), (every - to_canary).cumsum(1)
    u_canary, u_champion = up_canary.cumsum(1), up_champion.cumsum(1)
    ended, when = {"promote": 0, "rollback": 0}, []
    for s in range(sims):
        for k in range(peeks):
            verdict = decide(Arm(int(u_champion[s, k]), int(n_champion[s, k])),
                             Arm(int(u_canary[s, k]), int(n_canary[s, k])), alpha=ALPHA, prior_mean=prior_mean)
            if verdict.decision != "continue":
                ended[verdict.decision] += 1
                when.append((k + 1) * every)
                break
    return {k: v / sims for k, v in ended.items()} | {"ratings": float(np.median(when)) if when else np.inf}


@pytest.mark.parametrize("share", [0.5, 0.1])
def test_a_a_experiments_rarely_end_in_a_decision(share: float) -> None:
    """False decisions within alpha although every 10th rating is a look (200 looks)."""
    sims = 1500
    rates = simulate(0.6, 0.6, share, sims=sims, ratings=2000, every=10, seed=1)
    false = rates["promote"] + rates["rollback"]
    assert false <= ALPHA + 2 * (ALPHA * (1 - ALPHA) / sims) ** 0.5, rates


@pytest.mark.parametrize("prior_mean", [0.1, 0.3])
def test_a_prior_centred_on_a_lift_keeps_the_error_bound(prior_mean: float) -> None:
    """A pre-screen that wrongly expects the canary to be better (here by 10 or 30 points)
    does not make a no-better canary's promotion likelier than alpha."""
    sims = 1500
    rates = simulate(0.6, 0.6, 0.5, sims=sims, ratings=2000, every=10, seed=4, prior_mean=prior_mean)
    assert rates["promote"] + rates["rollback"] <= ALPHA + 2 * (ALPHA * (1 - ALPHA) / sims) ** 0.5, rates


def test_a_prior_the_canary_lives_up_to_needs_fewer_ratings() -> None:
    flat = simulate(0.35, 0.5, 0.5, sims=300, ratings=3000, every=10, seed=5)
    centred = simulate(0.35, 0.5, 0.5, sims=300, ratings=3000, every=10, seed=5, prior_mean=0.1)
    assert centred["promote"] >= flat["promote"] >= 0.9, (flat, centred)
    assert centred["ratings"] <= 0.85 * flat["ratings"], (flat, centred)


def test_a_better_canary_is_promoted_and_a_worse_one_rolled_back() -> None:
    better = simulate(0.5, 0.65, 0.5, sims=400, ratings=2000, every=20, seed=2)
    assert better["promote"] >= 0.9 and better["rollback"] <= ALPHA, better
    worse = simulate(0.65, 0.5, 0.5, sims=400, ratings=2000, every=20, seed=3)
    assert worse["rollback"] >= 0.9 and worse["promote"] <= ALPHA, worse


def test_no_decision_before_each_arm_has_enough_ratings() -> None:
    assert decide(Arm(0, 29), Arm(29, 29)).decision == "continue"  # overwhelming, but too early
    verdict = decide(Arm(5, 40), Arm(38, 40))
    assert verdict.decision == "promote" and verdict.log_lambda >= verdict.threshold
    assert decide(Arm(38, 40), Arm(5, 40)).decision == "rollback"
    assert decide(Arm(20, 40), Arm(21, 40)).decision == "continue"
    assert decide(Arm(40, 40), Arm(40, 40)).decision == "continue"  # no variance, no evidence

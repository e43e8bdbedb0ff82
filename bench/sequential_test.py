"""Error rates of the A/B test (adapters/sequential.py) by simulation, against the naive
baseline: a two-proportion z-test at the same alpha, checked at every look; and with the
prior centred on +0.1 (a canary the gate's reward model preferred).

    python bench/sequential_test.py [--sims 2000]

Prints, per scenario, the share of experiments that promoted / rolled back within the
rating budget and the median ratings to a decision.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from adapters.sequential import Arm, decide

ALPHA = 0.05
Z = 1.959964  # two-sided 5%


def naive(champion: Arm, canary: Arm) -> str:
    if min(champion.n, canary.n) < 30:
        return "continue"
    pooled = (champion.up + canary.up) / (champion.n + canary.n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / champion.n + 1 / canary.n)) or 1.0
    z = (canary.rate - champion.rate) / se
    return "promote" if z > Z else "rollback" if z < -Z else "continue"


def run(rule, p_a: float, p_b: float, share: float, sims: int, ratings: int, every: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    peeks = ratings // every
    to_b = rng.binomial(every, share, size=(sims, peeks))
    up_b, up_a = rng.binomial(to_b, p_b), rng.binomial(every - to_b, p_a)
    n_b, n_a, u_b, u_a = to_b.cumsum(1), (every - to_b).cumsum(1), up_b.cumsum(1), up_a.cumsum(1)
    outcomes, when = {"promote": 0, "rollback": 0}, []
    for s in range(sims):
        for k in range(peeks):
            d = rule(Arm(int(u_a[s, k]), int(n_a[s, k])), Arm(int(u_b[s, k]), int(n_b[s, k])))
            if d != "continue":
                outcomes[d] += 1
                when.append((k + 1) * every)
                break
    return outcomes["promote"] / sims, outcomes["rollback"] / sims, (float(np.median(when)) if when else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--ratings", type=int, default=3000)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    rules = {"mSPRT": lambda a, b: decide(a, b, alpha=ALPHA).decision,
             "mSPRT prior +0.1": lambda a, b: decide(a, b, alpha=ALPHA, prior_mean=0.1).decision,
             "naive z-test": naive}
    scenarios = [("A/A 0.60 vs 0.60, 50% canary", 0.6, 0.6, 0.5), ("A/A 0.60 vs 0.60, 10% canary", 0.6, 0.6, 0.1),
                 ("A/A 0.90 vs 0.90, 50% canary", 0.9, 0.9, 0.5),
                 ("better 0.50 -> 0.60, 50%", 0.5, 0.6, 0.5), ("better 0.50 -> 0.65, 50%", 0.5, 0.65, 0.5),
                 ("better 0.50 -> 0.65, 10%", 0.5, 0.65, 0.1), ("worse 0.65 -> 0.50, 50%", 0.65, 0.5, 0.5)]
    print(f"{args.sims} simulated experiments each, up to {args.ratings} ratings, a look every {args.every}")
    print(f"{'scenario':32} {'rule':17} {'promoted':>9} {'rolled back':>12} {'median ratings':>15}")
    for i, (name, p_a, p_b, share) in enumerate(scenarios):
        for rule_name, rule in rules.items():
            promote, rollback, median = run(rule, p_a, p_b, share, args.sims, args.ratings, args.every, seed=i)
            print(f"{name:32} {rule_name:17} {promote:9.3f} {rollback:12.3f} {median if median else '-':>15}")


if __name__ == "__main__":
    main()

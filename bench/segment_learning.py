"""How many thumbs does it take to find users who want opposite things, how many land in the
wrong segment, and how often are users who all want one thing split anyway?

    python bench/segment_learning.py [--seeds 20] [--users 40]

Offline: simulated users of the demo domain rate answers of the base model's mixed styles
(each answer a random style, a fifth of them broken) with the realistic habits (5% of
liked and 15% of disliked answers get a thumb, 20% of thumbs flipped), and
trainer/taste_clusters.py's `find_split` runs on their first N thumbs each, as the
scheduler's pass would (trainer/segment_learning.py). For each N: the share of seeds where
a split was found, the groups found, and users in the wrong group (the minority of their
group's taste) when one was. Populations: the 50/50 formal/casual mix (a split is right),
and one-taste populations (any split is wrong).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo.personas import persona  # noqa: E402
from demo.population import REALISTIC  # noqa: E402
from trainer import taste_clusters  # noqa: E402
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt  # noqa: E402

MARGINS = (0.0, 0.1, 0.2)  # place_margin values tried (trainer/taste_clusters.py assign)
POPULATIONS = {"formal/casual 50/50": ["formal", "casual"], "formal": ["formal"],
               "formal-for-errands": ["formal-for-errands"], "short": ["short"]}


def thumbs(tastes: list[str], users: int, per_user: int, seed: int) -> tuple[taste_clusters.Votes, dict[str, str]]:
    rng = random.Random(seed)
    names, texts, signs, truth = [], [], [], {}
    for u in range(users):
        taste = persona(tastes[u * len(tastes) // users])
        truth[f"user-{u}"] = taste.name
        got = 0
        while got < per_user:
            task, name = rng.randrange(len(TASKS)), rng.choice(NAMES)
            prompt = make_prompt(task, name, rng)
            answered = (task + 1) % len(TASKS) if rng.random() < 0.2 else task  # broken: another task
            answer = make_answer(answered, name, Style.random(rng), rng)
            thumb = REALISTIC.thumb(taste.likes(prompt, answer), rng)
            if thumb is not None:
                names.append(f"user-{u}")
                texts.append(answer)
                signs.append(1.0 if thumb else -1.0)
                got += 1
    x, columns = taste_clusters.features(texts)
    heldout = np.array([random.Random(f"{seed}:{i}").random() < 0.5 for i in range(len(texts))])
    return taste_clusters.Votes(names, x, np.array(signs), heldout, columns=columns), truth


def wrong(split: taste_clusters.Split, truth: dict[str, str]) -> int:
    """Users whose taste is not their group's majority."""
    by_group: dict[int, Counter] = {}
    for user, group in split.clusters.items():
        by_group.setdefault(group, Counter())[truth[user]] += 1
    return sum(sum(c.values()) - c.most_common(1)[0][1] for c in by_group.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--per-user", default="6,10,15,20,30", help="thumbs per user")
    args = p.parse_args()
    print("| population | thumbs per user (in all) | split found | groups | users in the wrong group "
          "(median, max) | " + " | ".join(f"placed, margin {m}: wrong (median, max) (unplaced)" for m in MARGINS)
          + " | seconds per pass |")
    print("|---|---|---:|---|---|" + "---|" * len(MARGINS) + "---:|")
    for label, tastes in POPULATIONS.items():
        for n in (int(v) for v in args.per_user.split(",")):
            found, groups, misplaced, seconds = 0, Counter[int](), [], []
            placements: dict[float, list[tuple[int, int]]] = {m: [] for m in MARGINS}
            for seed in range(args.seeds):
                votes, truth = thumbs(tastes, args.users, n, seed)
                began = time.perf_counter()
                split = taste_clusters.find_split(votes, seed=seed)
                seconds.append(time.perf_counter() - began)
                if split is not None:
                    found += 1
                    groups[split.k] += 1
                    misplaced.append(wrong(split, truth))
                    centres = taste_clusters.group_centres(votes, split.clusters, 6)
                    for margin in MARGINS:  # what users get: placed on all their votes
                        placed = taste_clusters.assign(votes, centres, {}, min_votes=6, margin=0.2,
                                                       place_margin=margin)
                        truth_of = {u: truth[u] for u in placed}
                        by_group: dict[int, Counter] = {}
                        for user, (group, _) in placed.items():
                            by_group.setdefault(group, Counter())[truth_of[user]] += 1
                        bad = sum(sum(c.values()) - c.most_common(1)[0][1] for c in by_group.values())
                        placements[margin].append((bad, len(truth) - len(placed)))
            spread = f"{statistics.median(misplaced):.0f}, {max(misplaced)}" if misplaced else "-"
            placed = " | ".join(
                f"{statistics.median(b for b, _ in placements[m]):.0f}, {max(b for b, _ in placements[m])} "
                f"({statistics.median(u for _, u in placements[m]):.0f})" if placements[m] else "-" for m in MARGINS)
            print(f"| {label} | {n} ({n * args.users}) | {found}/{args.seeds} | "
                  f"{dict(sorted(groups.items())) or '-'} | {spread} | {placed} | {statistics.median(seconds):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()

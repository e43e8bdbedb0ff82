"""The demo's final report: a JSON summary and a PNG of thumbs-up rate over time per adapter
generation, with promotions and rollbacks marked."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from demo.population import Rated


def wilson(liked: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate (sound for small n and rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = liked / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(centre - half, 4), round(centre + half, 4)


def rate(liked: int, n: int) -> dict[str, Any]:
    return {"liked": liked, "rated": n, "rate": round(liked / n, 4) if n else None, "ci95": list(wilson(liked, n))}


def live_rates(rated: list[Rated]) -> dict[str, dict]:
    """Per adapter version that answered (and per persona of a mix within it): the TRUE
    rate (answers the users liked, of all served) beside the OBSERVED one (thumbs-up of the
    thumbs given), which sparse, one-sided and noisy rating habits pull apart."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rated:
        for key in ((r.version, ""), (r.version, r.persona)):
            c = counts[key]
            c[0] += r.liked
            c[1] += 1
            c[2] += r.thumb is True
            c[3] += r.thumb is not None
    out: dict[str, dict] = {}
    for (version, taste), (liked, n, up, thumbs) in sorted(counts.items()):
        figures = {"true": rate(liked, n), "observed": rate(up, thumbs)}
        if not taste:
            out[version] = figures
        elif len({p for v, p in counts if v == version and p}) > 1:
            out[version].setdefault("per_persona", {})[taste] = figures
    return out


def write(out: Path, summary: dict, rated: list[Rated], events: list[dict]) -> tuple[Path, Path]:
    """Writes summary.json and thumbs-up.png into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))

    fig, ax = plt.subplots(figsize=(11, 5))
    bucket = 30.0  # seconds per point
    by_version: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rated:
        cell = by_version[r.version][int(r.at // bucket)]
        cell[0] += r.liked
        cell[1] += 1
    generation = {g["version"]: i for i, g in enumerate(summary["generations"])}
    for version, cells in sorted(by_version.items(), key=lambda kv: generation.get(kv[0], 99)):
        points = sorted((k * bucket / 60 + bucket / 120, up / n) for k, (up, n) in cells.items() if n >= 5)
        if points:
            label = f"gen {generation[version]}: {version}" if version in generation else version
            ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=label)
    for event in events:
        colour = {"promoted": "green", "rolled_back": "red", "started": "grey", "taste_changed": "purple"}
        ax.axvline(event["at"] / 60, color=colour.get(event["action"], "black"), linestyle="--", linewidth=1)
        ax.text(event["at"] / 60, 1.02, event["action"].replace("_", " "), rotation=90, fontsize=7,
                va="bottom", color=colour.get(event["action"], "black"))
    base = summary["base_heldout"]
    ax.axhline(base["rate"], color="black", linestyle=":", linewidth=1, label=f"base, held-out ({base['rate']:.2f})")
    ax.axhline(summary["target"], color="green", linestyle=":", linewidth=1, label=f"target {summary['target']}")
    tastes = [summary["persona"]] + [e["version"] for e in events if e["action"] == "taste_changed"]
    ax.set(xlabel="minutes", ylabel="share of answers users liked (live traffic, 30 s windows)", ylim=(0, 1.1),
           title=f"persona {' then '.join(tastes)}, method {summary['method']}: "
                 f"champion held-out {summary['champion_heldout']['rate']}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    png = out / "thumbs-up.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return summary_path, png

"""The loop measured by the demo itself: for each built-in persona (the request-dependent
ones included) and a custom judge, does the promoted champion reach 0.85 thumbs-up on
held-out prompts in time, with zero failed requests? Does the taste-change scenario roll
back? And what does a 50/50 mix of opposite tastes get, with segments learned from the
thumbs and with one adapter per declared segment?

    python bench/demo_loop.py [--runs formal,short,...] [--minutes 15] [--regime realistic]

`--regime realistic`: 5% of liked and 15% of disliked answers rated, 20% of thumbs flipped.

Each run is a full `loraloop demo` (its own data dir; the demo model is shared). Wall time
counts from the command's start (gateway and vLLM start-up and the base measurement
included); "to target" from the simulated users' first request.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "formal": ["--persona", "formal"],
    "short": ["--persona", "short"],
    "question": ["--persona", "question"],
    "no-name": ["--persona", "no-name"],
    "custom judge": ["--judge", "bench.tastes:formal_short_or_casual_question"],
    "taste change": ["--persona", "formal", "--scenario", "taste-change"],
    "formal-for-errands": ["--persona", "formal-for-errands"],
    "long-for-advice": ["--persona", "long-for-advice"],
    # segments learned from the thumbs (trainer/segment_learning.py; LORALOOP_LEARN_SEGMENTS=false: one adapter)
    "mix formal/casual": ["--mix", "formal:0.5,casual:0.5"],
    # the app declares each user's persona as their segment: one adapter per half (adapters/segments.py)
    "mix formal/casual with declared segments": ["--mix", "formal:0.5,casual:0.5", "--declare-segments"],
}


def run(name: str, extra: list[str], minutes: float, root: Path) -> dict:
    out = root / name.replace(" ", "-").replace("/", "-")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "demo.run", *extra, "--minutes", str(minutes), "--data-dir",
                    str(out / "data"), "--out", str(out / "report")], check=True,
                   stdout=open(out.with_suffix(".log"), "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    summary = json.loads((out / "report" / "summary.json").read_text())
    summary["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
    return summary


def row(name: str, s: dict) -> str:
    base, champ = s["base_heldout"], s["champion_heldout"]
    actions = [e["action"] for e in s["events"]]
    return (f"| {name} | {base['rate']:.2f} {tuple(base['ci95'])} | {champ['rate']:.2f} {tuple(champ['ci95'])} "
            f"(n={champ['rated']}) | {len(s['generations']) - 1} | {actions.count('rolled_back')} | "
            f"{s['minutes_to_target'] if s['minutes_to_target'] is not None else '-'} | {s['wall_minutes']} | "
            f"{s['requests']} | {s.get('ratings', '-')} | {s['failed_requests']} | {len(s['candidates'])} "
            f"({sum(not c['gate_passed'] for c in s['candidates'])} refused by the gate) |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated names from: " + ", ".join(RUNS))
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--regime", choices=["ideal", "realistic"], default="ideal")
    p.add_argument("--demo-args", default="", help="more `loraloop demo` options for every run, e.g. "
                   "'--train-every 80 --steps 80'")
    p.add_argument("--out", type=Path, help="where each run's data and report go (default: a temp folder)")
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="loraloop-demo-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("| run | base held-out (95% CI) | champion held-out | generations | rollbacks | minutes to target | "
          "wall minutes | requests | ratings | failed | candidates |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.runs.split(","):
        summary = run(name, [*RUNS[name], "--regime", args.regime, *shlex.split(args.demo_args)], args.minutes, root)
        print(row(name, summary), flush=True)
        per_persona = summary["champion_heldout"].get("per_persona")
        if summary.get("segment_champions"):  # each segment's own champion, on its own users
            print("|   per segment | " + ", ".join(f"{s}: {r['rate']:.2f} {tuple(r['ci95'])}"
                                                 for s, r in summary["segment_champions"].items()) + " |")
        for label, g in summary.get("learned_segments", {}).items():
            print(f"|   learned {label} | {g['members']} users: {g['by_persona']} ({g['wrong']} in the wrong one) |")
        learned_at = [e for e in summary["events"] if e["action"] == "segments_learned"]
        if learned_at:
            print(f"|   split found | at {learned_at[0]['at'] / 60:.1f} min, {learned_at[0]['reason']} |")
        if per_persona and not summary.get("segment_champions"):
            print("|   per persona | " + ", ".join(f"{p}: {r['rate']:.2f}" for p, r in per_persona.items()) + " |")
    print(f"(reports under {root})")


if __name__ == "__main__":
    main()

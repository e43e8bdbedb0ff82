"""The run report a person looks at: training curves, collapse checks and the gate's verdict
in one PNG, beside the same numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out_dir: Path, name: str, provenance: dict, log_history: list[dict], gate: dict) -> Path:
    """Writes `<name>.json` and `<name>.png` into `out_dir`; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"provenance": provenance, "gate": gate,
                                                      "log_history": log_history}, indent=2, default=str))
    steps = [h for h in log_history if "loss" in h or "eval_loss" in h or "reward" in h]
    checks = [c for c in provenance.get("collapse_checks", []) if "sampled_kl" in c]
    fig, (curves, collapse) = plt.subplots(1, 2, figsize=(11, 4))
    # DPO/KTO: loss, implicit reward margin and accuracy; SFT: validation loss; GRPO: the
    # learned reward and the KL to the reference
    for key in ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "reward", "kl"):
        points = [(h["step"], h[key]) for h in steps if key in h]
        if points:
            curves.plot(*zip(*points, strict=True), label=key)
    curves.set(title="training", xlabel="step")
    if curves.get_legend_handles_labels()[0]:
        curves.legend()
    final = gate.get("metrics", {})
    last_step = max((h["step"] for h in steps), default=0)
    for key, marker in (("sampled_kl", "o"), ("implausible_share", "s")):
        if checks:
            collapse.plot([c["step"] for c in checks], [c[key] for c in checks], f"{marker}-",
                          label=f"{key} (during training)")
        if key in final:
            collapse.plot([last_step], [final[key]], marker, markersize=10, label=f"{key} (gate)")
    collapse.set_yscale("symlog")
    if collapse.get_legend_handles_labels()[0]:
        collapse.legend(fontsize=7)
    verdict = "APPROVED" if gate.get("passed") else "REJECTED"
    metrics = ", ".join(f"{k} {v:.3g}" for k, v in gate.get("metrics", {}).items())
    collapse.set(title=f"held-out checks: {verdict}", xlabel="step")
    fig.suptitle(f"{name}  |  {metrics}", fontsize=8)
    for i, reason in enumerate(gate.get("reasons", [])[:3]):
        fig.text(0.01, 0.01 + 0.03 * i, reason[:150], fontsize=7, color="darkred")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png

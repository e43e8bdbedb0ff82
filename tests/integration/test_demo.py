"""The loop closes: a short `loraloop demo` (real gateway, vLLM, scheduler, trainer, gate and
experiment; simulated users through the openai client) moves the users' thumbs-up rate on
prompts no run ever trained on, and no request fails on the way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import AdapterVersion, Feedback, Interaction
from demo.run import main
from tests.integration.conftest import CACHE, free_port

pytestmark = pytest.mark.integration


def z_score(a: dict, b: dict) -> float:
    """Two-proportion z statistic of b's rate over a's."""
    pooled = (a["liked"] + b["liked"]) / (a["rated"] + b["rated"])
    se = math.sqrt(pooled * (1 - pooled) * (1 / a["rated"] + 1 / b["rated"]))
    return (b["rate"] - a["rate"]) / se


def test_one_generation_of_the_loop_raises_the_heldout_thumbs_up_rate(
        demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(CACHE))  # the demo model is shared, not rebuilt
    summary = main(["--persona", "formal", "--generations", "1", "--minutes", "12", "--heldout-n", "200",
                    "--train-every", "150", "--steps", "80", "--min-ratings", "30", "--concurrency", "4",
                    "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")])

    assert summary["failed_requests"] == 0, summary["failures"]
    assert len(summary["generations"]) == 2, summary["events"]  # the base, then one promoted champion
    base, champion = summary["generations"][0]["heldout"], summary["generations"][1]["heldout"]
    assert champion["rate"] > base["rate"] and z_score(base, champion) > 2.33, (base, champion)  # p < 0.01
    assert [e["action"] for e in summary["events"]][:2] == ["started", "promoted"]

    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert report["generations"] == summary["generations"]
    assert (tmp_path / "out" / "thumbs-up.png").read_bytes()[:4] == b"\x89PNG"

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'loraloop.db'}")
    with make_sessionmaker(engine)() as session:
        promoted = session.get(AdapterVersion, summary["generations"][1]["version"])
        assert promoted is not None and promoted.eval_report["passed"]  # the gate let it through
        # the held-out measurements were logged but never rated: they cannot have trained anything
        rated_heldout = session.scalar(select(Feedback.id).join(Interaction, Feedback.interaction_id == Interaction.id)
                                       .where(Interaction.end_user == "heldout-eval").limit(1))
        assert rated_heldout is None
    engine.dispose()

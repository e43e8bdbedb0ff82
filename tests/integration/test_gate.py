"""The eval gate passes a sound candidate and refuses a collapsed or broken one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from adapters.schema import AdapterState
from tests.integration.conftest import CACHE
from tests.integration.test_training import preference_examples
from trainer.gate import GateConfig, evaluate
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.integration

HELDOUT = preference_examples(16, seed=99)  # other prompts than training's (seed 0)
PROMPTS = [p["prompt"] for p in HELDOUT]


@pytest.fixture(scope="module")
def sound(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sound")
    train(TrainConfig(steps=12, learning_rate=5e-4), preference_examples(64), str(demo_model), out)
    return out


@pytest.fixture(scope="module")
def collapsed(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DPO pushed far past the point where its samples turn to garbage."""
    out = tmp_path_factory.mktemp("collapsed")
    train(TrainConfig(steps=60, learning_rate=5e-3, check_every=0), preference_examples(64), str(demo_model), out)
    return out


def test_a_sound_candidate_passes(demo_model: Path, sound: Path) -> None:
    report = evaluate(str(demo_model), sound, HELDOUT, PROMPTS)
    assert report.passed, report.reasons
    assert report.metrics["pair_accuracy"] > 0.5 and report.metrics["sampled_kl"] < 2


def test_an_overtrained_candidate_is_refused_though_its_preference_metrics_look_great(
        demo_model: Path, collapsed: Path) -> None:
    """DPO pushed too far: held-out preference accuracy stays perfect while samples turn to
    garbage (measured on the demo model, 75-100 steps in). Only the sample-based checks can tell."""
    report = evaluate(str(demo_model), collapsed, HELDOUT, PROMPTS)
    assert report.metrics["pair_accuracy"] >= 0.9  # what a reward-accuracy gate would wave through
    assert not report.passed
    assert any("sampled KL" in r for r in report.reasons)
    assert any("implausible" in r for r in report.reasons)


def broken_copy(sound: Path, tmp_path: Path) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(sound, out)
    return out


def test_nan_weights_are_refused(demo_model: Path, sound: Path, tmp_path: Path) -> None:
    broken = broken_copy(sound, tmp_path)
    weights = load_file(broken / "adapter_model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, broken / "adapter_model.safetensors")
    report = evaluate(str(demo_model), broken, HELDOUT, PROMPTS)
    assert not report.passed and "NaN" in report.reasons[0]


@pytest.mark.parametrize("change,reason", [
    ({"r": 64}, "exceeds the engine's max LoRA rank"),
    ({"target_modules": ["q_proj", "lm_head"]}, "not all servable"),
])
def test_adapters_the_engine_cannot_serve_are_refused(demo_model: Path, sound: Path, tmp_path: Path,
                                                      change: dict, reason: str) -> None:
    broken = broken_copy(sound, tmp_path)
    config = json.loads((broken / "adapter_config.json").read_text()) | change
    (broken / "adapter_config.json").write_text(json.dumps(config))
    report = evaluate(str(demo_model), broken, HELDOUT, PROMPTS, GateConfig(max_lora_rank=16))
    assert not report.passed and reason in report.reasons[0]


def test_training_keeps_its_last_healthy_checkpoint(demo_model: Path, tmp_path: Path) -> None:
    """The same collapse check runs during training; when the run ends collapsed, the adapter
    saved is the last checkpoint that passed it, and that one passes the gate."""
    train(TrainConfig(steps=40, learning_rate=1.5e-3, check_every=5), preference_examples(64),
          str(demo_model), tmp_path, check_prompts=PROMPTS)
    checks = json.loads((tmp_path / "loraloop-train.json").read_text())["collapse_checks"]
    assert not checks[-2]["healthy"]  # the run itself ended collapsed...
    restored = checks[-1]["restored_step"]
    assert any(c["step"] == restored and c["healthy"] for c in checks[:-1])  # ...and went back
    report = evaluate(str(demo_model), tmp_path, HELDOUT, PROMPTS)
    assert report.passed, report.reasons


def test_adapters_brought_by_operators_go_through_the_same_gate(demo_model: Path, sound: Path, collapsed: Path,
                                                               tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(CACHE / "models")
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data)}

    def add(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "adapters", "add", str(path), "--prefix",
                               "ops", "--alias", "default"], env=env, capture_output=True, text=True, timeout=300)

    refused = add(collapsed)
    assert refused.returncode == 1
    verdict = json.loads(refused.stdout)
    assert verdict["state"] == "rejected" and any("implausible" in r for r in verdict["reasons"])
    accepted = add(sound)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["state"] == "champion"  # approved, then made the alias's champion

    engine = make_engine(f"sqlite:///{data / 'loraloop.db'}")
    with make_sessionmaker(engine)() as session:
        snapshot = registry.snapshot(session)
        states = {v.name: v.state for v in registry.list_versions(session)}
    engine.dispose()
    assert snapshot.aliases == {"default": json.loads(accepted.stdout)["name"]}
    assert set(snapshot.versions) == {json.loads(accepted.stdout)["name"]}  # the garbage one never serves
    assert states[verdict["name"]] == AdapterState.rejected


@pytest.fixture(scope="module")
def reward_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained on the same kind of feedback: users prefer formal answers."""
    from trainer.reward_model import train_reward_model

    return train_reward_model(str(demo_model), preference_examples(256), tmp_path_factory.mktemp("rm"))


def test_the_reward_model_learns_the_users_preference(demo_model: Path, reward_model: Path) -> None:
    from trainer.reward_model import RewardModel

    rm = RewardModel(str(demo_model), reward_model)
    right = sum(rm.score(p["prompt"], p["chosen"][0]["content"]) > rm.score(p["prompt"], p["rejected"][0]["content"])
                for p in HELDOUT)
    assert right / len(HELDOUT) >= 0.9


def test_win_rate_against_the_champion(demo_model: Path, reward_model: Path, collapsed: Path,
                                       adapter_dirs: dict[str, Path]) -> None:
    formal = adapter_dirs["formal"]  # answers every prompt formally: what these users like
    preferred = evaluate(str(demo_model), formal, [], PROMPTS, reward_model=reward_model)
    assert preferred.metrics["win_rate"] > 0.6  # against the base (no champion yet)
    worse = evaluate(str(demo_model), collapsed, [], PROMPTS, reward_model=reward_model, champion=formal)
    assert worse.metrics["win_rate"] < 0.35
    assert any("win rate" in r for r in worse.reasons)

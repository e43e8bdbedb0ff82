"""What `loraloop train` refuses before it touches data or models, and how it says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trainer.train
from trainer.train import main, parse_args
from trainer.train_config import DEFAULT_LEARNING_RATE, METHODS, TrainConfig

torch = pytest.importorskip("torch")


def test_the_config_lives_in_a_leaf_and_the_old_import_path_still_works() -> None:
    assert trainer.train.TrainConfig is TrainConfig and trainer.train.METHODS is METHODS
    assert trainer.train.DEFAULT_LEARNING_RATE is DEFAULT_LEARNING_RATE and "TrainConfig" in trainer.train.__all__


def test_every_method_parses_and_gets_its_own_learning_rate() -> None:
    for method in METHODS:
        cfg = parse_args(["--method", method])
        assert cfg.learning_rate == DEFAULT_LEARNING_RATE[method]
        assert cfg.kind == ("reward" if method == "reward" else "policy")
    assert parse_args(["--method", "sft", "--learning-rate", "1e-4"]).learning_rate == 1e-4
    assert parse_args([]).qlora is False and parse_args(["--qlora"]).qlora is True
    assert parse_args(["--no-register"]).register is False


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"method": "ppo"}, "use --method grpo"),
    ({"method": "orpo"}, "method must be one of dpo, kto, sft, reward, grpo"),
    ({"method": "grpo", "batch_size": 6, "generations": 4}, "multiple of it"),
    ({"method": "kto", "batch_size": 1}, "KTO needs batch_size >= 2"),
])
def test_impossible_settings_are_refused_with_the_reason(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TrainConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: QLoRA is allowed here")
def test_qlora_is_refused_on_cpu_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="--qlora needs a CUDA GPU"):
        main(TrainConfig(method="sft", qlora=True, data=str(tmp_path / "does-not-exist.jsonl")))
    assert not any(tmp_path.iterdir())  # no database, no model build, no scratch folder

    cli = subprocess.run([sys.executable, "-m", "trainer.train", "--method", "dpo", "--qlora"],
                         capture_output=True, text=True, env={"LORALOOP_DATA_DIR": str(tmp_path), "PATH": ""},
                         timeout=120)
    assert cli.returncode == 1 and "--qlora needs a CUDA GPU" in cli.stderr and "Traceback" not in cli.stderr


def test_an_unknown_method_on_the_command_line_is_one_clear_line() -> None:
    cli = subprocess.run([sys.executable, "-m", "trainer.train", "--method", "ppo"], capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and "use --method grpo" in cli.stderr

"""The gate's integrity check refuses broken artifacts with a reason instead of crashing:
truncated or foreign weight files, impossible ranks, NaN weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.gate import GateConfig, integrity

MODULES = ["q_proj", "v_proj"]


def adapter(folder: Path, rank: object = 8, weights: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank,
                                                            "target_modules": MODULES}))
    save_file(weights if weights is not None else {"a.lora_A.weight": torch.zeros(8, 16)},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_a_sound_artifact_passes(tmp_path: Path) -> None:
    assert integrity(adapter(tmp_path / "ok"), GateConfig()) == []


def test_truncated_and_foreign_weight_files_are_refused(tmp_path: Path) -> None:
    truncated = adapter(tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    foreign = adapter(tmp_path / "foreign")
    (foreign / "adapter_model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    for folder in (truncated, foreign):
        (problem,) = integrity(folder, GateConfig())
        assert "cannot be read" in problem


@pytest.mark.parametrize("rank", [0, -4, 64, "8", None, True])
def test_impossible_ranks_are_refused(tmp_path: Path, rank: object) -> None:
    problems = integrity(adapter(tmp_path / "a", rank=rank), GateConfig(max_lora_rank=16))
    assert any("rank" in p for p in problems)


def test_nan_weights_and_empty_files_are_refused(tmp_path: Path) -> None:
    nan = adapter(tmp_path / "nan", weights={"a.lora_A.weight": torch.full((8, 16), float("nan"))})
    assert any("NaN" in p for p in integrity(nan, GateConfig()))
    empty = adapter(tmp_path / "empty", weights={})
    assert any("no tensors" in p for p in integrity(empty, GateConfig()))

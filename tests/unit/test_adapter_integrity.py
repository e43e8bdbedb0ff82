"""Bad artifacts are refused with a reason before they become a version: truncated or foreign
weight files, impossible ranks, unservable modules, NaN/inf weights in every float type,
weights shaped for another base model, symlinks, and names that try to leave the store.
Refused means: an InvalidAdapter with the reason, no row in the registry, nothing in the store.
`loraloop adapters add --approve` (which skips the gate) is held to the same checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import select

from adapters import integrity, registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.errors import InvalidAdapter
from adapters.schema import AdapterVersion

# A tiny LLaMA-family base: hidden 16, 2 layers, 4 heads of 4, 2 KV heads, MLP 32.
BASE = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2}
PREFIX = "base_model.model.model.layers.{layer}.self_attn.{module}.lora_{side}.weight"


def lora_weights(rank: int = 4, hidden: int = 16, kv_out: int = 8, layers: int = 2,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    weights = {}
    for layer in range(layers):
        for module, out in (("q_proj", hidden), ("v_proj", kv_out)):
            weights[PREFIX.format(layer=layer, module=module, side="A")] = torch.zeros(rank, hidden, dtype=dtype)
            weights[PREFIX.format(layer=layer, module=module, side="B")] = torch.zeros(out, rank, dtype=dtype)
    return weights


def adapter(folder: Path, rank: object = 4, modules: object = ("q_proj", "v_proj"),
            weights: dict | None = None, peft_type: str = "LORA") -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": peft_type, "r": rank, "target_modules": list(modules) if isinstance(modules, tuple)
         else modules}))
    save_file(lora_weights() if weights is None else weights, str(folder / "adapter_model.safetensors"))
    return folder


def check(folder: Path, base: dict | None = BASE) -> list[str]:
    return integrity.problems(folder, integrity.Limits(max_rank=16, base_config=base))


def test_a_sound_artifact_passes_in_every_float_type(tmp_path: Path) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert check(adapter(tmp_path / str(dtype), weights=lora_weights(dtype=dtype))) == []


def test_truncated_and_foreign_weight_files_are_refused(tmp_path: Path) -> None:
    truncated = adapter(tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) - 7])
    header_only = adapter(tmp_path / "header-only")
    (header_only / "adapter_model.safetensors").write_bytes(data[:40])
    foreign = adapter(tmp_path / "foreign")
    (foreign / "adapter_model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    for folder in (truncated, header_only, foreign):
        (problem,) = check(folder)
        assert "cannot be read" in problem and "truncated or corrupt" in problem


@pytest.mark.parametrize("rank", [0, -4, 64, "8", None, True])
def test_impossible_ranks_are_refused(tmp_path: Path, rank: object) -> None:
    assert any("rank" in p for p in check(adapter(tmp_path / "a", rank=rank)))


@pytest.mark.parametrize("modules", [("lm_head",), "q_proj", ("q_proj", "embed_tokens"), 7])
def test_unservable_target_modules_are_refused(tmp_path: Path, modules: object) -> None:
    assert any("not all servable" in p for p in check(adapter(tmp_path / "a", modules=modules)))


def test_other_adapter_types_are_refused(tmp_path: Path) -> None:
    assert any("only LORA is served" in p for p in check(adapter(tmp_path / "a", peft_type="PREFIX_TUNING")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, dtype: torch.dtype, value: float) -> None:
    weights = lora_weights(dtype=dtype)
    name = PREFIX.format(layer=1, module="v_proj", side="B")
    weights[name][3, 1] = value  # one bad number among zeros
    (problem,) = check(adapter(tmp_path / "a", weights=weights))
    assert "NaN or infinity" in problem and name in problem


def test_empty_weights_are_refused(tmp_path: Path) -> None:
    assert any("no tensors" in p for p in check(adapter(tmp_path / "a", weights={})))


@pytest.mark.parametrize("other_base", [
    {"hidden": 32},  # a wider model
    {"kv_out": 16},  # another attention-head layout (no grouped KV heads)
    {"layers": 3},  # a deeper model
])
def test_weights_for_another_base_model_are_refused(tmp_path: Path, other_base: dict) -> None:
    (problem,) = check(adapter(tmp_path / "a", weights=lora_weights(**other_base)))
    assert "trained on another base model" in problem
    # without the base's config (an HF id not on this machine) only the shape check is skipped
    assert check(tmp_path / "a", base=None) == []


def test_symlinked_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the adapter store")
    folder = adapter(tmp_path / "a")
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to(secret)
    (problem,) = check(folder)
    assert "symbolic link" in problem


def test_the_base_config_is_found_for_a_folder_and_in_the_hf_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "config.json").write_text(json.dumps(BASE))
    assert integrity.base_model_config(str(tmp_path / "local")) == BASE
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(BASE))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert integrity.base_model_config("acme/tiny") == BASE
    assert integrity.base_model_config("acme/not-downloaded") is None


@pytest.fixture
def store(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_sessionmaker(engine), tmp_path / "store"
    engine.dispose()


def versions(sessions) -> list[str]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return list(session.scalars(select(AdapterVersion.name)))


@pytest.mark.parametrize("prefix", ["../../etc", "..", "a/b", "/abs", "x\x00y", "UPPER", "", "a" * 65, "-dash"])
def test_names_that_could_leave_the_store_are_refused(tmp_path: Path, store, prefix: str) -> None:  # type: ignore[no-untyped-def]
    sessions, root = store
    before = versions(sessions)
    with sessions.begin() as session, pytest.raises(InvalidAdapter, match="prefix"):
        registry.register(session, adapter(tmp_path / "a"), root, "base", prefix=prefix)
    assert versions(sessions) == before and not root.exists()


def test_a_refused_artifact_leaves_no_trace(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    sessions, root = store
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(BASE))
    before = versions(sessions)
    with sessions.begin() as session, pytest.raises(InvalidAdapter, match="another base model"):
        registry.register(session, adapter(tmp_path / "wide", weights=lora_weights(hidden=32)), root, str(base))
    assert versions(sessions) == before and not root.exists()
    with sessions.begin() as session:  # the same base, the right shapes: registered
        version = registry.register(session, adapter(tmp_path / "ok"), root, str(base))
    assert version.name in versions(sessions)


def test_operator_approval_does_not_skip_the_integrity_checks(tmp_path: Path, db_url: str) -> None:
    """`adapters add --approve` skips the eval gate, never these checks: one line, exit 1."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(BASE))
    env = {**os.environ, "LORALOOP_DATA_DIR": str(tmp_path / "data"), "LORALOOP_DATABASE_URL": db_url,
           "LORALOOP_BASE_MODEL": str(base)}
    weights = lora_weights()
    weights[PREFIX.format(layer=0, module="q_proj", side="A")][0, 0] = float("nan")
    bad = adapter(tmp_path / "nan", weights=weights)
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "adapters", "add", str(bad), "--approve"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "NaN or infinity" in out.stderr and "Traceback" not in out.stderr
    good = subprocess.run([sys.executable, "-m", "gateway.cli", "adapters", "add", str(adapter(tmp_path / "ok")),
                           "--approve"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(good.stdout)["state"] == "approved"

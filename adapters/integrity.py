"""Can the engine serve this adapter folder on this base model? Checked before any version is
registered (the trainer's runs, `loraloop adapters add`, with or without `--approve`), so a
broken artifact never becomes a version, let alone reaches users.

Refused, each with its reason: missing or symlinked files (a link could make the store copy
any file the operator's account can read), a config that is not a LoRA config, ranks that
are not a positive integer up to the engine's --max-lora-rank, target modules the engine
cannot serve, weights that are truncated or not safetensors at all, NaN or infinite weights,
and weights shaped for another base model (another hidden size, layer count or head layout).

The weights are read with numpy, not torch: the gateway never imports torch. safetensors is
a JSON header and raw little-endian bytes, so the format checks are a few lines here; the
finiteness check looks at the exponent bits, which also covers bfloat16 (numpy has no such
type).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
SERVABLE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# dtype -> (bits as unsigned integer type, exponent mask): all exponent bits set = inf or NaN
_FLOATS = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000),
           "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80)}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_LORA_TENSOR = re.compile(r"layers\.(\d+)\..*?(\w+_proj)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class Limits:
    """What the engine serves: its rank limit, its LoRA modules and the base model's config."""

    max_rank: int = 16
    modules: tuple[str, ...] = SERVABLE_MODULES
    base_config: dict | None = field(default=None, repr=False)  # the base model's config.json


def problems(folder: Path, limits: Limits) -> list[str]:
    """Every reason the engine must not serve this folder; empty when it may."""
    found = []
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        path = folder / filename
        if path.is_symlink():
            found.append(f"{filename} is a symbolic link; copy the file itself into the folder")
        elif not path.is_file():
            found.append(f"{folder} has no {filename}: not a PEFT adapter folder")
    if found:
        return found
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        return [f"{CONFIG_FILE} is not valid JSON ({exc})"]
    if not isinstance(config, dict):
        return [f"{CONFIG_FILE} is not a JSON object"]
    found += _config_problems(config, limits)
    try:
        tensors = read_safetensors(folder / WEIGHTS_FILE)
    except ValueError as exc:
        return [*found, f"the weights cannot be read ({exc}); truncated or corrupt?"]
    if not tensors:
        found.append("the weights file holds no tensors")
    bad = [name for name, (dtype, _, data) in tensors.items() if not _finite(dtype, data)]
    if bad:
        found.append(f"{len(bad)} weight tensors hold NaN or infinity (e.g. {bad[0]})")
    if limits.base_config is not None:
        found += _shape_problems({n: shape for n, (_, shape, _) in tensors.items()}, limits.base_config)
    return found


def _config_problems(config: dict, limits: Limits) -> list[str]:
    found = []
    if config.get("peft_type") != "LORA":
        found.append(f"not a LoRA adapter (peft_type {config.get('peft_type')!r}); only LORA is served")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        found.append(f"rank {rank!r} is not a positive integer")
    elif rank > limits.max_rank:
        found.append(f"rank {rank} exceeds the engine's max LoRA rank {limits.max_rank}")
    modules = config.get("target_modules") or []
    if isinstance(modules, str) or not isinstance(modules, list) or not set(modules) <= set(limits.modules):
        found.append(f"target modules {modules!r} are not all servable ({list(limits.modules)})")
    return found


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """name -> (dtype, shape, raw bytes as uint8), after checking the header against the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 << 20):
            raise ValueError(f"header length {header_len} does not fit a file of {size} bytes")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as exc:
            raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if size > 8 + header_len \
        else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor {name!r} has a malformed entry ({exc!r})") from exc
        if not 0 <= begin <= end <= len(data) or end - begin != expected:
            raise ValueError(f"tensor {name!r} lies outside the file ({begin}..{end} of {len(data)} bytes)")
        tensors[name] = (dtype, shape, data[begin:end])
    return tensors


def _finite(dtype: str, raw: np.ndarray) -> bool:
    if dtype not in _FLOATS:
        return True
    bits, mask = _FLOATS[dtype]
    return not bool(((raw.view(bits) & mask) == mask).any())


def _shape_problems(shapes: dict[str, tuple[int, ...]], base: dict) -> list[str]:
    """LoRA A is (rank, in_features), B is (out_features, rank) of the module it adapts: with
    a LLaMA-family base config, every such shape and layer index must fit the base."""
    dims = module_shapes(base)
    if dims is None:
        return []  # an architecture whose projection sizes this check does not know
    layers = base.get("num_hidden_layers", 0)
    for name, shape in sorted(shapes.items()):
        match = _LORA_TENSOR.search(name)
        if match is None or match.group(2) not in dims:
            continue
        layer, module, side = int(match.group(1)), match.group(2), match.group(3)
        if layer >= layers:
            return [f"{name}: layer {layer} does not exist in the base model ({layers} layers); "
                    "the adapter was trained on another base model"]
        fan_in, fan_out = dims[module]
        got = shape[1] if side == "A" else shape[0]
        want = fan_in if side == "A" else fan_out
        if len(shape) != 2 or got != want:
            return [f"{name} has shape {list(shape)}, the base model's {module} needs "
                    f"{'in' if side == 'A' else 'out'}_features {want}; "
                    "the adapter was trained on another base model"]
    return []


def module_shapes(base: dict) -> dict[str, tuple[int, int]] | None:
    """module -> (in_features, out_features) for LLaMA-family configs (Llama, Mistral, Qwen2...)."""
    try:
        hidden, inter, heads = base["hidden_size"], base["intermediate_size"], base["num_attention_heads"]
    except KeyError:
        return None
    head_dim = base.get("head_dim") or hidden // heads
    kv = base.get("num_key_value_heads") or heads
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
            "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def base_model_config(base_model: str) -> dict | None:
    """config.json of a local model folder, or of a Hugging Face id in the local HF cache;
    None when neither is on this machine (the shape check is then skipped)."""
    candidates = [Path(base_model) / "config.json"]
    if "/" in base_model and not Path(base_model).exists():
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
                   / "hub")
        snapshots = hub / ("models--" + base_model.replace("/", "--")) / "snapshots"
        candidates += sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return config.get("text_config", config) if isinstance(config, dict) else None
    return None

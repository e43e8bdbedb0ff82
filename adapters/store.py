"""Adapter artifact store: content-hashed, immutable version folders, published atomically.

A version folder holds PEFT's standard pair, `adapter_config.json` and
`adapter_model.safetensors`. Its name is `<prefix>-<first 12 hex of the content hash>`, so the
same weights always get the same name and different weights never share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from adapters.errors import InvalidAdapter

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def read_config(src: Path) -> dict:
    """The adapter's PEFT config, after checking the folder holds a LoRA adapter."""
    for filename in ADAPTER_FILES:
        if not (src / filename).is_file():
            raise InvalidAdapter(f"{src} has no {filename}: not a PEFT adapter folder")
    try:
        config = json.loads((src / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidAdapter(f"{src}/adapter_config.json is not valid JSON: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(f"{src} is a {config.get('peft_type')!r} adapter; only LORA is served")
    return config


def content_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for filename in ADAPTER_FILES:
        digest.update(filename.encode())
        with open(src / filename, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def publish(src: Path, store_root: Path, prefix: str = "adapter") -> tuple[str, Path, str]:
    """Copies an adapter into the store; returns (version name, its folder, content hash)."""
    read_config(src)
    sha = content_hash(src)
    name = f"{prefix}-{sha[:12]}"
    target = store_root / name
    if (target / ADAPTER_FILES[0]).exists():
        return name, target, sha
    store_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store_root, prefix=".publishing-"))
    try:
        for filename in ADAPTER_FILES:
            shutil.copyfile(src / filename, tmp / filename)
            with open(tmp / filename, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, target)  # readers see the whole version or none of it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / ADAPTER_FILES[0]).exists():
            raise
    return name, target, sha

"""Adapter artifact store: content-hashed, immutable version folders, published atomically.

A version folder holds PEFT's standard pair, `adapter_config.json` and
`adapter_model.safetensors`. Its name is `<prefix>-<first 12 hex of the content hash>`, so the
same weights always get the same name and different weights never share one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def content_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for filename in ADAPTER_FILES:
        digest.update(filename.encode())
        with open(src / filename, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def publish(src: Path, store_root: Path, prefix: str = "adapter") -> tuple[str, Path, str]:
    """Copies an adapter (checked by adapters/integrity.py first) into the store; returns
    (version name, its folder, content hash)."""
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

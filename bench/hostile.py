"""A hostile client beside normal users: does it cost them anything?

    python bench/hostile.py [--phase-s 20] [--users 4] [--random-key-rps 500] [--rounds 3]

Processes: `loraloop serve` on PostgreSQL (a scratch database on 127.0.0.1:5432) in front of
the stub upstream (bench/stub_upstream.py), so what is measured is the gateway, not a model.
Normal users: --users threads, each in a loop: a chat completion on `default` with its own
user id, then a thumb on it. Each round runs them alone for --phase-s seconds (the
baseline), then again beside a hostile client that at once

- sends random well-formed API keys at --random-key-rps (pre-auth load),
- sends completions and ratings with lone surrogates, NaN, deep nesting (poison input),
- rates its own answers under 50 invented users each (rating stuffing).

Reported: normal users' latency p50/p99 alone and beside the hostile client (the ratio is
the figure: target <= 2x), failed normal requests, acknowledged ratings missing from the
database (target 0), normal answers with no interaction row after the run (a stalled log
would leave all of them), and the votes the stuffed answers count for (target: one each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
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

    def __init__(self, key: str, users: int):
        self.key, self.users = key, users
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


async def hostile(key: str, seconds: float, rps: float) -> dict[str, int]:
    """The hostile client, all three attacks at once; returns what it got back by status."""
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

        async def random_keys() -> None:
            interval, pending = 1.0 / rps, set()
            next_at = time.monotonic()
            while time.monotonic() < stop:
                headers = {"authorization": f"Bearer ll-{secrets.token_urlsafe(32)}"}
                task = asyncio.create_task(count(http.post("/v1/chat/completions", headers=headers, json={
                    "model": "default", "messages": [{"role": "user", "content": "hi"}]})))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*pending)

        async def poison_and_stuffing() -> None:
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            n = 0
            while time.monotonic() < stop:
                n += 1
                path = "/v1/feedback" if b'"rating"' in POISON[n % len(POISON)] else "/v1/chat/completions"
                await count(http.post(path, content=POISON[n % len(POISON)], headers=headers))
                resp = await http.post("/v1/chat/completions", headers=headers, json={
                    "model": "default", "user": "mark", "messages": [{"role": "user", "content": f"mine {n}"}]})
                if resp.status_code == 200:
                    answer = resp.headers["x-request-id"]
                    stuffed.append(answer)
                    await asyncio.gather(*(count(http.post("/v1/feedback", headers=headers, json={
                        "id": answer, "rating": "up", "user": f"sock-{s}"})) for s in range(50)))

        await asyncio.gather(random_keys(), poison_and_stuffing())
    statuses["stuffed_answers"] = len(stuffed)
    hostile.stuffed = stuffed  # type: ignore[attr-defined]
    return statuses


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
    parser.add_argument("--random-key-rps", type=float, default=500)
    parser.add_argument("--rounds", type=int, default=3)
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
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(STUB_PORT)])
    gateway = None
    try:
        key = cli(env, "keys", "create", "--name", "normal", "--scope", "app")["key"]
        bad_key = cli(env, "keys", "create", "--name", "hostile", "--scope", "app")["key"]
        gateway = start_serve(env, GATEWAY_PORT, data / "gateway.log", timeout=60)
        rows = []
        all_ack, all_answered, all_stuffed = [], [], []
        for round_ in range(args.rounds):
            alone = Normal(key, args.users)
            alone.run(args.phase_s)
            beside = Normal(key, args.users)
            attack: dict = {}
            thread = threading.Thread(target=lambda into=attack: into.update(
                asyncio.run(hostile(bad_key, args.phase_s, args.random_key_rps))))
            thread.start()
            beside.run(args.phase_s)
            thread.join()
            all_ack += alone.acknowledged + beside.acknowledged
            all_answered += alone.answered + beside.answered
            all_stuffed += hostile.stuffed  # type: ignore[attr-defined]
            sent = sum(v for k, v in attack.items() if k != "stuffed_answers")
            rows.append({"round": round_ + 1, "p50_alone": percentile(alone.latencies, 0.5),
                         "p99_alone": percentile(alone.latencies, 0.99),
                         "p50_beside": percentile(beside.latencies, 0.5),
                         "p99_beside": percentile(beside.latencies, 0.99),
                         "normal_failed": alone.failed + beside.failed, "hostile_rps": sent / args.phase_s,
                         "hostile_statuses": {k: v for k, v in attack.items() if k != "stuffed_answers"}})
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

    print(f"hostile client beside {args.users} normal users, {args.phase_s:g} s per phase, {args.rounds} rounds")
    print(f"{'round':>5} {'p50 alone':>10} {'p99 alone':>10} {'p50 beside':>11} {'p99 beside':>11} "
          f"{'p99 ratio':>9} {'normal failed':>13} {'hostile req/s':>13}")
    for r in rows:
        print(f"{r['round']:>5} {r['p50_alone'] * 1000:>8.1f}ms {r['p99_alone'] * 1000:>8.1f}ms "
              f"{r['p50_beside'] * 1000:>9.1f}ms {r['p99_beside'] * 1000:>9.1f}ms "
              f"{r['p99_beside'] / r['p99_alone']:>9.2f} {r['normal_failed']:>13} {r['hostile_rps']:>13.0f}")
    ratios = [r["p99_beside"] / r["p99_alone"] for r in rows]
    print(f"median p99 ratio {statistics.median(ratios):.2f}; hostile statuses (last round) "
          f"{rows[-1]['hostile_statuses']}")
    print(f"acknowledged ratings {len(all_ack)}, lost {checks['ratings_lost']}; normal answers not logged "
          f"{checks['answers_not_logged']}; a fresh answer rated afterwards: {fresh}")
    print(f"stuffing: {checks['stuffed_answers']} answers, {checks['stuffed_rows']} rating rows stored, "
          f"{checks['stuffed_votes']} votes counted")


if __name__ == "__main__":
    main()

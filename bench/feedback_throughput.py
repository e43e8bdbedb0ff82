"""Acknowledged (durably committed) ratings per second through `POST /v1/feedback`.

    python bench/feedback_throughput.py [--rounds 3] [--seconds 10]

`loraloop serve` in front of the stub upstream, on SQLite (WAL, synchronous=FULL) and on the
local PostgreSQL; 200 completions are served, then wrk (64 connections, core 1) rates them
as different users; the gateway runs on core 0. Every 2xx counted here was committed before
it was sent. Median of rounds. Afterwards the store is checked to hold a rating for every
(answer, user) that was rated.
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
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import PY, ROOT, start, wait_up  # noqa: E402

POSTGRES = os.environ.get("LORALOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def lua(ids: list[str], key: str) -> str:
    return (
        f'local ids = {{{", ".join(json.dumps(i) for i in ids)}}}\n'
        'local n = 0\n'
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        'request = function()\n'
        '  n = n + 1\n'
        '  local body = string.format(\'{"id": "%s", "rating": %d, "user": "u%d"}\', '
        'ids[n % #ids + 1], (n % 3 == 0) and -1 or 1, n % 1000)\n'
        '  return wrk.format(nil, nil, nil, body)\n'
        'end\n')


def run(db_url: str, data: Path, rounds: int, seconds: int) -> tuple[float, int]:
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_DATABASE_URL": db_url,
           "LORALOOP_UPSTREAMS": "http://127.0.0.1:9121", "LORALOOP_PORT": "9123", "PYTHONPATH": str(ROOT)}
    key = json.loads(subprocess.run([PY, "-m", "gateway.cli", "keys", "create", "--name", "bench"], env=env,
                                    cwd=ROOT, capture_output=True, text=True, check=True).stdout)["key"]
    gateway = start([PY, "-m", "gateway.cli", "serve"], env)
    try:
        url, headers = "http://127.0.0.1:9123", {"Authorization": f"Bearer {key}"}
        wait_up(url, "/ready")
        with httpx.Client(headers=headers) as client:
            ids = [client.post(f"{url}/v1/chat/completions", json={
                "model": "stub", "messages": [{"role": "user", "content": f"q{i}"}]}).headers["x-request-id"]
                for i in range(200)]
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(lua(ids, key))
        rates = []
        for _ in range(rounds):
            out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script),
                                  f"{url}/v1/feedback"], capture_output=True, text=True, check=True).stdout
            if re.search(r"Non-2xx or 3xx responses: (\d+)", out) or "Socket errors" in out:
                raise RuntimeError(f"failed requests:\n{out}")
            rates.append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))  # type: ignore[union-attr]
    finally:
        gateway.terminate()
        gateway.wait(30)
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = conn.execute(text("select count(*) from feedback")).scalar_one()
    engine.dispose()
    return statistics.median(rates), stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    stub = start([PY, "bench/stub_upstream.py", "9121"])
    try:
        wait_up("http://127.0.0.1:9121")
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_rate, sqlite_rows = run(f"sqlite:///{tmp}/loraloop.db", Path(tmp) / "a", args.rounds, args.seconds)
            import psycopg

            name = f"loraloop_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(POSTGRES, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
                try:
                    pg_url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
                    pg_rate, pg_rows = run(pg_url.replace("postgresql://", "postgresql+psycopg://"),
                                           Path(tmp) / "b", args.rounds, args.seconds)
                finally:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        stub.terminate()
    print(f"acknowledged ratings/s, 64 connections, median of {args.rounds} x {args.seconds} s "
          "(gateway on core 0, wrk on core 1)")
    print(f"SQLite (WAL, synchronous=FULL): {sqlite_rate:8.0f}/s   distinct ratings stored: {sqlite_rows}")
    print(f"PostgreSQL (local, fsync on):   {pg_rate:8.0f}/s   distinct ratings stored: {pg_rows}")


if __name__ == "__main__":
    main()

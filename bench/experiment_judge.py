"""The experiment judge at scale: one `judge_all` round, how long it holds the alias lock
(SQLite: the database write lock) and how long a writer beside it waits, before and after
counting moved out of the lock and interactions got an index on (requested_model, created_at).

    python bench/experiment_judge.py [--rated 300000] [--rounds 5] [--databases sqlite,postgresql]

Each layout gets a fresh database (bench/data_scale.py's) with --rated rated answers since
the experiment started (2% stuffed with 10 ratings by invented users, a tenth more answers
nobody rated): `alias`, all of them on the experiment's alias, half per arm; `mixed`, a
tenth on it, the rest on nine other aliases. "before" is the judge as it was (lock, then
count) without the index; "after" is adapters.experiments.judge_all with it. The policy
never decides, so every round does the same work. Beside each round a thread writes one
interaction row every 5 ms (the interaction log's write); its slowest write is reported.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from data_scale import fresh_database, insert_rows  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402

from adapters import experiments, registry  # noqa: E402
from adapters.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from adapters.schema import AdapterState, AdapterVersion, Alias, Experiment, Interaction  # noqa: E402

POLICY = experiments.Policy(min_ratings=10**9, auto_start=False)  # never decides: every round the same
INDEX = "ix_interactions_requested_model_created_at"
BATCH = 10_000


def fill(url: str, rated: int, layout: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    started = datetime.now(UTC) - timedelta(days=3)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        for name in ("v-champion", "v-canary", "v-other"):
            session.add(AdapterVersion(name=name, base_model="base", path="/x", sha256="0" * 64,
                                       state=AdapterState.canary if name == "v-canary" else AdapterState.champion))
        session.flush()
        for alias in ["default", *(f"other-{i}" for i in range(9))]:
            session.merge(Alias(name=alias, champion="v-champion" if alias == "default" else "v-other"))
        session.flush()
        session.add(Experiment(alias="default", champion="v-champion", canary="v-canary", canary_share=0.5,
                               status="running", started_at=started, max_hours=10**6))
    rng = random.Random(0)
    served = 0
    with engine.begin() as conn:
        while served < rated * 1.1:
            interactions, feedback = [], []
            for _ in range(BATCH):
                served += 1
                mine = layout == "alias" or rng.random() < 0.1
                arm = rng.choice(("champion", "canary")) if mine else "champion"
                row = {"id": f"chatcmpl-{served}", "key_id": 1, "tenant": "default", "end_user": f"u{served % 2000}",
                       "requested_model": "default" if mine else f"other-{rng.randrange(9)}",
                       "adapter_version": f"v-{arm}" if mine else "v-other", "arm": arm, "kind": "chat",
                       "prompt": None, "response": "an answer", "finish_reason": "stop", "status": 200,
                       "prompt_tokens": 40, "completion_tokens": 50, "latency_ms": 100 + rng.random() * 50,
                       "regenerates": None, "created_at": started + timedelta(seconds=served * 0.5)}
                interactions.append(row)
                if rng.random() < 1 / 1.1:  # a tenth more answers nobody rated
                    at = row["created_at"] + timedelta(seconds=5)
                    users = [row["end_user"]] + ([f"sock-{s}" for s in range(10)] if rng.random() < 0.02 else [])
                    feedback += [{"interaction_id": row["id"], "end_user": u, "rating": rng.choice((1, -1)),
                                  "comment": None, "created_at": at, "updated_at": at} for u in users]
            insert_rows(conn, interactions, feedback)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # what autovacuum does soon after a load
    engine.dispose()


def judge_before(sessions, policy):  # type: ignore[no-untyped-def]
    """judge_all's round as it was: the alias locked, then both arms counted under the lock."""
    with sessions.begin() as session:
        registry.lock_alias(session, "default")
        experiment = experiments.current(session, "default")
        decision, why, evidence = experiments.judge(experiment, experiments.arm_numbers(session, experiment),
                                                    policy, datetime.now(UTC))
        experiment.stats = evidence
        return [("default", decision, why)]


def writer(engine, tag: str, stop: threading.Event, slowest: list[float]) -> None:  # type: ignore[no-untyped-def]
    """The interaction log's write, one row every 5 ms until `stop`; the slowest in slowest[0]."""
    n = 0
    while not stop.is_set():
        n += 1
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(insert(Interaction), [{
                "id": f"live-{tag}-{n}", "tenant": "default", "end_user": "live", "requested_model": "other-0",
                "arm": "champion", "kind": "chat", "status": 200, "latency_ms": 1.0, "created_at": datetime.now(UTC)}])
        slowest[0] = max(slowest[0], time.perf_counter() - began)
        time.sleep(0.005)


def measure(url: str, variant: str, rounds: int) -> dict:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX IF EXISTS {INDEX}"))
        if variant == "after":
            conn.execute(text(f"CREATE INDEX {INDEX} ON interactions (requested_model, created_at)"))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE interactions"))
    sessions = make_sessionmaker(engine)
    held: list[float] = []
    locked_at: list[float] = []
    lock_alias = registry.lock_alias

    def timed_lock(*args, **kwargs):  # type: ignore[no-untyped-def]
        locked_at.append(time.perf_counter())
        return lock_alias(*args, **kwargs)

    @event.listens_for(sessions, "after_commit")
    def _committed(_session) -> None:  # type: ignore[no-untyped-def]
        if locked_at:
            held.append(time.perf_counter() - locked_at.pop())

    judge = judge_before if variant == "before" else experiments.judge_all
    registry.lock_alias = timed_lock
    seconds, waits = [], []
    try:
        judge(sessions, POLICY)  # warm: caches, connections
        held.clear()
        for r in range(rounds):
            stop, slowest = threading.Event(), [0.0]
            thread = threading.Thread(target=writer, args=(engine, f"{variant}-{r}", stop, slowest))
            thread.start()
            time.sleep(0.05)
            began = time.perf_counter()
            [(_, decision, _)] = judge(sessions, POLICY)
            seconds.append(time.perf_counter() - began)
            time.sleep(0.05)
            stop.set()
            thread.join()
            waits.append(slowest[0])
            assert decision == "continue", decision
    finally:
        registry.lock_alias = lock_alias
    with sessions() as session:
        numbers = experiments.arm_numbers(session, experiments.current(session, "default"))
    engine.dispose()
    return {"variant": variant, "round_s": statistics.median(seconds), "lock_held_s": statistics.median(held),
            "writer_max_wait_s": statistics.median(waits),
            "ratings": {arm: n.ratings for arm, n in numbers.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rated", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--layouts", default="alias,mixed")
    args = parser.parse_args()
    for kind in args.databases.split(","):
        for layout in args.layouts.split(","):
            with tempfile.TemporaryDirectory(prefix="loraloop-judge-") as tmp:
                url, cleanup = fresh_database(kind, Path(tmp))
                try:
                    began = time.perf_counter()
                    fill(url, args.rated, layout)
                    filled = time.perf_counter() - began
                    for variant in ("before", "after"):
                        result = measure(url, variant, args.rounds)
                        print(json.dumps({"database": kind, "layout": layout, "rated": args.rated,
                                          "fill_s": round(filled, 1), **result}), flush=True)
                finally:
                    cleanup()  # type: ignore[operator]


if __name__ == "__main__":
    main()

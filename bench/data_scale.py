"""Training data at scale: `loraloop data report` and `export --format dpo` time and peak
memory against the number of rated answers, on SQLite and PostgreSQL, and one scheduler
tick's checks (declared segments due, the learned-segment pass, each alias's new ratings).

    python bench/data_scale.py [--sizes 10000,100000,1000000] [--runs 3] [--databases sqlite,postgresql]

Each size gets a fresh database (SQLite: a file in a temporary folder; PostgreSQL: a
database of its own, created and dropped here, nothing else touched) filled with N rated
answers the way production fills it: ~25% of prompts have 2-4 answers (so same-prompt pairs
exist), some disliked answers were regenerated and the regeneration liked, 2,000 end users,
a tenth more interactions nobody rated, and 2% of answers stuffed with 10 ratings by invented
users (stored, never counted: one vote per answer). Filled with Core executemany in batches
of 10,000 (COPY on PostgreSQL). Each measured step runs as its own `python -m trainer.data`
process under /usr/bin/time, which gives its peak RSS. Median of --runs runs,
one run from 1,000,000 rated answers up. Size 0 is the fixed cost: interpreter, imports,
migrations check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sqlalchemy import insert  # noqa: E402

from adapters.db import make_engine, upgrade  # noqa: E402
from adapters.schema import Feedback, Interaction  # noqa: E402

POSTGRES = os.environ.get("LORALOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 10_000
USERS = 2_000
TEXT = ("the order ships tomorrow your table is booked for two at eight we could not find that "
        "account please try again later here is a summary of the document you sent")
WORDS = TEXT.split(" ")
SYSTEM = {"role": "system", "content": "You are a helpful assistant for a travel and shopping app. Be brief."}


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def rows(n: int, seed: int = 0, stuffing: float = 0.02) -> Iterator[tuple[list[dict], list[dict]]]:
    """(interactions, feedback) in batches of about BATCH, n rated answers in all."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=30)
    interactions: list[dict] = []
    feedback: list[dict] = []
    served = rated = prompt = 0

    def serve(messages: list[dict], user: str, regenerates: str | None) -> str:
        nonlocal served
        served += 1
        answer_id = f"chatcmpl-{served}"
        interactions.append({
            "id": answer_id, "key_id": 1, "tenant": "default", "end_user": user, "requested_model": "default",
            "adapter_version": rng.choice(("v1", "v2", "v3", None)), "arm": "champion", "kind": "chat",
            "prompt": messages, "response": f"{served}: {sentence(rng, rng.randint(20, 60))}",
            "finish_reason": "stop", "status": 200, "prompt_tokens": 40, "completion_tokens": 50,
            "latency_ms": 120.0, "regenerates": regenerates, "created_at": start + timedelta(seconds=served)})
        return answer_id

    def rate(answer_id: str, user: str, rating: int) -> None:
        at = start + timedelta(seconds=served, milliseconds=len(feedback) % 1000)
        feedback.append({"interaction_id": answer_id, "end_user": user, "rating": rating, "comment": None,
                         "created_at": at, "updated_at": at})

    while rated < n:
        prompt += 1
        user = f"user-{rng.randrange(USERS)}"
        messages = [SYSTEM, {"role": "user", "content": f"#{prompt} {sentence(rng, rng.randint(8, 30))}"}]
        answers = 1 if rng.random() < 0.75 else rng.randint(2, 4)
        previous = None
        for k in range(min(answers, n - rated)):
            regenerates: str | None = previous if k == 1 and rng.random() < 0.3 else None
            liked = rng.random() < (0.9 if regenerates else 0.6)
            if k == 0 and answers > 1 and rng.random() < 0.3:
                liked = False  # the answer a user regenerated: they disliked it
            previous = serve(messages, user, regenerates)
            rated += 1
            # most answers are rated by their own user; some only by someone else (a reviewer)
            rate(previous, user if rng.random() < 0.9 else f"reviewer-{rng.randrange(50)}", 1 if liked else -1)
            if rng.random() < stuffing:  # one client, ten invented users, all against it
                for s in range(10):
                    rate(previous, f"sock-{rng.randrange(10**6)}-{s}", -1 if liked else 1)
        if rng.random() < 0.1:
            serve(messages, user, None)  # never rated
        if len(interactions) >= BATCH:
            yield interactions, feedback
            interactions, feedback = [], []
    if interactions:
        yield interactions, feedback


def fill(db_url: str, n: int, seed: int = 0, stuffing: float = 0.02) -> int:
    """A fresh database with n rated answers; returns the number of feedback rows."""
    engine = make_engine(db_url)
    upgrade(engine)
    count = 0
    with engine.begin() as conn:
        for interactions, feedback in rows(n, seed, stuffing):
            insert_rows(conn, interactions, feedback)
            count += len(feedback)
    engine.dispose()
    return count


def insert_rows(conn, interactions: list[dict], feedback: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """Interaction and feedback rows, fast: COPY on PostgreSQL, executemany on SQLite."""
    if conn.dialect.name == "postgresql":
        _copy(conn, "interactions", interactions, json_columns={"prompt"})
        _copy(conn, "feedback", feedback)
    else:
        conn.execute(insert(Interaction), interactions)
        conn.execute(insert(Feedback), feedback)


def _copy(conn, table: str, batch: list[dict], json_columns: frozenset[str] | set[str] = frozenset()) -> None:  # type: ignore[no-untyped-def]
    """COPY a batch into a PostgreSQL table (several times faster than INSERT)."""
    columns = list(batch[0])
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in batch:
            copy.write_row([json.dumps(row[c]) if c in json_columns else row[c] for c in columns])


# One scheduler tick's checks, without training: declared segments due, the learned-segment
# pass (reads the newest 20,000 self-rated answers, looks for a split), each alias's new ratings.
TICK = """
import json, sys, time
from adapters import segments
from adapters.db import make_engine, make_sessionmaker
from trainer import segment_learning
from trainer.scheduler import due_alias, train_config, SchedulerSettings
settings = SchedulerSettings()
sessions = make_sessionmaker(make_engine(settings.db_url))
steps = {}
for name, step in (("segments", lambda: segments.ensure_segments(sessions, 50)),
                   ("learn", lambda: segment_learning.learn(sessions, "default")),
                   ("due", lambda: due_alias(sessions, 50, train_config(settings)))):
    began = time.perf_counter()
    step()
    steps[name] = round(time.perf_counter() - began, 2)
print(json.dumps({"steps": steps}))
"""


def measured(args: list[str], env: dict, work: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one `python -m trainer.data ...` process (or,
    with args ["-c", code], of that code).

    Its peak RSS is /usr/bin/time's: Linux starts a child's peak at its parent's RSS when it
    forks, so wait4() from this (large, after filling) process would report ours, not its."""
    rusage = work / "rusage"
    began = time.perf_counter()
    command = args if args[0] == "-c" else ["-m", "trainer.data", *args]
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rusage), sys.executable, *command],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(f"trainer.data {args[0]} failed: {done.stderr[-2000:]}")
    return seconds, int(rusage.read_text().split()[-1]) / 1024, done.stdout


def bench(db_url: str, n: int, runs: int, work: Path) -> dict:
    began = time.perf_counter()
    feedback = fill(db_url, n)
    result: dict = {"n": n, "feedback_rows": feedback, "fill_s": time.perf_counter() - began}
    env = {**os.environ, "LORALOOP_DATABASE_URL": db_url, "LORALOOP_DATA_DIR": str(work), "PYTHONPATH": str(ROOT)}
    out = work / "pairs.jsonl"
    # the tick first: the learned-segment pass must not find what export or report left behind
    for name, args in (("tick", ["-c", TICK]), ("report", ["report"]),
                       ("export", ["export", "--format", "dpo", "--out", str(out)])):
        samples = [measured(args, env, work) for _ in range(runs)]
        result[f"{name}_s"] = statistics.median(s for s, _, _ in samples)
        result[f"{name}_mib"] = statistics.median(m for _, m, _ in samples)
        if name == "tick":
            result["tick_steps"] = json.loads(samples[0][2])["steps"]
        if name == "report":
            summary = json.loads(samples[0][2])
            assert summary["rated_answers"] == n, summary
            result["pairs"] = summary["dpo_pairs"]["train"] + summary["dpo_pairs"]["heldout"]
            result["regeneration_pairs"] = summary["pair_sources"].get("regeneration", 0)
            trained = summary["dpo_pairs"]["train"]
    assert sum(1 for _ in out.open()) == trained, "export and report disagree"
    return result


def fresh_database(kind: str, work: Path) -> tuple[str, Callable[[], None]]:
    """(url, cleanup) of an empty database of `kind`."""
    if kind == "sqlite":
        path = work / f"bench-{uuid.uuid4().hex[:8]}.db"

        def remove() -> None:  # with its -wal and -shm files
            for p in work.glob(f"{path.name}*"):
                p.unlink()

        return f"sqlite:///{path}", remove
    import psycopg

    name = f"loraloop_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = POSTGRES.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,10000,100000,1000000")
    parser.add_argument("--runs", type=int, default=3, help="runs per size below 1,000,000 (median)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    results = []
    for kind in args.databases.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="loraloop-data-scale-") as tmp:
                url, cleanup = fresh_database(kind, Path(tmp))
                try:
                    result = {"database": kind, **bench(url, n, args.runs if n < 1_000_000 else 1, Path(tmp))}
                finally:
                    cleanup()
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    print("| database | rated answers | feedback rows | fill (s) | report (s) | report peak RSS (MiB) "
          "| export dpo (s) | export peak RSS (MiB) | pairs (regeneration) | scheduler tick (s): segments, "
          "learn, due | tick peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        t = r["tick_steps"]
        print(f"| {r['database']} | {r['n']:,} | {r['feedback_rows']:,} | {r['fill_s']:.1f} | {r['report_s']:.1f} "
              f"| {r['report_mib']:.0f} | {r['export_s']:.1f} | {r['export_mib']:.0f} "
              f"| {r['pairs']:,} ({r['regeneration_pairs']:,}) | {t['segments']}, {t['learn']}, {t['due']} "
              f"| {r['tick_mib']:.0f} |")


if __name__ == "__main__":
    main()

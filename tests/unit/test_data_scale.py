"""Training data from more rated answers than one statement may bind parameters (65,535 on
PostgreSQL): the old code bound every rated id into one IN list and failed at ~80,000 rated
answers, which stopped every scheduled training run. The regression test, in the normal suite."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert

from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.schema import Feedback, Interaction, utcnow
from trainer.data import DataConfig, build, report

ANSWERS = 70_000  # over 65,535
BATCH = 10_000


def fill(db_url: str) -> None:
    """ANSWERS rated answers: pairs of a liked and a disliked answer to one prompt, 1,000 users."""
    engine = make_engine(db_url)
    upgrade(engine)
    start = utcnow() - timedelta(days=1)
    with engine.begin() as conn:  # Core executemany: seconds, where the ORM would take minutes
        for first in range(0, ANSWERS, BATCH):
            ids = range(first, min(first + BATCH, ANSWERS))
            conn.execute(insert(Interaction), [
                {"id": f"c{n}", "key_id": 1, "tenant": "default", "end_user": f"user{n % 1000}",
                 "requested_model": "default", "adapter_version": "v1", "arm": "champion", "kind": "chat",
                 "prompt": [{"role": "user", "content": f"question {n // 2}"}],
                 "response": f"{'good' if n % 2 == 0 else 'bad'} answer {n}", "finish_reason": "stop",
                 "status": 200, "prompt_tokens": 3, "completion_tokens": 5, "latency_ms": 1.0,
                 "regenerates": None, "created_at": start + timedelta(milliseconds=n)} for n in ids])
            conn.execute(insert(Feedback), [
                {"interaction_id": f"c{n}", "end_user": f"user{n % 1000}", "rating": 1 if n % 2 == 0 else -1,
                 "comment": None, "created_at": start, "updated_at": start} for n in ids])
    engine.dispose()


def test_training_data_from_more_rated_answers_than_a_statement_can_bind(db_url: str) -> None:
    fill(db_url)
    engine = make_engine(db_url)
    cfg = DataConfig(heldout_fraction=0.1)
    with make_sessionmaker(engine)() as session:
        summary = report(session, cfg)
        kto = build(session, "kto", DataConfig(heldout_fraction=0.0))["train"]
    engine.dispose()
    assert (summary["rated_answers"], summary["liked"], summary["disliked"]) == (ANSWERS, ANSWERS // 2, ANSWERS // 2)
    assert summary["prompts"] == ANSWERS // 2
    assert sum(summary["dpo_pairs"].values()) == ANSWERS // 2 and summary["dpo_pairs"]["heldout"] > 0
    assert summary["pairs_per_prompt"] == {"max": 1, "mean": 1.0}
    assert summary["per_adapter_version"] == {"v1": {"interactions": ANSWERS, "rated": ANSWERS,
                                                     "up": ANSWERS // 2, "down": ANSWERS // 2}}
    assert len(kto) == ANSWERS

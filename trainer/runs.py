"""Training runs as the database sees them: one at a time across every machine (a lease),
each recorded in `training_runs` (the dashboards read it), and what a killed run left
behind cleaned up by the next one.

Used by the scheduler and by one-shot `loraloop train` alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from adapters import leases
from adapters.schema import TrainingRun, utcnow

log = logging.getLogger(__name__)

LEASE = "training"


@dataclass
class RunOutcome:
    outcome: str  # busy | approved | rejected | failed
    result: object = None  # what `train` returned


def run_exclusive(sessions: sessionmaker, method: str, lease_ttl: timedelta, scratch_root: Path,
                  train: Callable[[], object]) -> RunOutcome:
    """Runs `train` unless another run holds the lease; records it either way it ends.

    `train` returns an object with `approved`, `version`, `examples` and `reasons` (a
    `trainer.train.TrainResult`); an exception is recorded as a failed run, not raised."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    if not leases.acquire(sessions, LEASE, holder, lease_ttl):
        return RunOutcome("busy")
    try:
        sweep_abandoned(sessions, scratch_root)
        with sessions.begin() as session:
            run = TrainingRun(method=method, outcome="running")
            session.add(run)
            session.flush()
            run_id = run.id
        try:
            result = train()
        except Exception as exc:  # recorded; the next run tries again
            log.exception("training run %d failed", run_id)
            _finish(sessions, run_id, "failed", None, repr(exc))
            return RunOutcome("failed")
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: recorded, then on their way
            _finish(sessions, run_id, "failed", None, repr(exc))
            raise
        outcome = "approved" if getattr(result, "approved", False) else "rejected"
        _finish(sessions, run_id, outcome, result, "; ".join(getattr(result, "reasons", []) or []))
        return RunOutcome(outcome, result)
    finally:
        leases.release(sessions, LEASE, holder)


def _finish(sessions: sessionmaker, run_id: int, outcome: str, result: object, detail: str) -> None:
    with sessions.begin() as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None
        row.outcome, row.detail, row.finished_at = outcome, detail, utcnow()
        row.version, row.examples = getattr(result, "version", None), getattr(result, "examples", None)


def sweep_abandoned(sessions: sessionmaker, scratch_root: Path) -> None:
    """Called with the lease held, so no other run is alive: a run still marked running was
    killed (its lease expired), and anything in the scratch folder is what it left."""
    with sessions.begin() as session:
        stale = session.execute(update(TrainingRun).where(TrainingRun.outcome == "running").values(
            outcome="failed", finished_at=utcnow(), detail="abandoned: the process running it died"))
        if stale.rowcount:  # type: ignore[attr-defined]
            log.warning("marked %d abandoned training run(s) failed", stale.rowcount)  # type: ignore[attr-defined]
    if scratch_root.is_dir():
        for leftover in scratch_root.iterdir():
            if "-done-" not in leftover.name:  # kept on purpose by `--no-register` runs
                shutil.rmtree(leftover, ignore_errors=True)
                log.warning("removed %s, left by a killed run", leftover)

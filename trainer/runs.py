"""Training runs as the database sees them: one at a time across every machine (a lease kept
alive by a heartbeat), each recorded in `training_runs` (the dashboards read it) with its own
scratch folder, and what a killed run left behind cleaned up by the next one.

Used by the scheduler and by one-shot `loraloop train` alike.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from adapters import leases
from adapters.schema import TrainingRun, utcnow

log = logging.getLogger(__name__)

LEASE = "training"
# Short, because the heartbeat renews it every third of it while the run trains: it bounds
# how long a run that died on another machine (a lost node, an OOM-killed pod, whose process
# this host cannot see) blocks the next one, not how long a run may take. Two renewals in a
# row may fail (a database restart) before the lease can lapse.
LEASE_TTL = timedelta(minutes=5)
SCRATCH = re.compile(r"run-(\d+)")  # scratch_root/run-<id>: whose leftovers they are


class LeaseLost(RuntimeError):
    """Another run took the training lease over: this run must not register anything."""


@dataclass
class Run:
    """The run `run_exclusive` is executing: its row, its scratch folder, and its lease."""

    id: int
    scratch: Path
    sessions: sessionmaker
    holder: str
    ttl: timedelta
    lost: threading.Event = field(default_factory=threading.Event)
    fenced: bool = False  # passed the fence: what it registered, it registered holding the lease

    def fence(self, session: Session) -> None:
        """Raises LeaseLost unless this run still holds the lease. Call it in the transaction
        that registers the run's result: that transaction then commits only while the lease is
        this run's (leases.hold), so two runs can never both register."""
        if self.lost.is_set() or not leases.hold(session, LEASE, self.holder, self.ttl):
            self.lost.set()
            raise LeaseLost(f"training run {self.id} lost the {LEASE!r} lease to another run; "
                            "its result is not registered")
        self.fenced = True


_current: ContextVar[Run | None] = ContextVar("loraloop_training_run", default=None)


def current() -> Run | None:
    """The run `run_exclusive` is executing in this context (None outside one): where `train`
    finds its scratch folder and the fence to pass before it registers anything."""
    return _current.get()


@dataclass
class RunOutcome:
    outcome: str  # busy | approved | rejected | failed
    result: object = None  # what `train` returned


def run_exclusive(sessions: sessionmaker, method: str, lease_ttl: timedelta, scratch_root: Path,
                  train: Callable[[], object], alias: str | None = None) -> RunOutcome:
    """Runs `train` unless another run holds the lease; records it either way it ends.

    While `train` runs, a heartbeat renews the lease and `current()` is the run (its scratch
    folder, `scratch_root/run-<id>`, removed afterwards, and its fence). `train` returns an
    object with `approved`, `version`, `examples` and `reasons` (a `trainer.train.TrainResult`);
    an exception is recorded as a failed run, not raised."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    if not leases.acquire(sessions, LEASE, holder, lease_ttl):
        return RunOutcome("busy")
    try:
        with _heartbeat(sessions, holder, lease_ttl) as lost:
            sweep_abandoned(sessions, scratch_root)
            with sessions.begin() as session:
                row = TrainingRun(method=method, outcome="running", alias=alias)
                session.add(row)
                session.flush()
                run = Run(row.id, scratch_root / f"run-{row.id}", sessions, holder, lease_ttl, lost)
            return _execute(run, train)
    finally:
        leases.release(sessions, LEASE, holder)


def _execute(run: Run, train: Callable[[], object]) -> RunOutcome:
    run.scratch.mkdir(parents=True, exist_ok=True)
    token = _current.set(run)
    try:
        result = train()
    except Exception as exc:  # recorded; the next run tries again
        log.exception("training run %d failed", run.id)
        _finish(run.sessions, run.id, "failed", None, repr(exc))
        return RunOutcome("failed")
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: recorded, then on their way
        _finish(run.sessions, run.id, "failed", None, repr(exc))
        raise
    finally:
        _current.reset(token)
        shutil.rmtree(run.scratch, ignore_errors=True)
    if run.lost.is_set() and not run.fenced:  # whatever it made, it must not count as this run's verdict
        _finish(run.sessions, run.id, "failed", None, "lost the training lease to another run")
        return RunOutcome("failed")
    outcome = "approved" if getattr(result, "approved", False) else "rejected"
    _finish(run.sessions, run.id, outcome, result, "; ".join(getattr(result, "reasons", []) or []))
    return RunOutcome(outcome, result)


@contextmanager
def _heartbeat(sessions: sessionmaker, holder: str, ttl: timedelta) -> Iterator[threading.Event]:
    """Renews the lease every ttl/3 until the block ends; yields an event set if it was lost."""
    lost, stop = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(ttl.total_seconds() / 3):
            try:
                renewed = leases.renew(sessions, LEASE, holder, ttl)
            except SQLAlchemyError as exc:  # the database is away: the next beat tries again
                log.warning("could not renew the training lease (%s); retrying", type(exc).__name__)
                continue
            if not renewed:
                log.error("TRAINING LEASE LOST: %s no longer holds %r (another run took it over); "
                          "this run will not register its result", holder, LEASE)
                lost.set()
                return

    thread = threading.Thread(target=beat, name="training-lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=10)  # a renewal stuck on the database must not hold the run's exit


def _finish(sessions: sessionmaker, run_id: int, outcome: str, result: object, detail: str) -> None:
    with sessions.begin() as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None
        row.outcome, row.detail, row.finished_at = outcome, detail, utcnow()
        row.version, row.examples = getattr(result, "version", None), getattr(result, "examples", None)


def sweep_abandoned(sessions: sessionmaker, scratch_root: Path) -> None:
    """Called with the lease held, and every live run renews its own: so no other run is
    alive, and a run still marked running was killed (or lost its lease); it is marked failed,
    and the scratch folders of recorded runs (`run-<id>`) are removed: every one of them is
    over. Folders it cannot attribute to a recorded run (an unrecorded `--no-register` run's
    temporary folder, or its kept `-done-` output) are not its to remove."""
    with sessions.begin() as session:
        stale = session.execute(update(TrainingRun).where(TrainingRun.outcome == "running").values(
            outcome="failed", finished_at=utcnow(), detail="abandoned: the process running it died"))
        if stale.rowcount:  # type: ignore[attr-defined]
            log.warning("marked %d abandoned training run(s) failed", stale.rowcount)  # type: ignore[attr-defined]
    if scratch_root.is_dir():
        for leftover in scratch_root.iterdir():
            if SCRATCH.fullmatch(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
                log.warning("removed %s, left by a killed run", leftover)

"""The training lease while a run trains: renewed by a heartbeat, so a run longer than the TTL
is neither swept nor joined by a second one; a run that lost it registers nothing; scratch
folders are per run and only a dead run's are removed. On SQLite and PostgreSQL, with a TTL
of about a second (training replaced by stand-ins, as in test_scheduler.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from adapters import leases
from adapters.schema import Lease, TrainingRun, utcnow
from tests.unit.test_preference_data import Store
from tests.unit.test_scheduler import add_ratings, approved, runs, settings_for
from trainer import runs as training_runs
from trainer.runs import LEASE, LeaseLost
from trainer.scheduler import run_once

TTL_S = 1.0


def short_lease(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return settings_for(db_url, tmp_path, train_lease_minutes=TTL_S / 60)


def lease_row(store: Store, live: bool = False) -> Lease | None:
    with store.session() as session:
        query = select(Lease).where(Lease.name == LEASE)
        return session.scalar(query.where(Lease.expires_at > utcnow()) if live else query)


def test_a_run_longer_than_its_ttl_keeps_the_lease_and_its_scratch(db_url: str, tmp_path: Path) -> None:
    """Before the heartbeat, a second attempt after the TTL took the lease over, marked the
    live run failed and deleted its scratch folder under it."""
    store, settings = Store(db_url), short_lease(db_url, tmp_path)
    add_ratings(store, 3)
    inside, finish = threading.Event(), threading.Event()
    seen: dict[str, Path] = {}

    def long_train() -> SimpleNamespace:
        run = training_runs.current()
        assert run is not None and run.scratch.is_dir()  # its own folder, named by its run id
        assert run.scratch.name == f"run-{run.id}"
        (run.scratch / "checkpoint-1").mkdir()
        seen["scratch"] = run.scratch
        inside.set()
        finish.wait(30)
        return approved()

    outcomes: list[str] = []
    first = threading.Thread(target=lambda: outcomes.append(run_once(settings, long_train)))
    first.start()
    assert inside.wait(30)
    time.sleep(2.5 * TTL_S)  # well past the TTL the lease was taken with
    add_ratings(store, 3)  # new data, so the second attempt really wants the lease
    assert run_once(settings, approved) == "busy"
    assert lease_row(store, live=True) is not None  # renewed: it has not expired
    assert (seen["scratch"] / "checkpoint-1").is_dir()  # the second attempt swept nothing
    assert [r.outcome for r in runs(store)] == ["running"]
    finish.set()
    first.join(30)
    assert outcomes == ["approved"]
    assert [r.outcome for r in runs(store)] == ["approved"]
    assert not seen["scratch"].exists()  # a finished run leaves no scratch
    assert lease_row(store) is None  # released


def test_a_run_that_lost_its_lease_registers_nothing(db_url: str, tmp_path: Path) -> None:
    """Another machine took the lease over (this run's renewals could not reach the database
    for longer than the TTL): the heartbeat says so loudly, the fence refuses the registering
    transaction, and the run is recorded failed without releasing the taker's lease."""
    store, settings = Store(db_url), short_lease(db_url, tmp_path)
    add_ratings(store, 3)
    registered: list[str] = []

    def train_then_register() -> SimpleNamespace:
        run = training_runs.current()
        assert run is not None
        with store.sessions.begin() as session:
            session.execute(update(Lease).where(Lease.name == LEASE).values(holder="other-host:1"))
        with pytest.raises(LeaseLost), store.sessions.begin() as session:  # before the heartbeat noticed
            run.fence(session)
            registered.append("version")
        assert run.lost.wait(5 * TTL_S)  # ...and the heartbeat notices too
        return approved()

    assert run_once(settings, train_then_register) == "failed"
    assert registered == []
    [run] = runs(store)
    assert run.outcome == "failed" and run.detail is not None and "lost the training lease" in run.detail
    lease = lease_row(store)
    assert lease is not None and lease.holder == "other-host:1"  # the taker keeps it


def test_a_run_that_loses_its_lease_after_registering_keeps_its_verdict(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), short_lease(db_url, tmp_path)
    add_ratings(store, 3)

    def register_then_lose() -> SimpleNamespace:
        run = training_runs.current()
        assert run is not None
        with store.sessions.begin() as session:
            run.fence(session)  # registered holding the lease
        with store.sessions.begin() as session:
            session.execute(update(Lease).where(Lease.name == LEASE).values(holder="other-host:1"))
        assert run.lost.wait(5 * TTL_S)
        return approved()

    assert run_once(settings, register_then_lose) == "approved"


def test_the_real_training_job_registers_only_through_the_fence(db_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.train.main, with the model work replaced: it trains in the run's scratch folder,
    and a run whose lease was taken over never reaches registry.register."""
    import trainer.train as train_module
    from adapters import registry

    store = Store(db_url)
    monkeypatch.setenv("LORALOOP_DATABASE_URL", db_url)
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(30)))
    scratches: list[Path] = []
    take_over = {"now": False}

    def fake_train(cfg, examples, base_model, out, *args):  # type: ignore[no-untyped-def]
        scratches.append(out)
        (out / "loraloop-train.json").write_text("{}")
        if take_over["now"]:
            with store.sessions.begin() as session:
                session.execute(update(Lease).where(Lease.name == LEASE).values(holder="other-host:1"))
        return 1.0, [], None

    report = SimpleNamespace(passed=True, reasons=[], to_json=lambda: "{}")
    calls: list[Path] = []

    def fake_register(session, src, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(src)
        return SimpleNamespace(name="reward-abc", path=str(src), provenance=None, eval_report=None)

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module, "judge", lambda *args: report)
    monkeypatch.setattr(registry, "register", fake_register)
    monkeypatch.setattr(registry, "transition", lambda *args, **kwargs: None)
    monkeypatch.setattr("trainer.report.write_report", lambda *args: None)
    cfg = train_module.TrainConfig(method="reward", base_model=str(tmp_path), data=str(data))

    assert train_module.run_recorded(cfg).version == "reward-abc"
    assert len(calls) == 1 and scratches[0].name.startswith("run-") and not scratches[0].exists()
    take_over["now"] = True
    with pytest.raises(SystemExit, match="training failed"):
        train_module.run_recorded(cfg)
    assert len(calls) == 1  # the second run registered nothing
    assert [r.outcome for r in runs(store)] == ["approved", "failed"]
    assert "LeaseLost" in (runs(store)[1].detail or "")


def test_a_killed_runs_scratch_is_cleaned_and_nothing_else(db_url: str, tmp_path: Path) -> None:
    """The run killed with -9 left `runs/run-<id>`; the next run removes it, and leaves folders
    it cannot attribute to a recorded run (an unrecorded run's temporary folder, kept output)."""
    store, settings = Store(db_url), short_lease(db_url, tmp_path)
    add_ratings(store, 3)
    with store.sessions.begin() as session:
        killed = TrainingRun(method="dpo", outcome="running")
        session.add(killed)
        session.flush()
        killed_id = killed.id
    assert leases.acquire(store.sessions, LEASE, "dead-host:1", timedelta(seconds=TTL_S))
    leftover = tmp_path / "runs" / f"run-{killed_id}"
    (leftover / "checkpoint-10").mkdir(parents=True)
    unrecorded = tmp_path / "runs" / "dpo-x1y2z3"  # a `--no-register` run, perhaps still going
    kept = tmp_path / "runs" / "run-done-7"  # a `--no-register` run's output, kept on purpose
    unrecorded.mkdir()
    kept.mkdir()
    time.sleep(1.2 * TTL_S)
    assert run_once(settings, approved) == "approved"
    first, second = runs(store)
    assert (first.outcome, second.outcome) == ("failed", "approved")
    assert not leftover.exists() and unrecorded.exists() and kept.exists()

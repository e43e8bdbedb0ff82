"""The training scheduler: skips when data is short, one run at a time across processes,
its job stored in the database; on SQLite and PostgreSQL. Training itself is replaced by a
stand-in here (tests/integration/test_training.py trains for real)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from adapters import leases
from adapters.schema import TrainingRun
from adapters.signals import SignalIn, write_signals
from tests.unit.test_preference_data import Store
from trainer.scheduler import LEASE, SchedulerSettings, build_scheduler, next_run, run_once


def settings_for(db_url: str, tmp_path: Path, **kw) -> SchedulerSettings:
    return SchedulerSettings(database_url=db_url, data_dir=tmp_path, train_min_new_ratings=3, **kw)


def approved() -> SimpleNamespace:
    return SimpleNamespace(version="dpo-abc", examples=3, approved=True, reasons=[])


def add_ratings(store: Store, n: int, tenant: str = "default") -> None:
    """Ratings that can train alias `default` (shared: tenant "default"'s, trainer/data.py)."""
    for i in range(n):
        store.rate(store.answer(f"q{store.n}-{i}", "text", tenant=tenant), 1, tenant=tenant)


def runs(store: Store) -> list[TrainingRun]:
    with store.session() as session:
        return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))


def test_skips_until_enough_new_feedback(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 2)
    assert run_once(settings, approved) == "not_enough_data"
    add_ratings(store, 1)
    assert run_once(settings, approved) == "approved"
    assert run_once(settings, approved) == "not_enough_data"  # nothing new since that run
    [run] = runs(store)
    assert (run.outcome, run.version, run.examples) == ("approved", "dpo-abc", 3)
    assert run.finished_at is not None


def test_ratings_that_cannot_train_the_alias_start_no_run(db_url: str, tmp_path: Path) -> None:
    """Another tenant's ratings never train the shared alias (trainer/data.py), so they are not
    new data for it: a run on them would train on nothing."""
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 5, tenant="acme")
    assert run_once(settings, approved) == "not_enough_data"
    assert runs(store) == []


def test_preferences_and_edits_count_as_new_feedback_and_scores_do_not(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    a, b, c = (store.answer("q", text, tenant="default") for text in ("one", "two", "three"))
    signals = [SignalIn(a, 0, "score", None, "default", name="accuracy", value=1.0),
               SignalIn(b, 0, "score", None, "default", name="accuracy", value=0.0),
               SignalIn(a, 0, "preference", None, "default", other_id=b)]
    with store.sessions.begin() as session:
        assert all(r.stored for r in write_signals(session, signals[:2]))
    assert run_once(settings, approved) == "not_enough_data"  # scores train nothing
    with store.sessions.begin() as session:
        write_signals(session, [signals[2], SignalIn(a, 0, "edit", None, "default", text="better"),
                                *(SignalIn(b, 0, "copied", f"bot{i}", "default") for i in range(20))])
    assert run_once(settings, approved) == "not_enough_data"  # two answers, however many users
    with store.sessions.begin() as session:
        write_signals(session, [SignalIn(c, 0, "copied", None, "default")])
    assert run_once(settings, approved) == "approved"


def test_never_two_runs_at_once(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 3)
    inside, release = threading.Event(), threading.Event()

    def slow_train() -> SimpleNamespace:
        inside.set()
        release.wait(30)
        return approved()

    outcomes: list[str] = []
    first = threading.Thread(target=lambda: outcomes.append(run_once(settings, slow_train)))
    first.start()
    assert inside.wait(30)
    assert run_once(settings, approved) == "not_enough_data"  # that run is using this data
    add_ratings(store, 3)  # new data arrives while it trains
    assert run_once(settings, approved) == "busy"  # as a second replica would see it
    release.set()
    first.join(30)
    assert outcomes == ["approved"]
    assert len(runs(store)) == 1
    assert run_once(settings, approved) == "approved"  # the newer data gets its run afterwards


def test_a_crashed_runs_lease_expires(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 3)
    assert leases.acquire(store.sessions, LEASE, "dead-host:1", timedelta(seconds=1))
    assert run_once(settings, approved) == "busy"
    time.sleep(1.2)
    assert run_once(settings, approved) == "approved"


def test_a_killed_local_runs_lease_is_taken_over_at_once(db_url: str, tmp_path: Path) -> None:
    """A run killed with -9 on this host holds a 3-hour lease; the next run sees its process
    is gone and does not wait. A live holder (this very process) keeps it."""
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    assert leases.acquire(store.sessions, LEASE, f"{host}:{dead.pid}", timedelta(hours=3))
    assert run_once(settings, approved) == "approved"
    add_ratings(store, 3)
    assert leases.acquire(store.sessions, LEASE, f"{host}:{os.getpid()}", timedelta(hours=3))
    assert run_once(settings, approved) == "busy"


def test_a_failing_run_is_recorded_and_frees_the_lease(db_url: str, tmp_path: Path) -> None:
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 3)

    def broken() -> None:
        raise RuntimeError("out of memory")

    assert run_once(settings, broken) == "failed"
    assert runs(store)[0].detail == "RuntimeError('out of memory')"
    assert run_once(settings, approved) == "approved"  # the data still counts as new


@pytest.mark.parametrize("trigger", [{"train_interval_minutes": 30}, {"train_cron": "0 3 * * *"}])
def test_the_schedule_is_stored_in_the_database(db_url: str, tmp_path: Path, trigger: dict) -> None:
    Store(db_url)  # creates the schema
    settings = settings_for(db_url, tmp_path, **trigger)
    scheduler = build_scheduler(settings, blocking=False)
    scheduler.start(paused=True)
    planned = scheduler.get_job("loraloop-train").next_run_time
    scheduler.shutdown()
    assert next_run(settings) == planned  # a restarted process finds it there
    again = build_scheduler(settings, blocking=False)  # a restart: replaces, never duplicates
    again.start(paused=True)
    assert [j.id for j in again.get_jobs()] == ["loraloop-train"]
    again.shutdown()


def test_the_next_run_cleans_up_after_a_killed_one(db_url: str, tmp_path: Path) -> None:
    """kill -9 mid-run leaves a `running` row, an expiring lease and a scratch folder; the
    next run to take the lease marks the row failed and removes the folder."""
    store, settings = Store(db_url), settings_for(db_url, tmp_path)
    add_ratings(store, 3)
    with store.sessions.begin() as session:
        killed_run = TrainingRun(method="dpo", outcome="running")
        session.add(killed_run)
        session.flush()
        leftover = tmp_path / "runs" / f"run-{killed_run.id}"  # each run's scratch is named by its id
    assert leases.acquire(store.sessions, LEASE, "dead-host:1", timedelta(seconds=1))
    (leftover / "checkpoint-10").mkdir(parents=True)
    kept = tmp_path / "runs" / "run-done-x"  # a `--no-register` run's output, kept on purpose
    kept.mkdir()
    time.sleep(1.2)
    assert run_once(settings, approved) == "approved"
    killed, new = runs(store)
    assert (killed.outcome, new.outcome) == ("failed", "approved")
    assert killed.detail is not None and "died" in killed.detail and killed.finished_at is not None
    assert not leftover.exists() and kept.exists()


def test_one_shot_runs_are_recorded_too(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.train as train_module

    store = Store(db_url)
    monkeypatch.setenv("LORALOOP_DATABASE_URL", db_url)
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(train_module, "main", lambda cfg: train_module.TrainResult(
        tmp_path, "kto-abc", 12, 1.0, [], False, ["win rate 0.20 < 0.35"]))
    result = train_module.run_recorded(train_module.TrainConfig(method="kto"))
    assert result.version == "kto-abc"
    (run,) = runs(store)
    assert (run.method, run.outcome, run.version, run.detail) == ("kto", "rejected", "kto-abc", "win rate 0.20 < 0.35")
    assert leases.acquire(store.sessions, LEASE, "someone-else:1", timedelta(hours=1))  # released
    with pytest.raises(SystemExit, match="another training run"):
        train_module.run_recorded(train_module.TrainConfig(method="kto"))


def test_an_operator_can_schedule_any_method_with_its_options(tmp_path: Path) -> None:
    from trainer.scheduler import train_config

    cfg = train_config(SchedulerSettings(data_dir=tmp_path, train_method="sft", train_steps=40,
                                         train_args="--eval-every 10 --lora-r 8"))
    assert (cfg.method, cfg.steps, cfg.eval_every, cfg.lora_r) == ("sft", 40, 10, 8)
    with pytest.raises(ValueError, match="use --method grpo"):
        train_config(SchedulerSettings(data_dir=tmp_path, train_method="ppo"))

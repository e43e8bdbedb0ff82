"""Scheduled training: an APScheduler job, stored in the project's database, that trains a
new candidate when enough new feedback has arrived.

The alias of the runs (`--alias` in LORALOOP_TRAIN_ARGS, default `default`) is trained, and
so is every segment's alias (adapters/segments.py; each tick first creates those that
declared segments have earned, then looks for groups of users whose thumbs disagree and
places users in learned segments: trainer/segment_learning.py), each on its own feedback
(trainer/data.py `for_alias`). One run per tick, as the lease allows one at a time: of those with at least
LORALOOP_TRAIN_MIN_NEW_RATINGS new ratings, the one whose last run is oldest, so a segment
whose users rate a lot cannot keep the trainer from the others. A tenant's own alias is
trained too, on that tenant's feedback, when it is the tenant's only one. (Other aliases
train on the same feedback as one already trained, trainer/data.py, so training them too
would repeat its runs: `loraloop train --alias` trains one by hand.)

    python -m trainer.scheduler            # run the scheduler (blocking)
    python -m trainer.scheduler --once     # one check-and-maybe-train, then exit

Settings (environment): LORALOOP_TRAIN_INTERVAL_MINUTES (default 60) or LORALOOP_TRAIN_CRON
("0 3 * * *"), LORALOOP_TRAIN_MIN_NEW_RATINGS (default 50), LORALOOP_TRAIN_METHOD (auto:
chosen from the data at each run, trainer/method_choice.py; or any method of `loraloop
train`), LORALOOP_TRAIN_ARGS (more `loraloop train` options, e.g. "--qlora").
The job lives in the database's `apscheduler_jobs` table, so its schedule survives restarts;
a lease in the database makes sure only one run happens at a time across every replica.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapters import segments
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.schema import Alias, Feedback, Interaction, Lease, Signal, SignalKind, TrainingRun, as_utc, utcnow
from adapters.settings import StoreSettings
from trainer import segment_learning
from trainer.data import DataConfig, for_alias, scope_filters
from trainer.runs import LEASE, LEASE_TTL, run_exclusive
from trainer.segment_learning import LearnConfig
from trainer.train_config import TrainConfig

log = logging.getLogger(__name__)

JOB_ID = "loraloop-train"
DEFAULT_ALIAS = TrainConfig.alias  # what runs trained before they recorded their alias
__all__ = ["LEASE", "SchedulerSettings", "build_scheduler", "next_run", "run_once"]


class SchedulerSettings(StoreSettings):
    train_interval_minutes: float = Field(60, description="Minutes between checks for new data.")
    train_cron: str = Field("", description="Crontab instead of an interval, e.g. '0 3 * * *'.")
    train_min_new_ratings: int = Field(50, description="New ratings needed since the last run.")
    train_method: str = Field("auto", description=(
        "Any `loraloop train --method`: auto (chosen from the data), dpo, kto, sft, best-of-n, reward, grpo."))
    train_steps: int = Field(100, description="Optimizer steps per run.")
    train_args: str = Field("", description="More `loraloop train` options for every run, e.g. '--qlora --lora-r 8'.")
    train_lease_minutes: float = Field(LEASE_TTL.total_seconds() / 60, description=(
        "A run renews its lease every third of this while it trains; one that stopped renewing "
        "this long ago (a dead node) is taken over."))
    segment_min_ratings: int = Field(50, ge=1, description=(
        "Rated answers of users who declared a segment before it gets an alias of its own (and is trained)."))
    learn_segments: bool = Field(True, description=(
        "Look for groups of the trained alias's users whose thumbs disagree, and give each its own segment "
        "(trainer/segment_learning.py); kept only when it predicts their unseen thumbs significantly better."))


def new_ratings_since_last_run(session: Session, alias: str, cross_tenant: bool, live_run: bool) -> int:
    """Ratings and other feedback that trains `alias` (trainer/data.py `for_alias`) since its
    last run that used them: one that finished with a verdict, or one in progress (`live_run`: someone holds the
    lease; a run still marked running while nobody does was killed and used nothing). Runs
    from before runs recorded their alias count for the default alias."""
    used = TrainingRun.outcome.in_(["approved", "rejected", "running"] if live_run else ["approved", "rejected"])
    mine = TrainingRun.alias == alias if alias != DEFAULT_ALIAS else \
        (TrainingRun.alias == alias) | TrainingRun.alias.is_(None)
    last = session.scalar(select(func.max(TrainingRun.started_at)).where(used, mine))
    scope = for_alias(session, alias, DataConfig(cross_tenant=cross_tenant))
    total = 0
    # thumbs, and the answers with feedback beyond them that trains (preferences, edits,
    # implicit signals; scores train nothing), each once however many users sent it
    for table, counted, trains in ((Feedback, func.count(), None),
                                   (Signal, func.count(func.distinct(Signal.interaction_id)),
                                    Signal.kind != SignalKind.score)):
        query = (select(counted).select_from(table).join(Interaction, Interaction.id == table.interaction_id)
                 .where(*scope_filters(scope), *([trains] if trains is not None else [])))
        if last is not None:
            query = query.where(table.updated_at > last)
        total += int(session.scalar(query) or 0)
    return total


def trained_aliases(sessions: sessionmaker, configured: str, segments_too: bool = True) -> list[str]:
    """The configured alias, the alias of each tenant that owns exactly one (it trains on its
    tenant's feedback only; a tenant with several would train each on the same feedback:
    `loraloop train --alias` trains those by hand) and, with `segments_too`, every segment's."""
    with sessions() as session:
        owned = session.execute(select(Alias.tenant, func.min(Alias.name)).where(
            Alias.tenant.is_not(None), Alias.parent.is_(None), Alias.deleted_at.is_(None))
            .group_by(Alias.tenant).having(func.count() == 1)).all()
        segments_ = session.scalars(select(Alias.name).where(Alias.parent.is_not(None), Alias.deleted_at.is_(None))) \
            if segments_too else []
        return sorted({configured, *(name for _, name in owned), *segments_})


def due_alias(sessions: sessionmaker, min_new: int, cfg: TrainConfig) -> tuple[str | None, dict[str, int]]:
    """(the alias to train now, or None; new ratings of each): of `cfg.alias`, the segments'
    and the tenants' own aliases with at least `min_new` new ratings, the one whose last run
    is oldest (never: first)."""
    aliases = trained_aliases(sessions, cfg.alias)
    with sessions() as session:
        last_runs = dict(session.execute(select(TrainingRun.alias, func.max(TrainingRun.started_at))
                                         .group_by(TrainingRun.alias)).all())
        live_run = session.scalar(select(Lease.name).where(Lease.name == LEASE, Lease.expires_at > utcnow()))
        new = {alias: new_ratings_since_last_run(session, alias, cfg.cross_tenant, live_run is not None)
               for alias in aliases}
    due = [alias for alias in aliases if new[alias] >= min_new]
    never = datetime.min.replace(tzinfo=UTC)
    due.sort(key=lambda a: (as_utc(last_runs[a]) if last_runs.get(a) else never, -new[a]))
    return (due[0] if due else None), new


def run_once(settings: SchedulerSettings, train: Callable[[], object] | None = None) -> str:
    """Creates the segments' aliases that are due, then trains the alias that is due, unless
    another run is going.

    Returns what happened: "not_enough_data", "busy", or the run's outcome. `train` replaces
    the real training call in tests (the run's row records the alias)."""
    engine = make_engine(settings.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    try:
        cfg = train_config(settings)
        if settings.max_segments:
            for name in segments.ensure_segments(sessions, settings.segment_min_ratings, settings.max_segments):
                log.info("segment alias %s created", name)
            if settings.learn_segments:
                for parent in trained_aliases(sessions, cfg.alias, segments_too=False):
                    try:
                        learned = segment_learning.learn(sessions, parent,
                                                         LearnConfig(max_segments=settings.max_segments))
                        log.info("segment learning: %s", learned)
                    except Exception:  # a failed pass (another node placed a user first...) must not stop training
                        log.exception("segment learning for %s failed; training goes on", parent)
        alias, new = due_alias(sessions, settings.train_min_new_ratings, cfg)
        if alias is None:
            log.info("training skipped: new ratings %s, %d needed", new, settings.train_min_new_ratings)
            return "not_enough_data"
        done = run_exclusive(sessions, settings.train_method, timedelta(minutes=settings.train_lease_minutes),
                             settings.data_dir / "runs", train or (lambda: _train(settings, alias)), alias=alias)
        if done.outcome == "busy":
            log.info("training skipped: another run holds the lease")
        return done.outcome
    finally:
        engine.dispose()


def train_config(settings: SchedulerSettings) -> TrainConfig:
    """The scheduled run's TrainConfig; raises ValueError (or exits) on settings that cannot work."""
    import shlex

    from trainer.train import parse_args

    return parse_args(["--method", settings.train_method, "--steps", str(settings.train_steps),
                       *shlex.split(settings.train_args)])


def _train(settings: SchedulerSettings, alias: str) -> object:
    from trainer.train import main

    return main(replace(train_config(settings), alias=alias))


def tick() -> None:
    """The scheduled job (module-level, so the database job store can refer to it by name)."""
    run_once(SchedulerSettings())


def build_scheduler(settings: SchedulerSettings, blocking: bool = True):  # type: ignore[no-untyped-def]
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    url = settings.db_url.replace("postgresql://", "postgresql+psycopg://")
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(jobstores={"default": SQLAlchemyJobStore(url=url)},
                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
    trigger = (CronTrigger.from_crontab(settings.train_cron) if settings.train_cron
               else IntervalTrigger(minutes=settings.train_interval_minutes))
    scheduler.add_job("trainer.scheduler:tick", trigger, id=JOB_ID, replace_existing=True)
    return scheduler


def next_run(settings: SchedulerSettings) -> datetime | None:
    """When the stored job runs next, as the database says."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    store = SQLAlchemyJobStore(url=settings.db_url.replace("postgresql://", "postgresql+psycopg://"))
    store.start(None, "default")  # type: ignore[arg-type]
    try:
        job = store.lookup_job(JOB_ID)
        return job.next_run_time if job else None
    finally:
        store.shutdown()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraloop scheduler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--once", action="store_true", help="check once, train if due, exit")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SchedulerSettings()
    try:
        train_config(settings)  # settings that cannot work fail now, not at the first run in an hour
    except ValueError as exc:
        raise SystemExit(f"loraloop scheduler: {exc}") from None
    if args.once:
        print(run_once(settings))
        return
    engine = make_engine(settings.db_url)
    upgrade(engine)
    engine.dispose()
    scheduler = build_scheduler(settings)
    log.info("training scheduler started (%s)", settings.train_cron or f"every {settings.train_interval_minutes} min")
    scheduler.start()


if __name__ == "__main__":
    main()

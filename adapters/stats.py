"""Figures the database holds for the dashboards: training runs, the gate's last verdict,
adapter versions by state, and prompt drift. Read in one pass by `read_stats`."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.schema import (
    AdapterState,
    AdapterVersion,
    Alias,
    Experiment,
    Feedback,
    Interaction,
    TrainingRun,
    as_utc,
    utcnow,
)

WORD = re.compile(r"\w+")


@dataclass
class StatsSnapshot:
    runs_finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, outcome) -> n
    runs_running: int = 0
    consecutive_failures: int = 0
    last_finished_ts: float = 0.0
    run_durations: list[float] = field(default_factory=list)
    gate_metrics: dict[str, float] = field(default_factory=dict)
    gate_passed: float = 0.0
    versions_by_state: dict[str, int] = field(default_factory=dict)
    prompt_drift: dict[str, float] = field(default_factory=dict)  # alias -> divergence
    experiments: dict[str, dict] = field(default_factory=dict)  # alias -> its open experiment's figures
    experiment_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome, by) -> n


def read_stats(session: Session, drift_window: timedelta, drift_sample: int = 2000) -> StatsSnapshot:
    s = StatsSnapshot()
    runs = session.execute(select(TrainingRun.method, TrainingRun.outcome, TrainingRun.started_at,
                                  TrainingRun.finished_at).order_by(TrainingRun.started_at.desc())).all()
    counts: Counter[tuple[str, str]] = Counter()
    streak_open = True
    for method, outcome, started, finished in runs:
        if outcome == "running":
            s.runs_running += 1
            continue
        counts[(method, outcome)] += 1
        if streak_open and outcome == "failed":
            s.consecutive_failures += 1
        else:
            streak_open = False
        if finished is not None:
            s.last_finished_ts = max(s.last_finished_ts, as_utc(finished).timestamp())
            s.run_durations.append((as_utc(finished) - as_utc(started)).total_seconds())
    s.runs_finished = dict(counts)

    judged = session.execute(select(AdapterVersion.eval_report).where(AdapterVersion.eval_report.is_not(None))
                             .order_by(AdapterVersion.created_at.desc()).limit(1)).scalar()
    if judged:
        s.gate_passed = float(bool(judged.get("passed")))
        s.gate_metrics = {k: float(v) for k, v in (judged.get("metrics") or {}).items()
                          if isinstance(v, int | float) and math.isfinite(v)}

    s.versions_by_state = {state.value: 0 for state in AdapterState}
    for state, n in session.execute(select(AdapterVersion.state, func.count()).group_by(AdapterVersion.state)):
        s.versions_by_state[AdapterState(state).value] = n

    s.experiment_outcomes = {(o, by): 0 for o in ("promoted", "rolled_back") for by in ("auto", "operator")}
    for e in session.scalars(select(Experiment)):
        if e.status in ("running", "paused"):
            s.experiments[e.alias] = {"running": float(e.status == "running"), "share": e.canary_share,
                                      **(e.stats or {})}
        elif e.status in ("promoted", "rolled_back"):
            key = (e.status, "auto" if e.decided_by == "auto" else "operator")
            s.experiment_outcomes[key] += 1

    for alias, champion_created in session.execute(
            select(Alias.name, AdapterVersion.created_at).join(AdapterVersion, Alias.champion == AdapterVersion.name)):
        drift = prompt_drift(session, as_utc(champion_created), drift_window, drift_sample)
        if drift is not None:
            s.prompt_drift[alias] = drift
    return s


def prompt_drift(session: Session, trained_until: Any, window: timedelta, sample: int) -> float | None:
    """How far recent prompts have moved from the ones the champion could have learned from.

    The reference is the rated prompts from before the champion was made (what a feedback
    run trains on); recent is the prompts of the last `window`. Both as word frequencies,
    compared by Jensen-Shannon divergence in bits: 0 the same words, 1 no word in common.
    None when either side has no logged prompts."""
    reference = session.scalars(
        select(Interaction.prompt).join(Feedback, Feedback.interaction_id == Interaction.id)
        .where(Interaction.created_at < trained_until, Interaction.prompt.is_not(None))
        .order_by(Interaction.created_at.desc()).limit(sample)).all()
    recent = session.scalars(
        select(Interaction.prompt).where(Interaction.created_at >= utcnow() - window, Interaction.prompt.is_not(None))
        .order_by(Interaction.created_at.desc()).limit(sample)).all()
    if not reference or not recent:
        return None
    return js_divergence(_words(reference), _words(recent))


def js_divergence(p: Counter[str], q: Counter[str]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two word-count distributions."""
    np_, nq = sum(p.values()), sum(q.values())
    if not np_ or not nq:
        return 0.0
    total = 0.0
    for word in p.keys() | q.keys():
        a, b = p[word] / np_, q[word] / nq
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    return max(0.0, min(1.0, total / 2))


def _words(prompts: Sequence[Any]) -> Counter[str]:
    words: Counter[str] = Counter()
    for prompt in prompts:
        if isinstance(prompt, list):  # chat messages: what the users wrote
            prompt = " ".join(str(m.get("content", "")) for m in prompt
                              if isinstance(m, dict) and m.get("role") == "user")
        words.update(WORD.findall(str(prompt).lower()))
    return words

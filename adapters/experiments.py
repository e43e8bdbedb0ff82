"""Experiments: a canary tried against an alias's champion on live traffic, then promoted
or rolled back, by the evidence or by an operator.

    start -> running <-> paused -> promoted | rolled_back

An approved version trained for an alias (its provenance names the alias) starts an
experiment by itself when the alias has none open (`Policy.auto_start`); operators can start
one for any approved version. Without a champion yet, the canary is tested against the base
model. While running, the gateway sends `canary_share` of the alias's users (sticky by user)
to the canary. `judge` runs every few seconds (one gateway replica at a time, under a lease): it
counts each arm's requests, errors, latency and votes (one per answer, adapters.feedback.votes)
since the start, and

1. rolls back on a guardrail: the canary's error rate or mean latency clearly worse;
2. otherwise promotes or rolls back when the always-valid sequential test on the thumbs-up
   share of the rated answers (adapters/sequential.py) reaches its confidence, or rolls back
   when the one on thumbs-down per served answer finds the canary worse (alpha shared 4:1);
3. otherwise rolls back at `max_hours` (inconclusive: the champion stays), or sooner when
   it is superseded: a newer approved candidate for the alias learned from at least
   `supersede_factor` times the feedback, and the test is still undecided after
   `min_ratings` per arm. Sparse thumbs make a canary no better than its champion run to
   the deadline (days), while the data keeps growing; the fresher candidate then waits for
   nothing. Only a rollback, so the promotion error bound is untouched, and the factor
   bounds the churn: a run of k supersessions needs factor^k times the first one's data.

A canary that passed a pre-screen (the gate's reward model preferred its answers to the
champion's on held-out prompts: `win_rate` > 0.5 in its gate report) is expected to be
better, so the share test's prior is centred on +`prior_lift` instead of 0
(adapters/sequential.py): the same error bound, fewer ratings to promote a canary the
pre-screen got right.

Why the share of RATED answers, and no guardrail on how often each arm is rated: real users
rate few answers and complain more than they praise, so a better canary collects FEWER
ratings (fewer complaints). How often an arm is rated says how much it is disliked, not that
it is worse; a rule "rated much less often -> roll back" rolled improvements back (and, on a
few dozen ratings, fired on noise). When each user's chance to rate depends on what they
think of an answer (and not on the arm), the thumbs-up share among rated answers rises with
the share of answers liked, whatever those chances are: up / (up + down) = p r+ / (p r+ +
(1 - p) r-) is increasing in p for any r+, r- > 0. Label noise (a share of flipped thumbs)
shrinks the difference but keeps its sign. So the test's direction is the users', and an
arm-wide change in rating habits (users of one arm rating less overall) moves nothing.

An operator's promote, rollback, pause or resume overrides it; every action is audited
(adapter_events) the same way, `actor` being "auto" or the operator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from adapters import registry
from adapters.errors import InvalidRequest, InvalidTransition, NotFound
from adapters.feedback import votes
from adapters.schema import AdapterState, AdapterVersion, Experiment, Interaction, as_utc, utcnow
from adapters.sequential import Arm, decide

S = AdapterState
OPEN = ("running", "paused")
COMPLAINT_ALPHA = 0.2  # the complaint test's part of alpha; the thumbs-up share test has the rest


@dataclass(frozen=True)
class Policy:
    alpha: float = 0.05  # chance of any decision when the canary is no different
    tau: float = 0.1  # size of difference in thumbs-up rate the test is tuned to
    complaint_tau: float = 0.03  # ...and in thumbs-down per served answer (a few per cent are rated)
    min_ratings: int = 30  # per arm, before the test may decide
    prior_lift: float = 0.1  # the share test's prior mean for a canary the pre-screen preferred (0: off)
    guardrail_min_requests: int = 50  # per arm, before a guardrail may fire
    max_error_rate_increase: float = 0.02  # canary error rate above the champion's by more
    max_latency_ratio: float = 2.0  # canary mean latency over the champion's times this...
    min_latency_increase_ms: float = 100.0  # ...and slower by at least this (2 ms vs 5 ms is no regression)
    auto_start: bool = True  # approved versions trained for an alias start an experiment by themselves
    supersede_factor: float = 2.0  # newer candidate with this many times the feedback replaces an undecided canary
    default_share: float = 0.1
    default_max_hours: float = 72.0


@dataclass(frozen=True)
class ArmNumbers:
    requests: int
    errors: int
    mean_latency_ms: float
    ratings: int
    up: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def down(self) -> int:
        return self.ratings - self.up

    @property
    def coverage(self) -> float:
        return self.ratings / self.requests if self.requests else 0.0


def start(session: Session, alias: str, canary: str, share: float, max_hours: float, *, actor: str,
          reason: str = "") -> Experiment:
    if not 0 < share < 1:
        raise InvalidRequest(f"canary share must be between 0 and 1, got {share}", param="share")
    row = registry.lock_alias(session, alias, create=True)
    if current(session, alias) is not None:
        raise InvalidTransition(f"alias {alias!r} already has an experiment; promote or roll it back first")
    registry.transition(session, canary, S.canary, actor=actor, reason=reason or "experiment started", alias=alias)
    champion = registry.effective_champion(session, row)  # a segment without its own: its parent's
    experiment = Experiment(alias=alias, champion=champion, canary=canary, canary_share=share,
                            status="running", max_hours=max_hours)
    session.add(experiment)
    registry.audit(session, "experiment_start", actor, reason, version=canary, alias=alias,
                   numbers={"canary_share": share, "champion": champion, "max_hours": max_hours})
    session.flush()
    return experiment


def current(session: Session, alias: str) -> Experiment | None:
    """The alias's running or paused experiment."""
    return session.scalars(select(Experiment).where(Experiment.alias == alias, Experiment.status.in_(OPEN))).first()


def _open(session: Session, alias: str) -> Experiment:
    registry.lock_alias(session, alias)
    experiment = current(session, alias)
    if experiment is None:
        raise NotFound(f"alias {alias!r} has no experiment running")
    return experiment


def pause(session: Session, alias: str, *, actor: str, reason: str = "") -> Experiment:
    """Every user gets the champion until `resume`; the numbers so far are kept."""
    experiment = _open(session, alias)
    experiment.status = "paused"
    registry.audit(session, "experiment_pause", actor, reason, version=experiment.canary, alias=alias)
    return experiment


def resume(session: Session, alias: str, *, actor: str, reason: str = "") -> Experiment:
    experiment = _open(session, alias)
    experiment.status = "running"
    registry.audit(session, "experiment_resume", actor, reason, version=experiment.canary, alias=alias)
    return experiment


def promote(session: Session, alias: str, *, actor: str, reason: str = "", numbers: dict | None = None) -> Experiment:
    """The canary becomes the champion; the old champion retires (and is what rollback restores)."""
    experiment = _open(session, alias)
    registry.set_champion(session, alias, experiment.canary, actor=actor, reason=reason or "promoted", numbers=numbers)
    _end(experiment, "promoted", actor, reason)
    return experiment


def rollback(session: Session, alias: str, *, actor: str, reason: str = "",
             numbers: dict | None = None) -> str | None:
    """Ends the alias's experiment in the champion's favour, or, with none open, puts the
    previous champion back. Returns the version the alias serves now (None: the base model)."""
    registry.lock_alias(session, alias)
    experiment = current(session, alias)
    if experiment is None:
        return registry.rollback_champion(session, alias, actor=actor, reason=reason)
    registry.transition(session, experiment.canary, S.retired, actor=actor, reason=reason or "rolled back",
                        alias=alias, numbers=numbers)
    _end(experiment, "rolled_back", actor, reason)
    return experiment.champion


def _end(experiment: Experiment, status: str, actor: str, reason: str) -> None:
    experiment.status, experiment.ended_at = status, utcnow()
    experiment.decided_by, experiment.reason = actor, reason or None


def arm_numbers(session: Session, experiment: Experiment) -> dict[str, ArmNumbers]:
    """Each arm's traffic and ratings on this alias since the experiment started: two grouped
    queries for both arms (the vote ranking, the costly part, runs once)."""
    served = (Interaction.requested_model == experiment.alias) & (Interaction.created_at >= experiment.started_at)
    arm_of = {("champion", experiment.champion), ("canary", experiment.canary)}
    vote = votes(served)  # ranks this experiment's ratings only, not the whole table
    traffic = session.execute(
        select(Interaction.arm, Interaction.adapter_version, func.count(),
               func.coalesce(func.sum(case((Interaction.status >= 500, 1), else_=0)), 0),
               func.coalesce(func.avg(Interaction.latency_ms), 0.0))
        .where(served).group_by(Interaction.arm, Interaction.adapter_version))
    rated = session.execute(  # one vote per answer: invented users add nothing
        select(Interaction.arm, Interaction.adapter_version, func.count(),
               func.coalesce(func.sum(case((vote.c.rating > 0, 1), else_=0)), 0))
        .select_from(vote).join(Interaction, vote.c.interaction_id == Interaction.id)
        .where(served).group_by(Interaction.arm, Interaction.adapter_version))
    # an arm is its name AND its version: a version served under that arm name before (a
    # canary that became champion mid-window) is not this experiment's
    counts = {(arm, version): (int(n), int(errors), float(latency)) for arm, version, n, errors, latency in traffic
              if (arm, version) in arm_of}
    votes_of = {(arm, version): (int(n), int(up)) for arm, version, n, up in rated if (arm, version) in arm_of}
    return {arm: ArmNumbers(*counts.get((arm, version), (0, 0, 0.0)), *votes_of.get((arm, version), (0, 0)))
            for arm, version in sorted(arm_of, key=lambda a: a[0] != "champion")}


def prior_mean(session: Session, experiment: Experiment, policy: Policy) -> float:
    """+prior_lift when the canary's gate report says a gated reward model preferred it to
    THIS experiment's champion on held-out prompts, else 0. Read once, at the first judging,
    then kept in the experiment's stats: it must not change while the test runs, nor depend
    on the experiment's own data (either would void the test's error bound)."""
    if experiment.stats and "prior_mean" in experiment.stats:
        return float(experiment.stats["prior_mean"])
    version = session.get(AdapterVersion, experiment.canary)
    if version is None or (version.provenance or {}).get("gate_champion", "?") != experiment.champion:
        return 0.0  # compared with another champion (or not recorded): the pre-screen says nothing here
    win_rate = ((version.eval_report or {}).get("metrics") or {}).get("win_rate")
    preferred = isinstance(win_rate, (int, float)) and not isinstance(win_rate, bool) and \
        math.isfinite(win_rate) and win_rate > 0.5
    return policy.prior_lift if preferred else 0.0


def judge(experiment: Experiment, numbers: dict[str, ArmNumbers], policy: Policy,
          now: datetime, prior: float = 0.0) -> tuple[str, str, dict]:
    """(decision, why, the numbers behind it); decision is promote | rollback | continue.
    `prior`: the share test's prior mean (`prior_mean`)."""
    champion, canary = numbers["champion"], numbers["canary"]
    # Two always-valid tests sharing alpha, so that any decision on a canary no different
    # from the champion stays at most alpha in all: the thumbs-up share of the rated answers
    # (robust to how often users rate, so it alone may promote), and complaints per SERVED
    # answer (better powered: thumbs-down are most of the thumbs, and the served count is
    # exact; but users of one arm rating less would look like fewer complaints, so it may
    # only roll back, which keeps the champion). The complaint test's evidence grows fast,
    # so it gets the smaller part of alpha and promotions wait little longer than alone.
    verdict = decide(Arm(champion.up, champion.ratings), Arm(canary.up, canary.ratings),
                     alpha=policy.alpha * (1 - COMPLAINT_ALPHA), tau=policy.tau, min_ratings=policy.min_ratings,
                     prior_mean=prior)
    complaints = decide(Arm(champion.requests - champion.down, champion.requests),
                        Arm(canary.requests - canary.down, canary.requests), alpha=policy.alpha * COMPLAINT_ALPHA,
                        tau=policy.complaint_tau, min_ratings=policy.guardrail_min_requests)
    evidence = {"arms": {arm: asdict(n) | {"coverage": round(n.coverage, 4)} for arm, n in numbers.items()},
                "log_lambda": verdict.log_lambda, "prior_mean": prior,
                "threshold": verdict.threshold, "difference": verdict.difference,
                "complaints": {"log_lambda": complaints.log_lambda, "threshold": complaints.threshold,
                               "difference": complaints.difference}}
    if min(champion.requests, canary.requests) >= policy.guardrail_min_requests:
        if canary.error_rate > champion.error_rate + policy.max_error_rate_increase:
            return "rollback", f"guardrail: canary error rate {canary.error_rate:.1%} vs {champion.error_rate:.1%}", \
                evidence
        slower = canary.mean_latency_ms - champion.mean_latency_ms
        if slower >= policy.min_latency_increase_ms and \
                canary.mean_latency_ms > policy.max_latency_ratio * champion.mean_latency_ms:
            return "rollback", (f"guardrail: canary mean latency {canary.mean_latency_ms:.0f} ms vs "
                                f"{champion.mean_latency_ms:.0f} ms"), evidence
    if complaints.decision == "rollback" and min(champion.ratings, canary.ratings) >= policy.min_ratings:
        return "rollback", (f"sequential test: canary thumbs-down {canary.down} per {canary.requests} answers vs "
                            f"{champion.down} per {champion.requests}, worse at alpha "
                            f"{policy.alpha * COMPLAINT_ALPHA:g}"), evidence
    # A higher thumbs-up share WITH more complaints per answer can only come from users rating
    # the arms differently (not from liking the canary more): no promotion on that.
    if verdict.decision == "rollback" or (verdict.decision == "promote" and complaints.difference >= 0):
        better = "better" if verdict.difference > 0 else "worse"
        return verdict.decision, (f"sequential test: canary thumbs-up {canary.up}/{canary.ratings} vs "
                                  f"{champion.up}/{champion.ratings}, {better} at alpha "
                                  f"{policy.alpha * (1 - COMPLAINT_ALPHA):g}"
                                  + (f" (prior +{prior:g}: the pre-screen preferred it)" if prior else "")), evidence
    if now - as_utc(experiment.started_at) >= timedelta(hours=experiment.max_hours):
        return "rollback", f"no decision within {experiment.max_hours:g} h: the champion stays", evidence
    return "continue", "", evidence


def judge_all(sessions: sessionmaker, policy: Policy, now: datetime | None = None) -> list[tuple[str, str, str]]:
    """Judges every running experiment and acts, then starts experiments for new approved
    versions; returns (alias, decision, why) for each, decision "start" for the latter."""
    with sessions() as session:
        aliases = list(session.scalars(select(Experiment.alias).where(Experiment.status == "running")))
    results = []
    for alias in aliases:
        # Count first, in a transaction that writes nothing: lock_alias is a write (SQLite's
        # database write lock, PostgreSQL's alias row), and holding it through both arms' vote
        # queries would stall the interaction log, rating writers and operators for the count.
        with sessions() as session:
            experiment = current(session, alias)
            if experiment is None or experiment.status != "running":
                continue
            counted, numbers = experiment.id, arm_numbers(session, experiment)
            prior = prior_mean(session, experiment, policy)
        with sessions.begin() as session:
            registry.lock_alias(session, alias)  # a concurrent operator action waits or wins
            experiment = current(session, alias)
            if experiment is None or experiment.id != counted or experiment.status != "running":
                continue  # paused, ended or replaced while counting: the operator's action holds
            # The numbers are a few ms stale (answers and ratings written since count next round):
            # for a test that needs tens of ratings per arm and always-valid at any stopping time,
            # that is the same as having judged a moment earlier.
            decision, why, evidence = judge(experiment, numbers, policy, now or utcnow(), prior)
            if decision == "continue" and policy.auto_start and \
                    min(n.ratings for n in numbers.values()) >= policy.min_ratings:
                newer = superseded_by(session, experiment, policy)
                if newer:
                    decision, why = "rollback", f"superseded by {newer[0]} ({newer[1]}): the test was undecided"
            experiment.stats = evidence
            if decision == "promote":
                promote(session, alias, actor="auto", reason=why, numbers=evidence)
            elif decision == "rollback":
                rollback(session, alias, actor="auto", reason=why, numbers=evidence)
            results.append((alias, decision, why))
    if policy.auto_start:
        results += _start_waiting(sessions, policy)
    return results


def feedback_size(version: AdapterVersion) -> int:
    """How much feedback a version learned from: the thumbs and pairs `--method auto` counted,
    else its training examples."""
    provenance = version.provenance or {}
    counts = provenance.get("method_choice") or {}
    size = sum(int(counts.get(k) or 0) for k in ("pairs", "liked", "disliked")) if counts else 0
    return size or int(provenance.get("examples") or 0)


def superseded_by(session: Session, experiment: Experiment, policy: Policy) -> tuple[str, str] | None:
    """(name, why) of the newest approved candidate for the experiment's alias that learned
    from at least `supersede_factor` times the canary's feedback; None when there is none."""
    canary = session.get(AdapterVersion, experiment.canary)
    if not policy.supersede_factor or canary is None or not feedback_size(canary):
        return None
    newest = None
    for version in session.scalars(select(AdapterVersion).where(
            AdapterVersion.state == S.approved, AdapterVersion.kind == "policy",
            AdapterVersion.created_at > canary.created_at).order_by(AdapterVersion.created_at)):
        if ((version.provenance or {}).get("config") or {}).get("alias") == experiment.alias and \
                feedback_size(version) >= policy.supersede_factor * feedback_size(canary):
            newest = version
    if newest is None:
        return None
    return newest.name, f"{feedback_size(newest)} examples of feedback vs the canary's {feedback_size(canary)}"


def _start_waiting(sessions: sessionmaker, policy: Policy) -> list[tuple[str, str, str]]:
    """The newest approved version trained for each alias without an open experiment goes
    into one (older approved ones stay for an operator: only the latest is worth users' time)."""
    with sessions() as session:
        open_aliases = set(session.scalars(select(Experiment.alias).where(Experiment.status.in_(OPEN))))
        waiting: dict[str, str] = {}
        for version in session.scalars(select(AdapterVersion).where(AdapterVersion.state == S.approved,
                                                                  AdapterVersion.kind == "policy")
                                       .order_by(AdapterVersion.created_at)):
            alias = ((version.provenance or {}).get("config") or {}).get("alias")
            if alias and alias not in open_aliases:
                waiting[alias] = version.name  # the newest wins
    started = []
    for alias, name in waiting.items():
        try:
            with sessions.begin() as session:
                start(session, alias, name, policy.default_share, policy.default_max_hours, actor="auto",
                      reason="approved by the eval gate")
            started.append((alias, "start", name))
        except (InvalidTransition, NotFound):  # someone else started one meanwhile
            continue
    return started

"""Segments: one alias, several groups of users who want different answers, each served its
own adapter on the same base (vLLM batches them together).

A segment of alias `support` is itself an alias, `support@formal`, with `parent` and
`segment` set. So everything that works per alias works per segment with no special case:
its champion, its experiments (canary vs champion on that segment's users only), its
training runs (on that segment's feedback only: trainer/data.py `for_alias`), the audit
trail, the metrics' `alias` label. A segment without a champion of its own serves the
parent's, so creating one changes nothing for its users until a candidate trained on their
feedback wins an A/B test among them.

Where a user's segment comes from: the app declares it on each request (the
`X-Loraloop-Segment` header; `model="support@formal"` names an existing segment's alias).
A declared segment needs no setup: its requests are logged with the label
(Interaction.segment) and served by the parent until the segment has an alias; the
scheduler creates one (`ensure_segments`) once its users (of the tenant whose feedback
trains the parent) have rated `min_ratings` answers, for at most `max_segments` segments of
an alias, the most rated first. The rest keep sharing the parent's champion, so the
adapters in use and metric label sets stay bounded whatever labels clients send.

A declared segment is the request's own: it is never stored as the user's, so one client
cannot move another client's users (or anyone's requests but its own) into a segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy import delete as delete_rows
from sqlalchemy.orm import Session, sessionmaker

from adapters import registry
from adapters.errors import InvalidAdapter, InvalidRequest, NotFound
from adapters.feedback import votes
from adapters.schema import (
    DEFAULT_TENANT,
    AdapterEvent,
    AdapterState,
    Alias,
    Experiment,
    Interaction,
    SegmentAssignment,
    utcnow,
)
from adapters.settings import MAX_SEGMENTS

SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # the part after the "@" of registry.SEGMENT_ALIAS_RE
LEARNED_PREFIX = "taste-"
SEPARATOR = "@"  # not allowed in alias names (registry.NAME_RE), so a segment's name is never taken


def check_segment(segment: str, learned: bool = False) -> str:
    """`segment` if it is a valid segment name; InvalidRequest (a 400) otherwise. Names
    starting with LEARNED_PREFIX are the learned segments' (trainer/segment_learning.py): a
    request or an operator cannot declare one, so no client sends its requests into a group
    its thumbs did not put it in, nor takes a name the learner will use."""
    if not SEGMENT_RE.match(segment):
        raise InvalidRequest(f"segment {segment[:40]!r} must match {SEGMENT_RE.pattern} "
                             "(lower-case letters, digits, '_' and '-', at most 32)", param="segment")
    if segment.startswith(LEARNED_PREFIX) and not learned:
        raise InvalidRequest(f"segment names starting with {LEARNED_PREFIX!r} are reserved for learned segments",
                             param="segment")
    return segment


def segment_alias(parent: str, segment: str) -> str:
    return f"{parent}{SEPARATOR}{segment}"


def split_name(alias: str) -> tuple[str, str | None]:
    """(parent, segment) of a segment's alias; (alias, None) for any other name."""
    parent, sep, segment = alias.partition(SEPARATOR)
    return (parent, segment) if sep else (alias, None)


@dataclass(frozen=True)
class SegmentInfo:
    alias: str
    parent: str
    segment: str
    champion: str | None  # its own; None: it serves the parent's
    tenant: str | None
    learned: bool = False  # users placed by their thumbs (adapters/segment_assignments.py)


def create(session: Session, parent: str, segment: str, *, actor: str, reason: str = "",
           max_segments: int = MAX_SEGMENTS, learned: bool = False, numbers: dict | None = None) -> Alias:
    """The segment's alias (idempotent), owned by the parent's tenant, serving the parent's
    champion until it has its own. Refused past `max_segments` segments of the parent.
    `learned`: its users are placed by their thumbs (adapters/segment_assignments.py), not
    by the requests' declarations."""
    check_segment(segment, learned)
    parent_row = registry.lock_alias(session, parent)
    if parent_row.parent is not None:
        raise InvalidAdapter(f"{parent!r} is itself a segment; segments have no segments", param="model")
    name = segment_alias(parent, segment)
    existing = session.get(Alias, name)
    if existing is not None and existing.deleted_at is None:
        return existing
    count = session.scalar(select(func.count()).select_from(Alias).where(Alias.parent == parent,
                                                                         Alias.deleted_at.is_(None))) or 0
    if count >= max_segments:
        raise InvalidAdapter(f"alias {parent!r} has {count} segments, the most allowed (LORALOOP_MAX_SEGMENTS); "
                             "its other segments share its champion", param="segment")
    if existing is not None:  # deleted before: restored, following the parent's champion again
        existing.deleted_at = None
        registry.audit(session, "segment_restore", actor, reason, alias=name, numbers={"parent": parent})
        session.flush()
        return existing
    row = Alias(name=name, tenant=parent_row.tenant, parent=parent, segment=segment, learned=learned)
    session.add(row)
    registry.audit(session, "segment_create", actor, reason, alias=name,
                   numbers={**(numbers or {}), "parent": parent, "learned": learned})
    session.flush()
    return row


def delete(session: Session, alias: str, *, actor: str, reason: str = "") -> Alias:
    """Stops serving a segment its own adapters: its users get the parent's champion, its
    traffic trains the parent again, a learned segment's users are unassigned (placed anew
    by later passes). The row stays, with its experiments and audit trail, and the label is
    not given an alias again until an operator `create`s it. Refused while an experiment
    runs on it (roll it back first: its users are in the middle of a test)."""
    row = registry.lock_alias(session, alias)
    if row.parent is None:
        raise InvalidAdapter(f"{alias!r} is not a segment's alias; only segments can be deleted", param="alias")
    running = session.scalar(select(Experiment.id).where(Experiment.alias == alias,
                                                         Experiment.status.in_(["running", "paused"])))
    if running is not None:
        raise InvalidAdapter(f"experiment {running} is open on {alias!r}: roll it back or promote it first",
                             param="alias")
    row.deleted_at = utcnow()
    champion, row.champion, row.previous_champion = row.champion, None, None
    if champion is not None and not registry.champion_elsewhere(session, champion, alias):
        # replicas free it (only retired versions are unloaded); a pinned request still works
        registry.transition(session, champion, AdapterState.retired, actor=actor,
                            reason=reason or "segment deleted", alias=alias)
    members = (SegmentAssignment.parent == row.parent) & (SegmentAssignment.segment == row.segment)
    unassigned = session.scalar(select(func.count()).select_from(SegmentAssignment).where(members)) or 0
    session.execute(delete_rows(SegmentAssignment).where(members))
    registry.audit(session, "segment_delete", actor, reason, alias=alias,
                   numbers={"champion": champion, "unassigned_users": unassigned})
    session.flush()
    return row


def list_segments(session: Session, parent: str | None = None) -> list[SegmentInfo]:
    query = select(Alias).where(Alias.parent.is_not(None), Alias.deleted_at.is_(None)).order_by(Alias.name)
    if parent is not None:
        query = query.where(Alias.parent == parent)
    return [SegmentInfo(a.name, a.parent or "", a.segment or "", a.champion, a.tenant, a.learned)
            for a in session.scalars(query)]


def declared_counts(session: Session, parent: str, min_rated: int = 0, limit: int = 100) -> dict[str, tuple[int, int]]:
    """segment label -> (answers, rated answers) of requests to `parent` that declared a
    segment with no alias of its own yet, from the tenant whose feedback trains the parent
    (its owner; tenant "default" for a shared alias, as trainer/data.py), the `limit` most
    rated with at least `min_rated`: what `ensure_segments` chooses from. Another tenant's
    keys cannot claim a shared alias's segment slots. Bounded in SQL, so a client sending
    a million labels costs a GROUP BY, not a million-entry dict. One vote per answer
    (adapters/feedback.py), so a key cannot make a segment look used by inventing raters."""
    owner = session.scalar(select(Alias.tenant).where(Alias.name == parent)) or DEFAULT_TENANT
    served = (Interaction.requested_model == parent) & (Interaction.segment != "") & (Interaction.tenant == owner)
    vote = votes(served)
    rated = func.count(vote.c.interaction_id)
    rows = session.execute(
        select(Interaction.segment, func.count(), rated)
        .select_from(Interaction).outerjoin(vote, vote.c.interaction_id == Interaction.id).where(served)
        .group_by(Interaction.segment).having(rated >= min_rated)
        .order_by(rated.desc(), Interaction.segment).limit(limit))
    return {label: (int(n), int(r)) for label, n, r in rows}


def due_segments(session: Session, min_ratings: int, max_segments: int = MAX_SEGMENTS) -> list[tuple[str, str, int]]:
    """(alias, segment, rated answers) of the declared segments that have earned an alias of
    their own: per alias, the most rated labels with at least `min_ratings` rated answers,
    up to `max_segments` segments in all. Reads only (create them in a short transaction)."""
    due = []
    for parent in session.scalars(select(Alias.name).where(Alias.parent.is_(None)).order_by(Alias.name)).all():
        rows = session.execute(select(Alias.segment, Alias.deleted_at).where(Alias.parent == parent)).all()
        have = {label for label, _ in rows}  # deleted ones too: an operator's decision, not undone here
        live = sum(deleted is None for _, deleted in rows)
        if live >= max_segments:
            continue
        # labels with an alias keep their rows from before it: asked for past them
        counts = declared_counts(session, parent, min_ratings, limit=max_segments + len(have))
        ranked = [(label, rated) for label, (_, rated) in counts.items()
                  if label not in have and SEGMENT_RE.match(label) and not label.startswith(LEARNED_PREFIX)]
        due += [(parent, label, rated) for label, rated in ranked[:max_segments - live]]
    return due


def ensure_segments(sessions: sessionmaker, min_ratings: int, max_segments: int = MAX_SEGMENTS,
                    actor: str = "scheduler") -> list[str]:
    """Creates the segment aliases that are due (`due_segments`), each in its own short
    transaction: the counting reads hold no write lock. Returns the new aliases' names."""
    with sessions() as session:
        due = due_segments(session, min_ratings, max_segments)
    created = []
    for parent, label, rated in due:
        try:
            with sessions.begin() as session:
                create(session, parent, label, actor=actor, max_segments=max_segments,
                       reason=f"{rated} rated answers of users who declared segment {label!r}")
            created.append(segment_alias(parent, label))
        except InvalidAdapter:  # an operator filled the last slot meanwhile
            continue
    return created


def overview(session: Session, parent: str | None = None) -> list[dict]:
    """Every segment's alias (of `parent`, or of all aliases), then the labels requests
    declared that have no alias yet, with their answers and rated answers."""
    listed: list[dict] = [{"alias": s.alias, "parent": s.parent, "segment": s.segment, "champion": s.champion,
                           "tenant": s.tenant, "learned": s.learned} for s in list_segments(session, parent)]
    have = {s["alias"] for s in listed}
    parents = [parent] if parent else list(session.scalars(select(Alias.name).where(Alias.parent.is_(None))
                                                          .order_by(Alias.name)))
    for name in parents:
        for label, (answers, rated) in sorted(declared_counts(session, name).items()):
            if segment_alias(name, label) not in have:
                listed.append({"alias": None, "parent": name, "segment": label, "answers": answers, "rated": rated})
    return listed


def describe(session: Session, alias: str) -> dict:
    """A segment's alias for operators: what it serves, its traffic and ratings (one vote per
    answer), users, experiments and audit trail."""
    row = session.get(Alias, alias)
    if row is None or row.parent is None:
        raise NotFound(f"segment alias {alias!r} does not exist", param="alias")
    mine = or_(Interaction.requested_model == alias,
               and_(Interaction.requested_model == row.parent, Interaction.segment == row.segment))
    members = session.scalar(select(func.count()).select_from(SegmentAssignment).where(
        SegmentAssignment.parent == row.parent, SegmentAssignment.segment == row.segment)) or 0
    answers, users = session.execute(select(func.count(), func.count(func.distinct(Interaction.end_user)))
                                     .where(mine)).one()
    vote = votes(mine)
    rated, up = session.execute(select(func.count(), func.coalesce(func.sum(case((vote.c.rating > 0, 1), else_=0)), 0))
                                .select_from(vote)).one()
    runs = session.scalars(select(Experiment).where(Experiment.alias == alias).order_by(Experiment.id.desc()))
    events = session.scalars(select(AdapterEvent).where(AdapterEvent.alias == alias).order_by(AdapterEvent.id))
    return {"alias": alias, "parent": row.parent, "segment": row.segment, "tenant": row.tenant,
            "learned": row.learned, "members": int(members),
            "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None,
            "champion": row.champion,
            "serves": registry.effective_champion(session, row) if row.deleted_at is None else None,
            "answers": int(answers), "users": int(users), "rated": int(rated), "liked": int(up),
            "experiments": [{"id": e.id, "canary": e.canary, "champion": e.champion, "status": e.status,
                             "reason": e.reason} for e in runs],
            "history": [{"at": ev.at.isoformat(), "action": ev.action, "version": ev.version, "actor": ev.actor,
                         "reason": ev.reason} for ev in events]}

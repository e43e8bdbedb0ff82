"""Learned segments' members: which segment each end user of an alias is in, as their own
thumbs put them (trainer/segment_learning.py decides; this module stores and reads).

Sticky and audited: a row changes only when the learner moves the user (their thumbs say
they belong elsewhere, by a margin), and keeps where they were (`previous_segment`) and
when; each learning pass that changes anything writes one audit event with its numbers.
Users are per tenant: only the tenant whose feedback trains the alias (its owner; tenant
"default" for a shared alias) has assignments, so another tenant's user with the same id
is never routed by them.

The gateway reads one row per (alias, user) it has not seen lately (gateway/routing.py
caches them); an index on (parent, segment) serves the member lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters import registry
from adapters.schema import Alias, SegmentAssignment, utcnow


@dataclass(frozen=True)
class Placement:
    segment: str
    votes: int  # the user's rated answers it was decided on
    similarity: float  # cosine of their taste to the segment's


def segment_of(session: Session, parent: str, tenant: str, user: str) -> str:
    """The learned segment of `user` of `tenant` on alias `parent` ("" when none)."""
    return session.scalar(select(SegmentAssignment.segment).where(
        SegmentAssignment.parent == parent, SegmentAssignment.tenant == tenant,
        SegmentAssignment.end_user == user)) or ""


def current(session: Session, parent: str, tenant: str, users: set[str]) -> dict[str, str]:
    """user -> learned segment, of those of `users` assigned on `parent` (read in chunks: a
    database caps the parameters of one statement)."""
    found: dict[str, str] = {}
    ordered = sorted(users)
    for start in range(0, len(ordered), 1000):
        found.update(session.execute(select(SegmentAssignment.end_user, SegmentAssignment.segment).where(
            SegmentAssignment.parent == parent, SegmentAssignment.tenant == tenant,
            SegmentAssignment.end_user.in_(ordered[start:start + 1000]))).tuples().all())
    return found


def place(session: Session, parent: str, tenant: str, placements: dict[str, Placement], *, actor: str,
          reason: str, numbers: dict | None = None) -> tuple[int, int]:
    """Stores `placements` (user -> segment): new users are added, users whose segment changed
    moved (their previous segment kept), the others' numbers refreshed. Returns (added,
    moved); one audit event on the alias when either is non-zero."""
    have: dict[str, SegmentAssignment] = {}
    ordered = sorted(placements)
    for start in range(0, len(ordered), 1000):
        have.update((row.end_user, row) for row in session.scalars(select(SegmentAssignment).where(
            SegmentAssignment.parent == parent, SegmentAssignment.tenant == tenant,
            SegmentAssignment.end_user.in_(ordered[start:start + 1000]))))
    added = moved = 0
    now = utcnow()
    for user, placed in placements.items():
        row = have.get(user)
        if row is None:
            session.add(SegmentAssignment(parent=parent, tenant=tenant, end_user=user, segment=placed.segment,
                                          votes=placed.votes, similarity=placed.similarity,
                                          assigned_at=now, updated_at=now))
            added += 1
            continue
        if row.segment != placed.segment:
            row.previous_segment, row.segment, row.assigned_at = row.segment, placed.segment, now
            moved += 1
        row.votes, row.similarity, row.updated_at = placed.votes, placed.similarity, now
    if added or moved:
        registry.audit(session, "segment_assign", actor, reason, alias=parent,
                       numbers={**(numbers or {}), "added": added, "moved": moved})
    session.flush()
    return added, moved


def unplace(session: Session, parent: str, tenant: str, users: set[str], *, actor: str, reason: str) -> int:
    """Takes `users` out of their learned segments (they get the alias's champion until placed
    again); one audit event naming them (the first 50). Returns how many were removed."""
    if not users:
        return 0
    rows = list(session.scalars(select(SegmentAssignment).where(
        SegmentAssignment.parent == parent, SegmentAssignment.tenant == tenant,
        SegmentAssignment.end_user.in_(sorted(users)[:1000]))))
    for row in rows:
        session.delete(row)
    if rows:
        registry.audit(session, "segment_unassign", actor, reason, alias=parent, numbers={
            "unassigned": len(rows), "users": {r.end_user: r.segment for r in rows[:50]}})
    session.flush()
    return len(rows)


def members(session: Session, alias: str, limit: int = 100, after: str = "") -> list[dict]:
    """A learned segment's users (by id, from `after`), at most `limit`: for operators."""
    row = session.get(Alias, alias)
    if row is None or row.parent is None:
        return []
    query = (select(SegmentAssignment).where(SegmentAssignment.parent == row.parent,
                                             SegmentAssignment.segment == row.segment,
                                             SegmentAssignment.end_user > after)
             .order_by(SegmentAssignment.end_user).limit(limit))
    return [{"user": a.end_user, "tenant": a.tenant, "votes": a.votes, "similarity": round(a.similarity, 3),
             "previous_segment": a.previous_segment, "assigned_at": a.assigned_at.isoformat()}
            for a in session.scalars(query)]


def sizes(session: Session, parent: str) -> dict[str, int]:
    """segment -> assigned users, of alias `parent`."""
    return {segment: int(n) for segment, n in session.execute(
        select(SegmentAssignment.segment, func.count()).where(SegmentAssignment.parent == parent)
        .group_by(SegmentAssignment.segment)).all()}

"""The feedback store: interactions the gateway served and the ratings users gave them.

Writes come in batches (the gateway's interaction log and its group-committed ratings), so
each function here takes many rows and costs one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, CursorResult, Subquery, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapters.schema import Feedback, Interaction, Signal, utcnow


@dataclass(frozen=True)
class Rating:
    interaction_id: str
    end_user: str | None  # None: the user the interaction was served to
    rating: int  # +1 thumbs up, -1 thumbs down
    comment: str | None
    tenant: str  # of the key that sends the rating; only its own interactions may be rated
    choice: int = 0  # which choice of an `n` > 1 answer


@dataclass(frozen=True)
class RatingResult:
    stored: bool  # False: no such interaction for this tenant
    end_user: str = ""
    replaced: bool = False
    adapter_version: str | None = None  # what served the rated answer (for the metrics)
    arm: str = ""
    invalid: str = ""  # why an answer that was served refused this rating (a choice it does not have)


def votes(*where: ColumnElement[bool], per_choice: bool = False) -> Subquery:
    """One vote per answer: (interaction_id, choice, rating) for every rated interaction (of
    those matching `where`, conditions on Interaction: the window then ranks only their
    ratings). An `n` > 1 answer's vote is its first choice's, so experiments and segments
    count each request once (its choices are not independent draws, and one request must
    not weigh `n` votes); with `per_choice` (training), each choice is an answer of its own.

    An answer's vote is its own end user's rating when they gave one, otherwise the first
    rating anyone gave it. A key may rate an answer under any `user` value it likes, so
    counting every row would let one client outvote everyone; experiments and training
    count this vote only, whatever else is stored."""
    f, i = Feedback.__table__, Interaction.__table__
    rank = func.row_number().over(
        partition_by=(f.c.interaction_id, f.c.choice),
        order_by=(case((f.c.end_user == i.c.end_user, 0), else_=1), f.c.created_at, f.c.id))
    ranked = (select(f.c.interaction_id, f.c.choice, f.c.rating, rank.label("rank"))
              .join(i, i.c.id == f.c.interaction_id).where(*where, *([] if per_choice else [f.c.choice == 0]))
              .subquery("ranked"))
    return (select(ranked.c.interaction_id, ranked.c.choice, ranked.c.rating)
            .where(ranked.c.rank == 1).subquery("votes"))


def tenant_of(session: Session, interaction_id: str) -> str | None:
    """The tenant `interaction_id` was served to, or None when no such answer is stored."""
    return session.scalar(select(Interaction.tenant).where(Interaction.id == interaction_id))


def write_interactions(session: Session, rows: Iterable[dict]) -> None:
    """Inserts interaction rows; a row whose id is already stored is skipped (replays are safe)."""
    rows = list(rows)
    if not rows:
        return
    # Core executemany with one statement, not one multi-row VALUES: SQLAlchemy compiles it
    # once and caches it, where a VALUES list of varying length is compiled anew every batch.
    stmt = insert_for(session)(Interaction.__table__).on_conflict_do_nothing(index_elements=["id"])
    session.connection().execute(stmt, rows)


def write_ratings(session: Session, ratings: list[Rating]) -> list[RatingResult]:
    """Stores ratings, replacing an earlier rating by the same user on the same interaction.

    Written with SQLAlchemy Core on the session's connection: this runs for every batch of
    ratings, and the ORM's per-statement bookkeeping was most of its cost.
    """
    conn = session.connection()
    interactions, feedback = Interaction.__table__, Feedback.__table__
    ids = list({r.interaction_id for r in ratings})
    columns = [interactions.c.id, interactions.c.tenant, interactions.c.end_user,
               interactions.c.adapter_version, interactions.c.arm]
    if any(r.choice for r in ratings):  # the texts of every choice, only when a rating needs their number
        columns.append(interactions.c.choices)
    found = {row.id: row for row in conn.execute(select(*columns).where(interactions.c.id.in_(ids)))}
    existing = set(conn.execute(select(feedback.c.interaction_id, feedback.c.choice, feedback.c.end_user)
                                .where(feedback.c.interaction_id.in_(ids))).tuples())
    results, rows = [], {}
    now = utcnow()
    for r in ratings:
        interaction = found.get(r.interaction_id)
        if interaction is None or interaction.tenant != r.tenant:
            results.append(RatingResult(stored=False))
            continue
        user = r.end_user if r.end_user is not None else interaction.end_user
        if r.choice >= (count := choice_count(interaction)):
            results.append(RatingResult(stored=False, end_user=user,
                                        invalid=f"choice: the answer has {count} choice(s)"))
            continue
        key = (r.interaction_id, r.choice, user)
        results.append(RatingResult(stored=True, end_user=user, replaced=key in existing or key in rows,
                                    adapter_version=interaction.adapter_version, arm=interaction.arm))
        rows[key] = {"interaction_id": r.interaction_id, "choice": r.choice, "end_user": user, "rating": r.rating,
                     "comment": r.comment, "created_at": now, "updated_at": now}  # last one wins
    if rows:
        stmt = insert_for(session)(feedback)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["interaction_id", "choice", "end_user"],
            set_={"rating": stmt.excluded.rating, "comment": stmt.excluded.comment,
                  "updated_at": stmt.excluded.updated_at}), list(rows.values()))
    return results


def choice_count(row: object) -> int:
    """How many choices a stored interaction row's answer had (its `choices`, if selected)."""
    choices = getattr(row, "choices", None)
    return len(choices) if isinstance(choices, list) and choices else 1


def purge_before(session: Session, cutoff: datetime) -> int:
    """Deletes interactions (and the feedback on them) older than `cutoff`; returns how many."""
    old = select(Interaction.id).where(Interaction.created_at < cutoff)
    session.execute(delete(Feedback).where(Feedback.interaction_id.in_(old)))
    session.execute(delete(Signal).where(Signal.interaction_id.in_(old) | Signal.other_id.in_(old)))
    return _rowcount(session.execute(delete(Interaction).where(Interaction.created_at < cutoff)))


def purge_user(session: Session, end_user: str) -> int:
    """Deletes one end user's interactions and all feedback they gave; returns interactions deleted."""
    theirs = select(Interaction.id).where(Interaction.end_user == end_user)
    session.execute(delete(Feedback).where(
        (Feedback.end_user == end_user) | Feedback.interaction_id.in_(theirs)))
    session.execute(delete(Signal).where(
        (Signal.end_user == end_user) | Signal.interaction_id.in_(theirs) | Signal.other_id.in_(theirs)))
    return _rowcount(session.execute(delete(Interaction).where(Interaction.end_user == end_user)))


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


def insert_for(session: Session):  # type: ignore[no-untyped-def]
    """The dialect's INSERT, which has ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert

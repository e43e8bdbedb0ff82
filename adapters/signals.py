"""Feedback beyond a thumb (adapters.schema.Signal): written in batches with the ratings.

Each signal is checked against what was served before it is stored: the answer (and, for a
preference, the other answer) must have been served to the sender's tenant, the choice must
exist, and a preference's two answers must answer the same prompt (else it is no pair).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.feedback import RatingResult, choice_count, insert_for
from adapters.schema import Interaction, Signal, utcnow


@dataclass(frozen=True)
class SignalIn:
    interaction_id: str
    choice: int
    kind: str  # a SignalKind value
    end_user: str | None  # None: the user the interaction was served to
    tenant: str
    other_id: str = ""
    other_choice: int = 0
    name: str = ""
    value: float | None = None
    text: str | None = None
    comment: str | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        """The answers it is about."""
        return (self.interaction_id, self.other_id) if self.other_id else (self.interaction_id,)


def write_signals(session: Session, signals: list[SignalIn]) -> list[RatingResult]:
    """Stores each signal that checks out (a later one by the same user replaces it);
    RatingResult.stored is False for an answer not served to the tenant, `invalid` says why
    a served one was refused."""
    conn = session.connection()
    interactions = Interaction.__table__
    ids = list({answer for s in signals for answer in s.ids})
    found = {row.id: row for row in conn.execute(
        select(interactions.c.id, interactions.c.tenant, interactions.c.end_user, interactions.c.adapter_version,
               interactions.c.arm, interactions.c.prompt, interactions.c.choices)
        .where(interactions.c.id.in_(ids)))}
    signal = Signal.__table__
    existing = set(conn.execute(select(signal.c.interaction_id, signal.c.choice, signal.c.end_user, signal.c.kind,
                                       signal.c.name, signal.c.other_id, signal.c.other_choice)
                                .where(signal.c.interaction_id.in_(ids))).tuples())
    results, rows = [], {}
    now = utcnow()
    for s in signals:
        served = [found[answer] for answer in s.ids if answer in found]
        if len(served) < len(s.ids) or any(row.tenant != s.tenant for row in served):
            results.append(RatingResult(stored=False))
            continue
        row = served[0]
        problem = _problem(s, served)
        user = s.end_user if s.end_user is not None else row.end_user
        if problem:
            results.append(RatingResult(stored=False, invalid=problem, end_user=user))
            continue
        key = (s.interaction_id, s.choice, user, s.kind, s.name, s.other_id, s.other_choice)
        results.append(RatingResult(stored=True, end_user=user, replaced=key in existing or key in rows,
                                    adapter_version=row.adapter_version, arm=row.arm))
        rows[key] = {"interaction_id": s.interaction_id, "choice": s.choice, "end_user": user, "kind": s.kind,
                     "other_id": s.other_id, "other_choice": s.other_choice, "name": s.name, "value": s.value,
                     "text": s.text, "comment": s.comment, "created_at": now, "updated_at": now}
    if rows:
        stmt = insert_for(session)(signal)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["interaction_id", "choice", "end_user", "kind", "name", "other_id", "other_choice"],
            set_={"value": stmt.excluded.value, "text": stmt.excluded.text, "comment": stmt.excluded.comment,
                  "updated_at": stmt.excluded.updated_at}), list(rows.values()))
    return results


def _problem(s: SignalIn, served: list) -> str:  # type: ignore[type-arg]
    if s.choice >= choice_count(served[0]):
        return f"choice: the answer has {choice_count(served[0])} choice(s)"
    if s.kind != "preference":
        return ""
    other = served[-1]
    if s.other_choice >= choice_count(other):
        return f"other: that answer has {choice_count(other)} choice(s)"
    if (s.interaction_id, s.choice) == (s.other_id or s.interaction_id, s.other_choice):
        return "preferred and other must be different answers"
    prompts = [row.prompt for row in served]
    if all(isinstance(p, (list, str)) for p in prompts) and prompts[0] != prompts[-1]:
        return "preferred and other must answer the same prompt"
    return ""

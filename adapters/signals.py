"""Feedback beyond a thumb (adapters.schema.Signal): written in batches with the ratings.

Each signal is checked against what was served before it is stored: the answer (and, for a
preference, the other answer) must have been served to the sender's tenant, the choice must
exist, and a preference's two answers must answer the same prompt (else it is no pair).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Text, case, cast, or_, select, tuple_
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
    columns = [interactions.c.id, interactions.c.tenant, interactions.c.end_user, interactions.c.adapter_version,
               interactions.c.arm]
    if any(s.choice or s.other_choice for s in signals):  # every choice's text, only when counted
        columns.append(interactions.c.choices)
    found = {row.id: row for row in conn.execute(select(*columns).where(interactions.c.id.in_(ids)))}
    same_prompt = _same_prompt(session, {(s.interaction_id, s.other_id) for s in signals if s.kind == "preference"})
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
        problem = _problem(s, served, same_prompt)
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


def _same_prompt(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], bool | None]:
    """For each pair of answer ids, whether both were asked the same prompt (None: a prompt
    is not stored). Compared in the database as text: prompts can weigh megabytes, and a
    batch of preferences must not pull them all into the writer."""
    if not pairs:
        return {}
    a, b = Interaction.__table__.alias("a"), Interaction.__table__.alias("b")
    text_a, text_b = cast(a.c.prompt, Text), cast(b.c.prompt, Text)
    unknown = or_(text_a.is_(None), text_b.is_(None), text_a == "null", text_b == "null")
    rows = session.connection().execute(  # each side by its primary key, then the pairs
        select(a.c.id, b.c.id, case((unknown, None), (text_a == text_b, True), else_=False))
        .select_from(a.join(b, tuple_(a.c.id, b.c.id).in_(list(pairs))))
        .where(a.c.id.in_({x for x, _ in pairs}), b.c.id.in_({y for _, y in pairs})))
    return {(x, y): same for x, y, same in rows}


def _problem(s: SignalIn, served: list, same_prompt: dict[tuple[str, str], bool | None]) -> str:  # type: ignore[type-arg]
    if s.choice >= choice_count(served[0]):
        return f"choice: the answer has {choice_count(served[0])} choice(s)"
    if s.kind != "preference":
        return ""
    other = served[-1]
    if s.other_choice >= choice_count(other):
        return f"other: that answer has {choice_count(other)} choice(s)"
    if (s.interaction_id, s.choice) == (s.other_id or s.interaction_id, s.other_choice):
        return "other: preferred and other must be different answers"
    same = same_prompt.get((s.interaction_id, s.other_id))
    if same is None:
        return "preferred: the answers' prompts were not logged (the key logs no prompts), so they cannot be paired"
    if not same:
        return "other: preferred and other must answer the same prompt"
    return ""

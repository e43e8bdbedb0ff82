"""The adapter registry: versions, their lifecycle state, and aliases.

Every state change goes through `transition`, which checks it against `TRANSITIONS` and
writes the audit trail (`adapter_events`: who, when, why, with what numbers). Rows are
locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises writers) so two gateway
replicas, or a replica and the trainer, cannot both move the same version or alias.
Experiments (canary vs champion) live in adapters/experiments.py, on top of this.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapters import integrity, store
from adapters.errors import AdapterNotFound, InvalidAdapter, InvalidTransition
from adapters.schema import AdapterEvent, AdapterState, AdapterVersion, Alias, Experiment, utcnow

S = AdapterState
TRANSITIONS: dict[AdapterState, set[AdapterState]] = {
    S.candidate: {S.approved, S.rejected},
    S.approved: {S.canary, S.champion, S.retired},
    S.canary: {S.champion, S.retired},
    S.champion: {S.retired},
    S.retired: {S.champion},  # rollback to a previous champion
    S.rejected: set(),
}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# a segment's alias (adapters/segments.py): `<alias>@<segment>`; made only by segments.create
SEGMENT_ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}@[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Split:
    """A running experiment, as routing needs it."""

    experiment: int
    canary: str
    share: float
    champion: str | None = None  # what it is tested against (for a segment: fixed for the experiment)


@dataclass(frozen=True)
class RoutingSnapshot:
    """What the gateway needs to route: servable versions, alias champions, running splits."""

    versions: dict[str, str]  # version name -> artifact path
    aliases: dict[str, str | None]  # alias -> champion version name
    splits: dict[str, Split] = field(default_factory=dict)  # alias -> its running experiment
    retired: frozenset[str] = frozenset()  # servable only when pinned; unloaded from replicas
    owners: dict[str, str] = field(default_factory=dict)  # version or alias -> the only tenant that sees it
    parents: dict[str, str] = field(default_factory=dict)  # a segment's alias -> its alias
    learned: frozenset[str] = frozenset()  # aliases whose users are placed in learned segments

    def champion(self, alias: str) -> str | None:
        """What the alias serves outside an experiment: its champion, or for a segment without
        one its parent's (None: the base model)."""
        own = self.aliases.get(alias)
        parent = self.parents.get(alias)
        return own if own is not None or parent is None else self.aliases.get(parent)


def register(session: Session, src: Path, store_root: Path, base_model: str, *,
             prefix: str = "adapter", state: AdapterState = S.candidate,
             limits: integrity.Limits | None = None, kind: str = "policy",
             tenant: str | None = None) -> AdapterVersion:
    """Publishes an adapter folder to the store and records it (idempotent by content), after
    `integrity` found nothing wrong with it. Without the base model's config in `limits`, it is
    looked up by `base_model` (a local folder or the Hugging Face cache). With `tenant`, only
    that tenant's keys see and call it, and only that tenant's aliases may route to it."""
    if not NAME_RE.match(prefix):
        raise InvalidAdapter(f"adapter name prefix {prefix!r} must match {NAME_RE.pattern}")
    limits = limits or integrity.Limits()
    if limits.base_config is None:
        limits = dataclasses.replace(limits, base_config=integrity.base_model_config(base_model))
    if found := integrity.problems(src, limits):
        raise InvalidAdapter(f"{src} is refused: " + "; ".join(found))
    name, path, sha = store.publish(src, store_root, prefix)
    existing = session.get(AdapterVersion, name)
    if existing is not None:
        return existing
    version = AdapterVersion(name=name, base_model=base_model, path=str(path), sha256=sha, state=state, kind=kind,
                             tenant=tenant)
    session.add(version)
    session.flush()
    return version


def transition(session: Session, name: str, new: AdapterState, *, actor: str = "system", reason: str = "",
               alias: str | None = None, numbers: dict | None = None) -> AdapterVersion:
    """The one place an adapter version changes state. Row-locked against concurrent movers."""
    version = session.execute(
        select(AdapterVersion).where(AdapterVersion.name == name).with_for_update()
    ).scalar_one_or_none()
    if version is None:
        raise AdapterNotFound(f"adapter version {name!r} does not exist")
    if new not in TRANSITIONS[version.state]:
        raise InvalidTransition(f"{name} cannot go from {version.state.value} to {new.value}")
    if version.kind != "policy" and new in (S.canary, S.champion):
        raise InvalidTransition(f"{name} is a {version.kind} model (the gate's judge and PPO's reward), "
                                "not a chat adapter: it cannot serve users")
    if alias is not None and new in (S.canary, S.champion) and version.tenant is not None:
        owner = alias_tenant(session, alias)
        if owner != version.tenant:
            raise InvalidTransition(f"{name} belongs to tenant {version.tenant!r}; alias {alias!r} is "
                                    + (f"tenant {owner!r}'s" if owner else "shared by every tenant")
                                    + ": its users must not get another tenant's adapter")
    audit(session, "transition", actor, reason, version=name, alias=alias, numbers=numbers,
          from_state=version.state.value, to_state=new.value)
    version.state = new
    session.flush()
    return version


def audit(session: Session, action: str, actor: str, reason: str = "", *, version: str | None = None,
          alias: str | None = None, numbers: dict | None = None, from_state: str | None = None,
          to_state: str | None = None) -> None:
    session.add(AdapterEvent(action=action, actor=actor, reason=reason or None, version=version, alias=alias,
                             numbers=numbers, from_state=from_state, to_state=to_state))


def human_verdicts(session: Session, name: str) -> dict[str, int]:
    """Wins, losses and ties of `name` in operators' blind comparisons (trainer/compare.py)."""
    tally = {"win": 0, "loss": 0, "tie": 0}
    for numbers in session.scalars(select(AdapterEvent.numbers).where(AdapterEvent.version == name,
                                                                      AdapterEvent.action == "human_compare")):
        tally[(numbers or {}).get("outcome", "tie")] += 1
    return tally


def lock_alias(session: Session, alias: str, create: bool = False, tenant: str | None = None) -> Alias:
    """The alias row, locked for this transaction. Call it first: the touch is a write, so
    SQLite takes its write lock here rather than failing a later upgrade from a stale read.
    A new alias belongs to `tenant` (None: shared by every tenant)."""
    segment = SEGMENT_ALIAS_RE.match(alias) is not None
    if not NAME_RE.match(alias) and not segment:
        raise InvalidAdapter(f"alias {alias!r} must match {NAME_RE.pattern}")
    session.execute(update(Alias).where(Alias.name == alias).values(updated_at=utcnow()))
    row = session.execute(select(Alias).where(Alias.name == alias).with_for_update()).scalar_one_or_none()
    if row is not None and row.deleted_at is not None:
        raise AdapterNotFound(f"segment alias {alias!r} was deleted (`loraloop segments create` restores it)")
    if row is None:
        if not create:
            raise AdapterNotFound(f"alias {alias!r} does not exist")
        if segment:  # it needs its parent and the segment cap: adapters/segments.py
            raise AdapterNotFound(f"segment alias {alias!r} does not exist (`loraloop segments create`)")
        row = Alias(name=alias, tenant=tenant)
        session.add(row)
        session.flush()
    return row


def effective_champion(session: Session, row: Alias) -> str | None:
    """The version `row` serves outside an experiment: its champion, or for a segment without
    one its parent's (RoutingSnapshot.champion, from the database)."""
    if row.champion is not None or row.parent is None:
        return row.champion
    return session.scalar(select(Alias.champion).where(Alias.name == row.parent))


def alias_tenant(session: Session, alias: str) -> str | None:
    """The tenant that owns `alias`; None for a shared (or unknown) alias."""
    return session.scalar(select(Alias.tenant).where(Alias.name == alias))


def set_champion(session: Session, alias: str, name: str, *, actor: str = "system", reason: str = "",
                 numbers: dict | None = None, tenant: str | None = None) -> None:
    """Points `alias` at version `name`, retiring the alias's previous champion (which
    `rollback_champion` can bring back). A new alias is created for `tenant`."""
    row = lock_alias(session, alias, create=True, tenant=tenant)
    if tenant is not None and row.tenant != tenant:
        raise InvalidTransition(f"alias {alias!r} exists and is "
                                + (f"tenant {row.tenant!r}'s" if row.tenant else "shared by every tenant"))
    previous = row.champion
    if previous == name:
        return
    transition(session, name, S.champion, actor=actor, reason=reason, alias=alias, numbers=numbers)
    if previous is not None and not champion_elsewhere(session, previous, alias):
        transition(session, previous, S.retired, actor=actor, reason=f"replaced by {name}", alias=alias)
    row.champion, row.previous_champion = name, previous
    session.flush()


def rollback_champion(session: Session, alias: str, *, actor: str, reason: str = "") -> str | None:
    """Puts the alias's previous champion back; the current one retires. Returns what the
    alias serves now (None: the base model; a segment's first champion gives way to what its
    parent serves)."""
    row = lock_alias(session, alias)
    current, previous = row.champion, row.previous_champion
    if current is not None and previous is None and row.parent is not None:
        # a segment's first champion: back to serving its parent's
        if not champion_elsewhere(session, current, alias):
            transition(session, current, S.retired, actor=actor, reason=reason or "rolled back", alias=alias)
        audit(session, "segment_follow_parent", actor, reason or f"rollback from {current}", alias=alias,
              version=current)
        row.champion = None
        session.flush()
        return effective_champion(session, row)
    if previous is None or current is None:
        raise InvalidTransition(f"alias {alias!r} has no previous champion to roll back to")
    transition(session, previous, S.champion, actor=actor, reason=reason or f"rollback from {current}", alias=alias)
    if not champion_elsewhere(session, current, alias):
        transition(session, current, S.retired, actor=actor, reason=reason or "rolled back", alias=alias)
    row.champion, row.previous_champion = previous, None
    session.flush()
    return previous


def champion_elsewhere(session: Session, name: str, alias: str) -> bool:
    """Whether another alias than `alias` has `name` as its champion."""
    return session.execute(
        select(Alias.name).where(Alias.champion == name, Alias.name != alias)
    ).first() is not None


def snapshot(session: Session) -> RoutingSnapshot:
    rows = list(session.scalars(select(AdapterVersion)))
    versions = {v.name: v.path for v in rows if v.state.servable and v.kind == "policy"}
    retired = frozenset(v.name for v in rows if v.state == S.retired)
    alias_rows = list(session.scalars(select(Alias).where(Alias.deleted_at.is_(None))))
    aliases = {a.name: a.champion for a in alias_rows}
    splits = {e.alias: Split(e.id, e.canary, e.canary_share, e.champion)
              for e in session.scalars(select(Experiment).where(Experiment.status == "running"))}
    owners = {row.name: row.tenant for row in [*rows, *alias_rows] if row.tenant is not None}  # type: ignore[attr-defined]
    parents = {a.name: a.parent for a in alias_rows if a.parent is not None}
    learned = frozenset(a.parent for a in alias_rows if a.parent is not None and a.learned)
    return RoutingSnapshot(versions=versions, aliases=aliases, splits=splits, retired=retired, owners=owners,
                           parents=parents, learned=learned)


def newest(session: Session, *, kind: str, base_model: str) -> AdapterVersion | None:
    """The newest approved version of a kind (e.g. the reward model the gate should use)."""
    return session.scalars(select(AdapterVersion).where(
        AdapterVersion.kind == kind, AdapterVersion.base_model == base_model, AdapterVersion.state == S.approved,
    ).order_by(AdapterVersion.created_at.desc()).limit(1)).first()


def list_versions(session: Session) -> list[AdapterVersion]:
    return list(session.scalars(select(AdapterVersion).order_by(AdapterVersion.created_at)))

"""The adapter registry: versions, their lifecycle state, and aliases.

Every state change goes through `transition`, which checks it against `TRANSITIONS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import store
from adapters.errors import AdapterNotFound, InvalidAdapter, InvalidTransition
from adapters.schema import AdapterState, AdapterVersion, Alias

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


@dataclass(frozen=True)
class RoutingSnapshot:
    """What the gateway needs to route: servable versions and alias champions."""

    versions: dict[str, str]  # version name -> artifact path
    aliases: dict[str, str | None]  # alias -> champion version name


def register(session: Session, src: Path, store_root: Path, base_model: str, *,
             prefix: str = "adapter", state: AdapterState = S.candidate,
             max_rank: int | None = None) -> AdapterVersion:
    """Publishes an adapter folder to the store and records it (idempotent by content)."""
    if not NAME_RE.match(prefix):
        raise InvalidAdapter(f"adapter name prefix {prefix!r} must match {NAME_RE.pattern}")
    config = store.read_config(src)
    if max_rank is not None and int(config.get("r", 0)) > max_rank:
        raise InvalidAdapter(f"adapter rank {config.get('r')} exceeds the engine's max LoRA rank {max_rank}")
    name, path, sha = store.publish(src, store_root, prefix)
    existing = session.get(AdapterVersion, name)
    if existing is not None:
        return existing
    version = AdapterVersion(name=name, base_model=base_model, path=str(path), sha256=sha, state=state)
    session.add(version)
    session.flush()
    return version


def transition(session: Session, name: str, new: AdapterState) -> AdapterVersion:
    """The one place an adapter version changes state. Row-locked against concurrent movers."""
    version = session.execute(
        select(AdapterVersion).where(AdapterVersion.name == name).with_for_update()
    ).scalar_one_or_none()
    if version is None:
        raise AdapterNotFound(f"adapter version {name!r} does not exist")
    if new not in TRANSITIONS[version.state]:
        raise InvalidTransition(f"{name} cannot go from {version.state.value} to {new.value}")
    version.state = new
    session.flush()
    return version


def set_champion(session: Session, alias: str, name: str) -> None:
    """Points `alias` at version `name`, retiring the alias's previous champion."""
    if not NAME_RE.match(alias):
        raise InvalidAdapter(f"alias {alias!r} must match {NAME_RE.pattern}")
    row = session.execute(select(Alias).where(Alias.name == alias).with_for_update()).scalar_one_or_none()
    if row is None:
        row = Alias(name=alias)
        session.add(row)
    previous = row.champion
    if previous == name:
        return
    transition(session, name, S.champion)
    if previous is not None and not _champion_elsewhere(session, previous, alias):
        transition(session, previous, S.retired)
    row.champion = name
    session.flush()


def _champion_elsewhere(session: Session, name: str, alias: str) -> bool:
    return session.execute(
        select(Alias.name).where(Alias.champion == name, Alias.name != alias)
    ).first() is not None


def snapshot(session: Session) -> RoutingSnapshot:
    versions = {v.name: v.path for v in session.scalars(select(AdapterVersion)) if v.state.servable}
    aliases = {a.name: a.champion for a in session.scalars(select(Alias))}
    return RoutingSnapshot(versions=versions, aliases=aliases)


def list_versions(session: Session) -> list[AdapterVersion]:
    return list(session.scalars(select(AdapterVersion).order_by(AdapterVersion.created_at)))

"""Leases: named locks in the database, so they hold across processes and machines.

Taking a lease is one conditional write (insert, or take over an expired one), which both
SQLite and PostgreSQL execute atomically; no file locks, no advisory-lock dialects.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from adapters.schema import Lease, utcnow


def acquire(sessions: sessionmaker, name: str, holder: str, ttl: timedelta) -> bool:
    """True if `holder` now holds lease `name` (taking it over if it had expired)."""
    now = utcnow()
    with sessions.begin() as session:
        taken = session.execute(
            update(Lease).where(Lease.name == name, Lease.expires_at < now)
            .values(holder=holder, expires_at=now + ttl))
        if taken.rowcount:  # type: ignore[attr-defined]
            return True
    try:
        with sessions.begin() as session:
            session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:  # someone holds it and it has not expired
        return False


def release(sessions: sessionmaker, name: str, holder: str) -> None:
    with sessions.begin() as session:
        session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

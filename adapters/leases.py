"""Leases: named locks in the database, so they hold across processes and machines.

Taking a lease is one conditional write (insert, or take over an expired one), which both
SQLite and PostgreSQL execute atomically; no file locks, no advisory-lock dialects.

A holder keeps a lease by renewing it (`renew`, from a heartbeat) well within its TTL, so the
TTL can be short: it bounds how long a holder that died on another machine blocks the others,
not how long the holder may work. `hold` renews inside the caller's transaction, so what that
transaction writes commits only while the lease is still this holder's.

Holders are named `host:pid[:...]`. A lease whose holder ran on this host in a process that
no longer exists (killed with -9, the machine's OOM killer) is taken over at once instead of
after its TTL: a killed training run would otherwise block the next one for hours.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
        current = session.scalar(select(Lease.holder).where(Lease.name == name))
        if current is not None and _dead_here(current):
            taken = session.execute(update(Lease).where(Lease.name == name, Lease.holder == current)
                                    .values(holder=holder, expires_at=now + ttl))
            if taken.rowcount:  # type: ignore[attr-defined]
                return True
    try:
        with sessions.begin() as session:
            session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:  # someone holds it and it has not expired
        return False


def renew(sessions: sessionmaker, name: str, holder: str, ttl: timedelta) -> bool:
    """Extends lease `name` to now + `ttl` if `holder` still holds it; False if it was taken
    over (or released). Never creates a lease: a holder that lost one does not get it back."""
    with sessions.begin() as session:
        return hold(session, name, holder, ttl)


def hold(session: Session, name: str, holder: str, ttl: timedelta) -> bool:
    """`renew` inside the caller's transaction. The update locks the lease row until that
    transaction ends (PostgreSQL: a row lock; SQLite: the database's write lock), so a
    take-over cannot commit between this check and the caller's commit."""
    renewed = session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)
                              .values(expires_at=utcnow() + ttl))
    return bool(renewed.rowcount)  # type: ignore[attr-defined]


def release(sessions: sessionmaker, name: str, holder: str) -> None:
    """Gives lease `name` up, if `holder` still holds it (a taken-over lease stays the taker's)."""
    with sessions.begin() as session:
        session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def _dead_here(holder: str) -> bool:
    """True when `holder` names a process on this host that is gone."""
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False

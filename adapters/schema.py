"""Database tables (SQLAlchemy 2). Changes go through an Alembic migration in `migrations/`."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import DateTime, Enum, ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Scope(str, enum.Enum):
    """What an API key may do: apps call completions and feedback, admins everything."""

    app = "app"
    admin = "admin"


class AdapterState(str, enum.Enum):
    """Lifecycle of an adapter version (DESIGN.md); only the servable ones reach users."""

    candidate = "candidate"
    rejected = "rejected"
    approved = "approved"
    canary = "canary"
    champion = "champion"
    retired = "retired"

    @property
    def servable(self) -> bool:
        return self in (AdapterState.approved, AdapterState.canary, AdapterState.champion,
                        AdapterState.retired)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # Keys are 256-bit random tokens, so a plain SHA-256 is enough to make a leaked table
    # useless; slow password hashes exist for low-entropy secrets and would cost every request.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[Scope] = mapped_column(Enum(Scope, native_enum=False, length=16))
    tenant: Mapped[str] = mapped_column(String(128), default="default")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"

    # Derived from the artifact's content hash and never reused: vLLM may serve stale cached
    # results if a same-named adapter is reloaded in place.
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[AdapterState] = mapped_column(Enum(AdapterState, native_enum=False, length=16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class Alias(Base):
    """A stable name apps use (`default`, one per use case) that points at its champion."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    champion: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.name"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)

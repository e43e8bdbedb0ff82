"""Database tables (SQLAlchemy 2). Changes go through an Alembic migration in `migrations/`."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


DEFAULT_TENANT = "default"  # the tenant of keys made without --tenant and of development mode


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # Keys are 256-bit random tokens, so a plain SHA-256 is enough to make a leaked table
    # useless; slow password hashes exist for low-entropy secrets and would cost every request.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[Scope] = mapped_column(Enum(Scope, native_enum=False, length=16))
    tenant: Mapped[str] = mapped_column(String(128), default=DEFAULT_TENANT)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # False: this key's prompts and answers are not stored, so they never train anything.
    log_prompts: Mapped[bool] = mapped_column(Boolean, default=True)
    # requests per minute; None: the gateway's LORALOOP_RATE_LIMIT_RPM, 0: unlimited
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"

    # Derived from the artifact's content hash and never reused: vLLM may serve stale cached
    # results if a same-named adapter is reloaded in place.
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[AdapterState] = mapped_column(Enum(AdapterState, native_enum=False, length=16))
    # "policy": a chat adapter routing can send users to; "reward": a reward model (the
    # gate's judge and PPO's reward), stored and judged like the others but never served.
    kind: Mapped[str] = mapped_column(String(16), default="policy", server_default="policy")
    # only this tenant's keys may see and call it; None: every tenant
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    # How it was made (data snapshot, config, seed, library versions) and the gate's verdict.
    provenance: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    eval_report: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Alias(Base):
    """A stable name apps use (`default`, one per use case) that points at its champion."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    champion: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.name"), nullable=True)
    # the champion before this one: where `rollback` goes
    previous_champion: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.name"), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)  # None: every tenant's
    # A segment of another alias (adapters/segments.py): named `<parent>@<segment>`, serving
    # the parent's users of that segment; without a champion of its own, the parent's.
    parent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    segment: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # made by segment learning (users put in it by their thumbs), not declared by requests
    learned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # a deleted segment (`loraloop segments delete`): kept for its experiments and history,
    # routed to nobody, its traffic the parent's again; not recreated until an operator does
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # a learned segment's taste, {hashed answer feature: weight} (trainer/taste_clusters.py):
    # where users are placed, fixed when the split was found
    taste: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class SegmentAssignment(Base):
    """The learned segment of one end user of an alias (trainer/segment_learning.py): sticky,
    changed only when the user's own thumbs clearly say they belong elsewhere. Users are
    per tenant: only the tenant whose feedback trains the alias has assignments."""

    __tablename__ = "segment_assignments"
    __table_args__ = (Index("ix_segment_assignments_parent_segment", "parent", "segment"),)

    parent: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    end_user: Mapped[str] = mapped_column(String(256), primary_key=True)
    segment: Mapped[str] = mapped_column(String(32))
    previous_segment: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the audit: where they were
    votes: Mapped[int] = mapped_column(Integer)  # the user's rated answers the assignment was decided on
    similarity: Mapped[float] = mapped_column(Float)  # cosine of their taste to the segment's
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Experiment(Base):
    """An A/B test on an alias: a share of its users get the canary instead of the champion
    until the sequential test (adapters/sequential.py), a guardrail or an operator decides."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    alias: Mapped[str] = mapped_column(ForeignKey("aliases.name"), index=True)
    # None: the alias had no champion yet, the canary is tested against the base model
    champion: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.name"), nullable=True)
    canary: Mapped[str] = mapped_column(ForeignKey("adapter_versions.name"))
    canary_share: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # running | paused | promoted | rolled_back
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    max_hours: Mapped[float] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # "auto" or an operator
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stats: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the last evaluation's numbers


class AdapterEvent(Base):
    """The audit trail: every state change and operator action, who did it, why, with what numbers."""

    __tablename__ = "adapter_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32))  # transition | experiment_start | pause | resume | ...
    version: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    alias: Mapped[str | None] = mapped_column(String(128), nullable=True)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    numbers: Mapped[dict | None] = mapped_column(JSON, nullable=True)


# Interaction kinds whose prompt is stored as chat messages (a Responses API request's
# instructions and input become messages; gateway/openai_api/response_items.py): they train alike.
CONVERSATION_KINDS = ("chat", "responses")


class Interaction(Base):
    """One completion served through the gateway, attributed to who asked and what answered."""

    __tablename__ = "interactions"
    # the experiment judge's rows: one alias's traffic since its experiment started
    __table_args__ = (Index("ix_interactions_requested_model_created_at", "requested_model", "created_at"),
                      # the scheduler's count of each declared segment's answers (adapters/segments.py)
                      Index("ix_interactions_requested_model_segment", "requested_model", "segment"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the completion's id
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    end_user: Mapped[str] = mapped_column(String(256), default="")
    requested_model: Mapped[str] = mapped_column(String(256))
    adapter_version: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    arm: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # chat | completions | responses
    prompt: Mapped[object | None] = mapped_column(JSON, nullable=True)  # messages, or text prompt
    response: Mapped[str | None] = mapped_column(Text, nullable=True)  # the first choice's text
    # every choice's text when the answer had several (`n` > 1): what a rating or verdict on
    # choice k is about; NULL for a one-choice answer
    choices: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[int] = mapped_column(SmallInteger)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    regenerates: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the user's segment as the request declared it ("": none). `requested_model` is then the
    # segment's alias (`<alias>@<segment>`) once it has one, else the alias asked for.
    segment: Mapped[str] = mapped_column(String(32), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Feedback(Base):
    """A thumbs up (+1) or down (-1) on one choice of an interaction; one per (interaction,
    choice, end user)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("interaction_id", "choice", "end_user",
                                       name="uq_feedback_interaction_choice_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"))
    choice: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")  # of an `n` > 1 answer
    end_user: Mapped[str] = mapped_column(String(256), default="")
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # indexed: the scheduler counts each alias's ratings since its last run, every tick
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class SignalKind(str, enum.Enum):
    """Feedback beyond a thumb (gateway/feedback/schemas.py says how each is sent)."""

    preference = "preference"  # this answer is better than `other_id`'s (same prompt): a DPO pair
    edit = "edit"  # the user corrected the answer to `text`: an SFT example, and a pair over the original
    score = "score"  # a named number (`name`, `value`): reported and exported, not trained on
    copied = "copied"  # implicit: the user copied the answer (a weak thumbs up)
    regenerated = "regenerated"  # implicit: the user asked for another answer (a weak thumbs down)


IMPLICIT_SIGNALS = (SignalKind.copied.value, SignalKind.regenerated.value)


class Signal(Base):
    """One piece of feedback beyond a thumb on one choice of an interaction, by one end
    user; sent again (same answer, choice, user, kind, name and other answer), it replaces
    the earlier one."""

    __tablename__ = "feedback_signals"
    __table_args__ = (UniqueConstraint("interaction_id", "choice", "end_user", "kind", "name", "other_id",
                                       "other_choice", name="uq_feedback_signals_once"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"))
    choice: Mapped[int] = mapped_column(SmallInteger, default=0)
    end_user: Mapped[str] = mapped_column(String(256), default="")
    kind: Mapped[str] = mapped_column(String(16))  # a SignalKind
    # preference: the answer this one was preferred over ("" otherwise); checked on write
    # (same tenant, same prompt), not a foreign key: "" is no interaction
    other_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    other_choice: Mapped[int] = mapped_column(SmallInteger, default=0)
    name: Mapped[str] = mapped_column(String(64), default="")  # score: its name
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # score: its value
    text: Mapped[str | None] = mapped_column(Text, nullable=True)  # edit: the corrected answer
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Lease(Base):
    """A named lock held until it expires: one training run at a time across every replica,
    and a run that crashed stops blocking others once its lease runs out."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(String(16))
    alias: Mapped[str | None] = mapped_column(String(128), nullable=True)  # whose candidate it trained
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # running | approved | rejected | failed
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

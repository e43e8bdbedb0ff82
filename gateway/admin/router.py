"""Admin routes: adapters, aliases and experiments. Every route here requires an admin key;
every action is audited under the key's name, like the CLI's under the operator's user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import experiments, registry, segment_assignments, segments
from adapters.errors import AdapterNotFound
from adapters.schema import AdapterEvent, AdapterVersion, Experiment
from gateway.deps import Admin, State
from gateway.state import GatewayState

router = APIRouter(prefix="/admin")


class StartExperiment(BaseModel):
    alias: str
    canary: str = Field(description="An approved adapter version.")
    share: float | None = Field(None, gt=0, lt=1, description="Share of users sent to the canary.")
    max_hours: float | None = Field(None, gt=0, description="Undecided this long: rolled back.")
    reason: str = ""


class Action(BaseModel):
    reason: str = ""


async def _in_db(state: GatewayState, work: Callable[[Session], Any], write: bool = False) -> Any:
    def run() -> Any:
        with (state.sessions.begin() if write else state.sessions()) as session:
            return work(session)

    result = await anyio.to_thread.run_sync(run)
    if write:
        await state.router.refresh()  # this replica routes by the change at once,
        await state.sync_fleet()  # with a new canary loaded before its users get it
    return result


def version_json(v: AdapterVersion) -> dict:
    return {"name": v.name, "kind": v.kind, "state": v.state.value, "base_model": v.base_model, "sha256": v.sha256,
            "created_at": v.created_at.isoformat()}


def experiment_json(e: Experiment) -> dict:
    return {"id": e.id, "alias": e.alias, "champion": e.champion, "canary": e.canary,
            "canary_share": e.canary_share, "status": e.status, "started_at": e.started_at.isoformat(),
            "ended_at": e.ended_at.isoformat() if e.ended_at else None, "max_hours": e.max_hours,
            "decided_by": e.decided_by, "reason": e.reason, "stats": e.stats}


def event_json(ev: AdapterEvent) -> dict:
    return {"at": ev.at.isoformat(), "action": ev.action, "version": ev.version, "alias": ev.alias,
            "from": ev.from_state, "to": ev.to_state, "actor": ev.actor, "reason": ev.reason, "numbers": ev.numbers}


@router.get("/adapters")
async def list_adapters(state: State, _: Admin) -> dict:
    data = await _in_db(state, lambda s: [version_json(v) for v in registry.list_versions(s)])
    return {"data": data, "aliases": state.router.table.aliases}


@router.get("/adapters/{name}")
async def show_adapter(name: str, state: State, _: Admin) -> dict:
    def load(session: Session) -> dict:
        version = session.get(AdapterVersion, name)
        if version is None:
            raise AdapterNotFound(f"adapter version {name!r} does not exist", param="name")
        events = session.scalars(select(AdapterEvent).where(AdapterEvent.version == name).order_by(AdapterEvent.id))
        return {**version_json(version), "eval_report": version.eval_report, "provenance": version.provenance,
                "human_eval": registry.human_verdicts(session, name), "history": [event_json(ev) for ev in events]}

    return await _in_db(state, load)


@router.get("/experiments")
async def list_experiments(state: State, _: Admin) -> dict:
    return {"data": await _in_db(state, lambda s: [
        experiment_json(e) for e in s.scalars(select(Experiment).order_by(Experiment.id.desc()))])}


@router.post("/experiments")
async def start_experiment(body: StartExperiment, state: State, admin: Admin) -> dict:
    cfg = state.settings.experiments
    return await _in_db(state, lambda s: experiment_json(experiments.start(
        s, body.alias, body.canary, body.share or cfg.default_share, body.max_hours or cfg.default_max_hours,
        actor=admin.name, reason=body.reason)), write=True)


@router.post("/aliases/{alias}/promote")
async def promote(alias: str, body: Action, state: State, admin: Admin) -> dict:
    return await _in_db(state, lambda s: experiment_json(
        experiments.promote(s, alias, actor=admin.name, reason=body.reason or "operator promoted")), write=True)


@router.post("/aliases/{alias}/rollback")
async def rollback(alias: str, body: Action, state: State, admin: Admin) -> dict:
    serving = await _in_db(state, lambda s: experiments.rollback(
        s, alias, actor=admin.name, reason=body.reason or "operator rolled back"), write=True)
    return {"alias": alias, "champion": serving}


@router.post("/aliases/{alias}/pause")
async def pause(alias: str, body: Action, state: State, admin: Admin) -> dict:
    return await _in_db(state, lambda s: experiment_json(
        experiments.pause(s, alias, actor=admin.name, reason=body.reason)), write=True)


@router.post("/aliases/{alias}/resume")
async def resume(alias: str, body: Action, state: State, admin: Admin) -> dict:
    return await _in_db(state, lambda s: experiment_json(
        experiments.resume(s, alias, actor=admin.name, reason=body.reason)), write=True)


class CreateSegment(BaseModel):
    segment: str = Field(description="Lower-case letters, digits, '_' and '-', at most 32.")
    reason: str = ""


@router.get("/segments")
async def list_segments(state: State, _: Admin, alias: str | None = None) -> dict:
    return {"data": await _in_db(state, lambda s: segments.overview(s, alias))}


@router.get("/segments/{alias}")
async def show_segment(alias: str, state: State, _: Admin) -> dict:
    return await _in_db(state, lambda s: segments.describe(s, alias))


@router.get("/segments/{alias}/users")
async def segment_users(alias: str, state: State, _: Admin, limit: int = Query(100, ge=1, le=10_000),
                        after: str = "") -> dict:
    """A learned segment's users, by id from `after` (page with the last id of the previous page)."""
    return {"data": await _in_db(state, lambda s: segment_assignments.members(s, alias, limit, after))}


@router.delete("/segments/{alias}")
async def delete_segment(alias: str, state: State, admin: Admin, reason: str = "") -> dict:
    """Its users get the alias's champion again (adapters/segments.py `delete`)."""
    def delete(session: Session) -> dict:
        row = segments.delete(session, alias, actor=admin.name, reason=reason)
        return {"alias": row.name, "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None}

    return await _in_db(state, delete, write=True)


@router.post("/aliases/{alias}/segments")
async def create_segment(alias: str, body: CreateSegment, state: State, admin: Admin) -> dict:
    def create(session: Session) -> dict:
        row = segments.create(session, alias, body.segment, actor=admin.name, reason=body.reason,
                              max_segments=state.settings.max_segments)
        return {"alias": row.name, "parent": row.parent, "segment": row.segment}

    return await _in_db(state, create, write=True)

"""Admin routes. Every route here requires an admin key."""

from __future__ import annotations

import anyio
from fastapi import APIRouter

from adapters import registry
from gateway.deps import Admin, State

router = APIRouter(prefix="/admin")


@router.get("/adapters")
async def list_adapters(state: State, _: Admin) -> dict:
    def load() -> list[dict]:
        with state.sessions() as session:
            return [{"name": v.name, "state": v.state.value, "base_model": v.base_model,
                     "sha256": v.sha256, "created_at": v.created_at.isoformat()}
                    for v in registry.list_versions(session)]

    return {"data": await anyio.to_thread.run_sync(load),
            "aliases": state.router.table.aliases}

"""What the app's lifespan opens and every route shares."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from adapters.fleet import Fleet
from gateway.auth import Authenticator
from gateway.feedback.service import RatingWriter
from gateway.interaction_log import InteractionLog
from gateway.metrics import GatewayMetrics
from gateway.openai_api.proxy import Forwarder
from gateway.routing import Router
from gateway.settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    client: httpx.AsyncClient
    fleet: Fleet
    router: Router
    auth: Authenticator
    forwarder: Forwarder
    log: InteractionLog
    ratings: RatingWriter
    metrics: GatewayMetrics

    async def sync_fleet(self) -> None:
        """Replicas load what aliases route to and free retired versions (Fleet.reconcile)."""
        await self.fleet.reconcile(self.router.live_versions(), self.router.table.retired)

"""What every route shares, and how it opens and closes: `GatewayState.open(settings)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.fleet import Fleet
from gateway.auth import Authenticator
from gateway.feedback.service import RatingWriter
from gateway.interaction_log import InteractionLog
from gateway.metrics import GatewayMetrics
from gateway.openai_api.proxy import Forwarder
from gateway.rate_limit import RateLimiter
from gateway.routing import Router
from gateway.settings import Settings

logger = logging.getLogger(__name__)


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
    _warned_live: int = field(default=0, init=False)  # live versions when the slots warning was last logged

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, metrics: GatewayMetrics, transport: httpx.AsyncBaseTransport | None = None,
                   migrate: bool = True) -> AsyncIterator[GatewayState]:
        """Opens the database (migrated unless `migrate` is false), the shared upstream client
        (over `transport` when given: httpx.MockTransport in tests) and everything built on
        them; closes them in reverse order."""
        engine = make_engine(settings.db_url)
        try:
            if migrate:
                await anyio.to_thread.run_sync(upgrade, engine)
            sessions = make_sessionmaker(engine)
            timeout = httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s)
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=64)
            headers = {"authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else None
            async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits,
                                         headers=headers) as client:
                fleet = Fleet(settings.upstreams, client)
                router = Router(sessions, settings.served_model_name, ready=fleet.holds)
                limiter = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_burst_s,
                                      settings.rate_limit_redis_url, settings.rate_limit_redis_prefix)
                auth = Authenticator(None if settings.auth == "none" else sessions, settings.auth_cache_ttl_s,
                                     limiter, settings.auth_failures_per_minute)
                log = InteractionLog(sessions, settings.log_queue_size, settings.log_overflow, metrics,
                                     max_bytes=settings.log_queue_max_bytes)
                try:
                    yield cls(settings, engine, sessions, client, fleet, router, auth,
                              Forwarder(fleet, client, log, metrics), log, RatingWriter(sessions, log, metrics),
                              metrics)
                finally:
                    await limiter.aclose()
        finally:
            engine.dispose()

    async def sync_fleet(self) -> None:
        """Replicas load what aliases route to and free retired versions (Fleet.reconcile)."""
        live = self.router.live_versions()
        slots = self.settings.engine.max_loras
        if len(live) > slots and len(live) != self._warned_live:
            # Segments' champions and canaries are live together; past vLLM's --max-loras a
            # batch holds at most that many adapters and the rest wait for the next one.
            logger.warning("%d adapter versions are live (champions and canaries of every alias and segment) but "
                           "vLLM batches at most %d (LORALOOP_ENGINE__MAX_LORAS, what `loraloop serve` starts it "
                           "with): requests for the others wait for a batch of their own; raise it or lower "
                           "LORALOOP_MAX_SEGMENTS", len(live), slots)
        self._warned_live = len(live)
        await self.fleet.reconcile(live, self.router.table.retired)

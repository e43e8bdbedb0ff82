"""The gateway's app factory. `create_app(settings)` builds a FastAPI app whose lifespan opens
the database, the shared upstream client and the fleet, and keeps two loops running:
replica health probes and registry refreshes."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import httpx
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from adapters import leases
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.experiments import judge_all
from adapters.fleet import Fleet
from adapters.stats import read_stats
from gateway.admin.router import router as admin_router
from gateway.auth import Authenticator
from gateway.deps import State
from gateway.errors import install_handlers
from gateway.feedback.router import router as feedback_router
from gateway.feedback.service import RatingWriter
from gateway.interaction_log import InteractionLog
from gateway.listeners import AdminPortOnly
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.openai_api.proxy import Forwarder
from gateway.openai_api.router import router as openai_router
from gateway.openapi import install as install_openapi
from gateway.rate_limit import RateLimiter
from gateway.routing import Router
from gateway.settings import Settings
from gateway.state import GatewayState

log = logging.getLogger(__name__)


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
               migrate: bool = True) -> FastAPI:
    """`transport` replaces the network under the upstream client (httpx.MockTransport in tests)."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url)
        if migrate:
            await anyio.to_thread.run_sync(upgrade, engine)
        sessions = make_sessionmaker(engine)
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=64)
        async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as client:
            fleet = Fleet(settings.upstreams, client)
            router = Router(sessions, settings.served_model_name, ready=fleet.holds)
            auth = Authenticator(None if settings.auth == "none" else sessions, settings.auth_cache_ttl_s,
                                 RateLimiter(settings.rate_limit_rpm, settings.rate_limit_burst_s,
                                             settings.rate_limit_redis_url, settings.rate_limit_redis_prefix))
            log = InteractionLog(sessions, settings.log_queue_size, settings.log_overflow, metrics,
                                max_bytes=settings.log_queue_max_bytes)
            state = GatewayState(settings, engine, sessions, client, fleet, router, auth,
                                 Forwarder(fleet, client, log, metrics), log,
                                 RatingWriter(sessions, log, metrics), metrics)
            app.state.gateway = state
            metrics.bind(state)
            await fleet.probe_all()
            _adopt_base_model(state)
            await router.refresh()
            await _refresh_stats(state)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_every, settings.health_interval_s, lambda: _probe(state))
                tasks.start_soon(_every, settings.registry_refresh_s, router.refresh)
                tasks.start_soon(_every, settings.stats_refresh_s, lambda: _refresh_stats(state))
                tasks.start_soon(_every, settings.experiments.check_interval_s, lambda: _judge_experiments(state))
                tasks.start_soon(log.run)
                tasks.start_soon(state.ratings.run)
                yield
                with anyio.move_on_after(10):  # a graceful stop writes what is queued
                    await log.flush()
                tasks.cancel_scope.cancel()
        engine.dispose()

    app = FastAPI(title="loraloop gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_handlers(app, settings.retry_after_s)
    app.include_router(openai_router)
    app.include_router(feedback_router)
    if settings.admin_api:
        app.include_router(admin_router)
        if settings.admin_port:
            app.add_middleware(AdminPortOnly, admin_port=settings.admin_port)
    install_openapi(app)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(state: State) -> JSONResponse:
        """Readiness: at least one model server is up, so completions can be served."""
        up = [r.url for r in state.fleet.replicas if r.healthy]
        body = {"ready": bool(up), "healthy_upstreams": up, "base_model": state.router.base_model,
                "upstreams": [{"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight,
                               "adapters_loaded": len(r.loaded)} for r in state.fleet.replicas]}
        return JSONResponse(body, 200 if up else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition (gateway/metrics.py says what is in it)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _adopt_base_model(state: GatewayState) -> None:
    """Without a configured name, apps call the base model by the name the replicas use."""
    if not state.settings.served_model_name and (name := state.fleet.base_model()):
        state.router.base_model = name


async def _probe(state: GatewayState) -> None:
    await state.fleet.probe_all()
    _adopt_base_model(state)
    await state.sync_fleet()


async def _judge_experiments(state: GatewayState) -> None:
    """One gateway replica at a time (a lease) judges the running experiments and acts."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{id(state)}"
    ttl = timedelta(seconds=max(30.0, 3 * state.settings.experiments.check_interval_s))

    def judge() -> None:
        if not leases.acquire(state.sessions, "experiments", holder, ttl):
            return
        try:
            for alias, decision, why in judge_all(state.sessions, state.settings.experiments.policy()):
                if decision != "continue":
                    log.warning("experiment on %s: %s (%s)", alias, decision, why)
        finally:
            leases.release(state.sessions, "experiments", holder)

    await anyio.to_thread.run_sync(judge)
    await state.router.refresh()
    await state.sync_fleet()


async def _refresh_stats(state: GatewayState) -> None:
    window = timedelta(minutes=state.settings.drift_window_minutes)

    def read() -> None:
        with state.sessions() as session:
            state.metrics.db_stats = read_stats(session, window)

    await anyio.to_thread.run_sync(read)


async def _every(seconds: float, job) -> None:  # type: ignore[no-untyped-def]
    while True:
        await anyio.sleep(seconds)
        try:
            await job()
        except Exception:  # a failed round must not end the loop
            log.exception("background job failed")

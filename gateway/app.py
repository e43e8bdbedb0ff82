"""The gateway's app factory. `create_app(settings)` builds a FastAPI app whose lifespan
opens the shared state (gateway/state.py) and runs the background loops
(gateway/background.py) while it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.errors import Forbidden, LoraloopError
from adapters.schema import Scope
from gateway import background
from gateway.admin.router import router as admin_router
from gateway.auth import client_address
from gateway.deps import State
from gateway.errors import install_handlers
from gateway.feedback.router import router as feedback_router
from gateway.listeners import AdminPortOnly, on_admin_port
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.openai_api.router import router as openai_router
from gateway.openapi import install as install_openapi
from gateway.settings import Settings
from gateway.state import GatewayState


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
               migrate: bool = True) -> FastAPI:
    """`transport` replaces the network under the upstream client (httpx.MockTransport in tests)."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with GatewayState.open(settings, metrics, transport, migrate) as state:
            app.state.gateway = state
            metrics.bind(state)
            async with background.running(state):
                yield

    app = FastAPI(title="loraloop gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_handlers(app, settings.retry_after_s)
    app.include_router(openai_router)
    app.include_router(feedback_router)
    if settings.admin_api:
        app.include_router(admin_router)
    if settings.admin_port:  # the operators' port: /metrics and /ready's details, also without the admin API
        app.add_middleware(AdminPortOnly, admin_port=settings.admin_port)
    install_openapi(app)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request, state: State) -> JSONResponse:
        """Readiness: at least one model server is up, so completions can be served. Which
        ones, and what they hold, only for operators (see `operator_view`)."""
        up = [r.url for r in state.fleet.replicas if r.healthy]
        body: dict = {"ready": bool(up)}
        if await operator_view(request, state):
            body |= {"healthy_upstreams": up, "base_model": state.router.base_model,
                     "upstreams": [{"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight,
                                    "adapters_loaded": len(r.loaded)} for r in state.fleet.replicas]}
        return JSONResponse(body, 200 if up else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request, state: State) -> Response:
        """Prometheus exposition (gateway/metrics.py says what is in it); operators only."""
        if not await operator_view(request, state):
            await state.auth.authenticate(request.headers.get("authorization"), client_address(request),
                                          charge=False)
            raise Forbidden("/metrics needs an admin key (or the admin port, or LORALOOP_METRICS_PUBLIC=true).")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def operator_view(request: Request, state: GatewayState) -> bool:
    """Whether `request` may see what operators see: upstream URLs, alias and version names
    (tenants own some of them). Yes on the admin port, with an admin key, in development
    without keys, or everywhere with LORALOOP_METRICS_PUBLIC=true (a trusted network)."""
    settings = state.settings
    if settings.metrics_public or settings.auth == "none" or on_admin_port(request.scope, settings.admin_port):
        return True
    authorization = request.headers.get("authorization")
    if not authorization:
        return False
    try:
        principal = await state.auth.authenticate(authorization, client_address(request), charge=False)
    except LoraloopError:
        return False
    return principal.scope == Scope.admin

"""The ports the gateway answers on. By default one: the API, the admin API, /metrics.

With LORALOOP_ADMIN_PORT the admin API (`/admin/*`) and /metrics answer only on that port
(bound to LORALOOP_ADMIN_HOST, loopback by default), and that port answers nothing else but
/health and /ready: the public port can face the internet while operators (and Prometheus)
reach the admin surface through a private network, a firewall rule or an SSH tunnel. LORALOOP_ADMIN_API=false
removes the admin API altogether (operators then use the CLI on the database).
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_body

ADMIN_PREFIX = "/admin"
BOTH_PORTS = ("/health", "/ready")


def on_admin_port(scope: Scope, admin_port: int | None) -> bool:
    return bool(admin_port) and (scope.get("server") or (None, None))[1] == admin_port


class AdminPortOnly:
    """ASGI middleware: /admin/* and /metrics only on `admin_port`, and only they, /health
    and /ready there."""

    def __init__(self, app: ASGIApp, admin_port: int):
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            is_admin = path in (ADMIN_PREFIX, "/metrics") or path.startswith(ADMIN_PREFIX + "/")
            if is_admin != on_admin_port(scope, self.admin_port) and path not in BOTH_PORTS:
                where = "the admin port" if is_admin else "the API port"
                body = error_body(f"No route {path} here; it is served on {where}.", "not_found_error", "not_found")
                await JSONResponse(body, 404)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def run(app: ASGIApp, host: str, port: int, admin_host: str, admin_port: int | None,
        access_log: bool, forwarded_allow_ips: str = "127.0.0.1") -> None:
    """Serves `app` on the API port, and on the admin port when one is set, in one event loop.
    The API server owns the lifespan and the signals; the admin listener starts after the
    lifespan is up and stops with the API server. X-Forwarded-For is believed only from
    `forwarded_allow_ips` (the proxies in front: a client could name any address otherwise,
    and the per-address limits would count nothing)."""
    api = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log,
                                        forwarded_allow_ips=forwarded_allow_ips))
    if not admin_port:
        api.run()
        return
    admin = uvicorn.Server(uvicorn.Config(app, host=admin_host, port=admin_port, log_level="info",
                                          access_log=access_log, lifespan="off"))
    admin.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    async def both() -> None:
        api_task = asyncio.create_task(api.serve())
        while not api.started and not api_task.done():
            await asyncio.sleep(0.05)
        admin_task = asyncio.create_task(admin.serve())
        try:
            await api_task
        finally:
            admin.should_exit = True
            await asyncio.gather(admin_task, return_exceptions=True)

    asyncio.run(both())

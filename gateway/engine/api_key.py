"""The embedded vLLM's key on every route: an ASGI middleware vLLM loads (`--middleware`).

vLLM's own `--api-key` (VLLM_API_KEY) checks the key only under /v1, /v2, /inference and
/cohere (vllm 0.32-0.33, `vllm/entrypoints/serve/middleware/authenticate.py`), while with
runtime LoRA updating on it also serves adapter loading at `POST /adapters` and
`DELETE /adapters/{name}` (SageMaker's routes, same handlers), and inference at
`/invocations`, unchecked. On loopback any local process could use them; so the key the
supervisor generates is required here on everything but the probes.

Runs inside the vLLM process only (the gateway never imports it); starlette is vLLM's.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# What answers without the key: the supervisor's and the fleet's health probe, Prometheus.
OPEN_PATHS = frozenset({"/health", "/metrics"})


class RequireApiKey:
    """Refuses with 401 any HTTP or WebSocket request without `Authorization: Bearer
    $VLLM_API_KEY`, but for OPEN_PATHS. vLLM adds it with no arguments, so the key comes from
    the environment, where the supervisor put it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        if not key:  # fail closed: a guard without a key would let everything through
            raise RuntimeError("RequireApiKey needs VLLM_API_KEY")
        self.digest = hashlib.sha256(key.encode()).digest()

    def authorized(self, scope: Scope) -> bool:
        """True when the request carries the key as a Bearer token (compared in constant time)."""
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(hashlib.sha256(token).digest(), self.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or self.authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)

"""Routes of the OpenAI-compatible API. Thin: parsing in `requests`, forwarding in `proxy`.

The two completion routes are plain Starlette routes, not FastAPI ones: they are the hot
path, and FastAPI's per-request dependency resolution was a measurable share of the
gateway's CPU cost (bench/README.md). They authenticate inline instead.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.deps import Caller, State
from gateway.openai_api.requests import parse_completion_request, read_body
from gateway.state import GatewayState

router = APIRouter(prefix="/v1")


async def _complete(kind: str, request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    await state.auth.authenticate(request.headers.get("authorization"))
    body = parse_completion_request(await read_body(request, state.settings.max_body_bytes), kind)
    route = await state.router.resolve(body["model"])
    return await state.forwarder.forward(kind, body, route)


async def chat_completions(request: Request) -> Response:
    return await _complete("chat", request)


async def completions(request: Request) -> Response:
    return await _complete("completions", request)


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])


@router.get("/models")
async def list_models(state: State, _: Caller) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": "loraloop",
         "kind": kind, **({"champion": state.router.table.aliases.get(model_id)} if kind == "alias" else {})}
        for model_id, kind in state.router.model_ids()
    ]}

"""Routes of the OpenAI-compatible API. Thin: parsing in `requests`, forwarding in `proxy`."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import Caller, State
from gateway.openai_api.requests import parse_completion_request, read_body

router = APIRouter(prefix="/v1")


async def _complete(kind: str, request: Request, state: State) -> Response:
    body = parse_completion_request(await read_body(request, state.settings.max_body_bytes), kind)
    route = await state.router.resolve(body["model"])
    return await state.forwarder.forward(kind, body, route)


@router.post("/chat/completions")
async def chat_completions(request: Request, state: State, _: Caller) -> Response:
    return await _complete("chat", request, state)


@router.post("/completions")
async def completions(request: Request, state: State, _: Caller) -> Response:
    return await _complete("completions", request, state)


@router.get("/models")
async def list_models(state: State, _: Caller) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": "loraloop",
         "kind": kind, **({"champion": state.router.table.aliases.get(model_id)} if kind == "alias" else {})}
        for model_id, kind in state.router.model_ids()
    ]}

"""Routes of the OpenAI-compatible API. Thin: parsing in `requests`, forwarding in `proxy`,
the Responses API's stored answers in `responses`.

The completion routes are plain Starlette routes, not FastAPI ones: they are the hot
path, and FastAPI's per-request dependency resolution was a measurable share of the
gateway's CPU cost (bench/README.md). They authenticate inline instead.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from adapters.segments import check_segment
from gateway.auth import client_address
from gateway.deps import Caller, State
from gateway.interaction_log import Record
from gateway.openai_api import responses
from gateway.openai_api.requests import MAX_LENGTHS, check_length, parse_completion_request_async, read_body
from gateway.openai_api.responses import stored_replica
from gateway.state import GatewayState

router = APIRouter(prefix="/v1")


async def _complete(kind: str, request: Request) -> Response:
    started = time.perf_counter()
    state: GatewayState = request.app.state.gateway
    caller = await state.auth.authenticate(request.headers.get("authorization"), client_address(request))
    state.log.admit()
    raw = await read_body(request, state.settings.max_body_bytes)
    body = await parse_completion_request_async(raw, kind)
    headers = request.headers
    end_user = body.get("user") or headers.get("x-loraloop-user") or ""
    regenerates = body.pop("regenerates", None) or headers.get("x-loraloop-regenerates")  # not for vLLM
    for name, value in (("user", end_user), ("regenerates", regenerates)):  # headers too
        check_length(name, value, MAX_LENGTHS[name])
    previous = body.get("previous_response_id") if kind == "responses" else None
    # a conversation continues on the replica that stores it (responses.py)
    pinned = await stored_replica(state, previous, caller.tenant, "previous_response_id") if previous else None
    segment = headers.get("x-loraloop-segment") or ""  # the app's cohort for this user (adapters/segments.py)
    route = await state.router.resolve(body["model"], end_user, caller.tenant, segment and check_segment(segment))
    # the metrics middleware labels the request with its route
    request.scope.setdefault("state", {})["route_labels"] = (route.alias or "", route.adapter or "", route.arm)
    record = Record(
        id="", key_id=caller.key_id, tenant=caller.tenant, end_user=end_user,
        # a segment's alias where it served (its experiments and training read its own rows)
        requested_model=route.alias or body["model"], segment=route.segment,
        adapter_version=route.adapter, arm=route.arm, kind=kind,
        # the raw bytes, not the parsed body: they cost what they weigh while queued (parsed,
        # 4 MiB of `{}` was 97 MiB), and the writer thread parses them, off the request path
        request_body=raw if caller.log_prompts else b"",
        regenerates=regenerates, streamed=bool(body.get("stream")), started=started,
        keep_text=caller.log_prompts, previous=previous)
    return await state.forwarder.forward(kind, body, route, record, request, pinned)


async def chat_completions(request: Request) -> Response:
    return await _complete("chat", request)


async def completions(request: Request) -> Response:
    return await _complete("completions", request)


async def create_response(request: Request) -> Response:
    return await _complete("responses", request)


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])
router.add_route("/v1/responses", create_response, methods=["POST"])
router.add_route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"])


@router.get("/models")
async def list_models(state: State, caller: Caller) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": "loraloop",
         "kind": kind, **({"champion": state.router.table.champion(model_id)} if kind == "alias" else {})}
        for model_id, kind in state.router.model_ids(caller.tenant)
    ]}

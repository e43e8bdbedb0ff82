"""What the Responses API needs beyond a completion: its stored answers.

`POST /v1/responses` is served like a chat completion (routed by `model`, attributed,
logged, rateable by its id; router.py). vLLM keeps what it stores in the memory of the
replica that answered (ids.py), so two things must reach that replica: a request that
continues a conversation (`previous_response_id`) and `GET /v1/responses/{id}`. They do, or
are refused with a clear error: 404 for an id this key's tenant was never served (another
tenant's conversation is not theirs to read or continue), 503 `response_store_unavailable`
while the replica that stores it is down. (No cancel: background responses, the only kind
vLLM cancels, are refused; a client stops a foreground one by closing its connection.)
"""

from __future__ import annotations

import asyncio

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response

from adapters.errors import NotFound, StoreUnavailable, UpstreamTimeout
from adapters.feedback import tenant_of
from adapters.fleet import Replica
from gateway.auth import client_address
from gateway.openai_api.ids import replica_of
from gateway.openai_api.proxy import BROKEN, UNREACHABLE, ClosingStreamingResponse
from gateway.state import GatewayState

# A response served a moment ago may still wait in the interaction log (as for ratings).
PENDING_WAIT_S = 30.0


async def stored_replica(state: GatewayState, response_id: str, tenant: str, param: str | None = None) -> Replica:
    """The healthy replica that stores `response_id`, served to `tenant`; else NotFound or
    StoreUnavailable."""
    if await _tenant_of(state, response_id) != tenant:
        raise NotFound(f"No response with id {response_id!r} was served to this API key's tenant.", param=param)
    replica = replica_of(state.fleet, response_id)
    if replica is None:
        raise NotFound(f"Response {response_id!r} was stored by a model server that is no longer in this "
                       "gateway's fleet.", param=param)
    if not replica.healthy:
        raise StoreUnavailable(f"The model server that stores response {response_id!r} is unavailable; retry "
                               "shortly, or start over without it.")
    return replica


async def _tenant_of(state: GatewayState, response_id: str) -> str | None:
    log = state.log
    if response_id in log.pending:
        with anyio.move_on_after(PENDING_WAIT_S):
            await log.wait_written(response_id)
    found = await anyio.to_thread.run_sync(_lookup, state, response_id)
    if found is None and response_id not in log.pending:
        # Another gateway replica may have served it a moment ago: give its log time to flush.
        await asyncio.sleep(3 * log.flush_interval_s)
        found = await anyio.to_thread.run_sync(_lookup, state, response_id)
    return found


def _lookup(state: GatewayState, response_id: str) -> str | None:
    with state.sessions() as session:
        return tenant_of(session, response_id)


async def retrieve(request: Request) -> Response:
    """`GET /v1/responses/{id}`: the stored response, from the replica that stores it
    (`?stream=true&starting_after=N` replays its events, as vLLM does)."""
    state: GatewayState = request.app.state.gateway
    caller = await state.auth.authenticate(request.headers.get("authorization"), client_address(request))
    response_id = request.path_params["response_id"]
    replica = await stored_replica(state, response_id, caller.tenant)
    try:
        upstream = await state.client.send(state.client.build_request(
            "GET", f"{replica.url}/v1/responses/{response_id}", params=request.query_params), stream=True)
    except (*UNREACHABLE, *BROKEN) as exc:  # it died since its last probe
        state.fleet.mark_down(replica, exc)
        raise StoreUnavailable(f"The model server that stores response {response_id!r} is unavailable; retry "
                               "shortly.") from None
    except httpx.TimeoutException as exc:
        state.fleet.report_failure(replica, exc)
        raise UpstreamTimeout(f"The model server that stores response {response_id!r} did not answer in "
                              "time.") from None
    headers = {"content-type": upstream.headers.get("content-type", "application/json")}
    if not headers["content-type"].startswith("text/event-stream"):
        try:
            return Response(await upstream.aread(), upstream.status_code, headers)
        finally:
            await upstream.aclose()

    async def events():  # type: ignore[no-untyped-def]
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return ClosingStreamingResponse(events(), upstream.status_code, headers)

"""The baseline: a bare pass-through proxy (Starlette + one shared httpx client).

    python bench/bare_proxy.py PORT UPSTREAM_URL

No auth, no routing, no checks: the least a Python proxy in front of vLLM can cost.
"""

from __future__ import annotations

import contextlib
import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = sys.argv[2]
client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def lifespan(_app):  # type: ignore[no-untyped-def]
    global client
    async with httpx.AsyncClient(base_url=UPSTREAM, timeout=60,
                                 limits=httpx.Limits(max_connections=1000)) as client:
        yield


async def proxy(request: Request) -> Response:
    upstream = await client.send(
        client.build_request("POST", request.url.path, content=await request.body(),
                             headers={"content-type": "application/json"}), stream=True)
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(upstream.aiter_raw(), upstream.status_code,
                                 media_type="text/event-stream", background=None)
    data = await upstream.aread()
    await upstream.aclose()
    return Response(data, upstream.status_code, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", proxy, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)

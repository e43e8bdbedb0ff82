"""Forwarding a completion to a vLLM replica, streamed or not.

A request moves to the next healthy replica when one fails before anything was sent to the
client: connection refused or reset, 502/503/504, or (non-streaming) the replica dying
mid-answer. Once the first byte is out, a failure ends the stream with an error event.
The gateway names the completion itself (vLLM's X-Request-Id), so the id in the response is
known without parsing it, and says in headers which adapter version and arm served it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.responses import Response, StreamingResponse

from adapters.errors import NoHealthyUpstream, UpstreamTimeout
from adapters.fleet import Fleet, Replica
from gateway.interaction_log import InteractionLog, Record
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

FAILOVER_STATUSES = {502, 503, 504}
# Nothing listens or answers there: the replica is down.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection broke. Often a pooled keep-alive connection the server had just closed,
# which says nothing about the replica: retry it once on a new connection before failing over.
BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-"}
UPSTREAM_PATH = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class Forwarder:
    def __init__(self, fleet: Fleet, client: httpx.AsyncClient, log: InteractionLog, metrics: GatewayMetrics):
        self.fleet = fleet
        self.client = client
        self.log = log
        self.metrics = metrics

    async def forward(self, kind: str, body: dict[str, Any], route: Route, record: Record) -> Response:
        body["model"] = route.upstream_model
        request_id = uuid.uuid4().hex
        record.id = ID_PREFIX[kind] + request_id
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "x-request-id": request_id}
        served = {
            "x-request-id": ID_PREFIX[kind] + request_id,
            "x-loraloop-adapter-version": route.adapter or "",
            "x-loraloop-arm": route.arm,
        }
        stream = bool(body.get("stream"))
        for replica in self.fleet.pick_order():
            for attempt in (1, 2):
                try:
                    response = await self._try(replica, kind, content, headers, route, stream, served, record)
                except UNREACHABLE as exc:
                    self.fleet.mark_down(replica, exc)
                    self.metrics.failovers.labels(replica.url, "unreachable").inc()
                    break
                except BROKEN as exc:
                    if attempt == 2:
                        self.fleet.mark_down(replica, exc)
                        self.metrics.failovers.labels(replica.url, "broken").inc()
                    continue
                except httpx.PoolTimeout:
                    break  # our own connection pool is full for this replica: try another
                except httpx.TimeoutException as exc:
                    raise UpstreamTimeout(f"Upstream did not answer within the timeout ({exc!r}).") from None
                if response is not None:
                    return response
                break
        raise NoHealthyUpstream("No healthy model server is available; retry shortly.")

    async def _try(self, replica: Replica, kind: str, content: bytes, headers: dict[str, str],
                   route: Route, stream: bool, served: dict[str, str], record: Record) -> Response | None:
        """The response from `replica`, or None to try the next replica."""
        replica.in_flight += 1
        handed_over = False
        try:
            if route.adapter is not None:
                await self.fleet.ensure_loaded(replica, route.adapter, route.adapter_path or "")
            upstream = await self._send(replica, kind, content, headers)
            if upstream.status_code == 404 and route.adapter is not None:
                # The replica lost the adapter (it restarted since the last probe): reload once.
                await upstream.aclose()
                self.fleet.forget(replica, route.adapter)
                await self.fleet.ensure_loaded(replica, route.adapter, route.adapter_path or "")
                upstream = await self._send(replica, kind, content, headers)
            if upstream.status_code in FAILOVER_STATUSES:
                await upstream.aclose()
                self.fleet.mark_down(replica, f"status {upstream.status_code}")
                self.metrics.failovers.labels(replica.url, "status").inc()
                return None
            out_headers = {**served, "content-type": upstream.headers.get("content-type", "application/json")}
            if not stream or upstream.status_code != 200:
                data = await upstream.aread()  # a replica dying here still allows failover
                await upstream.aclose()
                record.streamed = False
                self._log(record, upstream.status_code, data)
                return Response(data, upstream.status_code, out_headers)
            chunks = upstream.aiter_raw()
            first = await anext(chunks, b"")  # before committing to this replica
            self.metrics.ttft.labels(route.alias or "", route.adapter or "", route.arm) \
                .observe(time.perf_counter() - record.started)
            handed_over = True
            return StreamingResponse(self._relay(first, chunks, upstream, replica, record),
                                     upstream.status_code, out_headers)
        finally:
            if not handed_over:
                replica.in_flight -= 1

    async def _send(self, replica: Replica, kind: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        request = self.client.build_request("POST", replica.url + UPSTREAM_PATH[kind],
                                            content=content, headers=headers)
        return await self.client.send(request, stream=True)


    def _log(self, record: Record, status: int, raw: bytes) -> None:
        record.status, record.raw = status, raw
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        self.log.record(record)

    async def _relay(self, first: bytes, chunks: AsyncIterator[bytes], upstream: httpx.Response,
                     replica: Replica, record: Record) -> AsyncIterator[bytes]:
        # Cleanup lives here, not in a background task: it must also run when the client
        # disconnects mid-stream and Starlette abandons the response.
        seen = [first]
        try:
            yield first
            async for chunk in chunks:
                seen.append(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            # Headers are gone already: tell the client in-band, as an SSE error event.
            log.warning("stream from %s broke: %r", replica.url, exc)
            error = {"error": {"message": f"upstream stream broke: {exc!r}", "type": "api_error",
                               "param": None, "code": "upstream_stream_broken"}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        finally:
            replica.in_flight -= 1
            await upstream.aclose()
            self._log(record, upstream.status_code, b"".join(seen))

"""Forwarding a completion to a vLLM replica, streamed or not.

A request moves to the next healthy replica when one fails before anything was sent to the
client: connection refused or reset, 502/503/504, an adapter that would not load, or
(non-streaming) the replica dying mid-answer. Once the first byte is out, a failure ends the
stream with an error event. A client that hangs up before its answer is there cancels the
upstream request (vLLM then aborts the generation); it is logged with status 499.
The gateway names the completion itself (vLLM's X-Request-Id), so the id in the response is
known without parsing it, and says in headers which adapter version and arm served it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from adapters.errors import AdapterLoadFailed, NoHealthyUpstream, StoreUnavailable, UpstreamTimeout
from adapters.fleet import Fleet, Replica
from gateway.interaction_log import InteractionLog, Record
from gateway.openai_api.ids import answer_id
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
# nginx's "client closed request": what the log says of an answer nobody waited for
CLIENT_CLOSED = 499
# What a stream keeps for the log when the key logs no text: enough for the last chunks
# (finish_reason, usage), not the whole answer held in memory until the stream ends.
LOG_TAIL_BYTES = 4096
# Closing an upstream stream after a cancellation is shielded from it; this bounds the wait.
CLOSE_TIMEOUT_S = 5.0
UPSTREAM_PATH = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}


class Forwarder:
    def __init__(self, fleet: Fleet, client: httpx.AsyncClient, log: InteractionLog, metrics: GatewayMetrics):
        self.fleet = fleet
        self.client = client
        self.log = log
        self.metrics = metrics

    async def forward(self, kind: str, body: dict[str, Any], route: Route, record: Record,
                      request: Request | None = None, pinned: Replica | None = None) -> Response:
        """The upstream's answer to a completion `body`, from the first replica that gives
        one (only `pinned`, where given: the one that stores a conversation). With the
        client's `request`, a client hanging up before the answer (or the first chunk) is
        there cancels the upstream call."""
        work = self._forward(kind, body, route, record, pinned)
        if request is None:
            return await work
        return await self._unless_disconnected(work, request.receive, record)
    async def _unless_disconnected(self, work: Coroutine[Any, Any, Response], receive: Receive,
                                   record: Record) -> Response:
        # vLLM's `with_cancellation` does the same: the work races a receive() of
        # http.disconnect (the body is read by now, so nothing else can arrive). Cancelling
        # the work closes the upstream request, which is how vLLM learns to stop generating.
        answer = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                return answer.result()  # done first (or just as the client left): as it is
            answer.cancel()
            await asyncio.wait((answer,))  # its cleanup: in_flight, closing the upstream
            if not answer.cancelled() and answer.exception() is None:
                return answer.result()  # it finished before the cancel reached it
        finally:
            for task in (answer, gone):
                task.cancel()
        log.info("client closed %s before its answer", record.id)
        record.streamed = False
        self._log(record, CLIENT_CLOSED, b"")
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; for the metrics

    async def _forward(self, kind: str, body: dict[str, Any], route: Route, record: Record,
                       pinned: Replica | None) -> Response:
        body["model"] = route.upstream_model
        request_id = uuid.uuid4().hex
        content = b""
        headers = {"content-type": "application/json", "x-request-id": request_id}
        served = {
            "x-loraloop-adapter-version": route.adapter or "",
            "x-loraloop-arm": route.arm,
            "x-loraloop-alias": route.alias or "",  # `<alias>@<segment>` where a segment's alias served
            "x-loraloop-segment": route.segment,
        }
        stream = bool(body.get("stream"))
        load_failed: AdapterLoadFailed | None = None
        for replica in [pinned] if pinned is not None else self.fleet.pick_order():
            if record.id != (named := answer_id(kind, replica, request_id)) or not content:
                # A stored response lives on the replica that made it, so its id names that
                # replica (ids.py); vLLM takes it as the body's `request_id`.
                record.id = served["x-request-id"] = named
                if kind == "responses":
                    body["request_id"] = named
                content = json.dumps(body, separators=(",", ":")).encode()
            for attempt in (1, 2):
                try:
                    response = await self._try(replica, kind, content, headers, route, stream, served, record)
                except AdapterLoadFailed as exc:
                    # Another replica may well load it (a full disk, a hung load here). The
                    # detail (replica URL, vLLM's words with the adapter's path) is logged here
                    # and never reaches the client.
                    log.warning("%s", exc)
                    load_failed = exc
                    self.metrics.failovers.labels(replica.url, "adapter_load").inc()
                    break
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
                    # A replica whose generation hangs must leave rotation eventually, as one
                    # answering 503 does: it times out every request sent its way meanwhile.
                    self.fleet.report_failure(replica, exc)
                    raise UpstreamTimeout(f"Upstream did not answer within the timeout ({exc!r}).") from None
                if response is not None:
                    return response
                break
        if pinned is not None:
            raise StoreUnavailable(f"The model server that stores response {body.get('previous_response_id')!r} "
                                   "did not answer; retry shortly, or start over without it.")
        if load_failed is not None:
            # Generic for the app: the load failures name upstream URLs and file paths.
            raise AdapterLoadFailed("The adapter could not be loaded on any model server; "
                                    "retry shortly.") from load_failed
        raise NoHealthyUpstream("No healthy model server is available; retry shortly.")

    async def _try(self, replica: Replica, kind: str, content: bytes, headers: dict[str, str],
                   route: Route, stream: bool, served: dict[str, str], record: Record) -> Response | None:
        """The response from `replica`, or None to try the next replica."""
        replica.in_flight += 1
        handed_over = False
        try:
            if route.adapter is not None:
                await self._load(replica, route)
            upstream = await self._send(replica, kind, content, headers)
            if upstream.status_code == 404 and route.adapter is not None:
                # The replica lost the adapter (it restarted since the last probe): reload once.
                await upstream.aclose()
                self.fleet.forget(replica, route.adapter)
                await self._load(replica, route)
                upstream = await self._send(replica, kind, content, headers)
            if upstream.status_code in (401, 403):
                # The replica does not take this gateway's key (LORALOOP_UPSTREAM_API_KEY and
                # its --api-key differ): unusable until fixed. Passing the 401 on would tell
                # the app its own key is wrong.
                await upstream.aclose()
                self.fleet.mark_down(replica, f"status {upstream.status_code}: it refuses the gateway's key")
                self.metrics.failovers.labels(replica.url, "upstream_auth").inc()
                return None
            if upstream.status_code in FAILOVER_STATUSES:
                # This request tries another replica; the replica leaves rotation only if
                # this keeps happening (or a probe says so), not on one transient error.
                await upstream.aclose()
                self.fleet.report_failure(replica, f"status {upstream.status_code}")
                self.metrics.failovers.labels(replica.url, "status").inc()
                return None
            self.fleet.report_success(replica)
            out_headers = {**served, "content-type": upstream.headers.get("content-type", "application/json")}
            if not stream or upstream.status_code != 200:
                try:
                    data = await upstream.aread()  # a replica dying here still allows failover
                finally:  # also when cancelled (the client left): aborts the upstream request
                    await upstream.aclose()
                record.streamed = False
                self._log(record, upstream.status_code, data)
                return Response(data, upstream.status_code, out_headers)
            chunks = upstream.aiter_raw()
            first = await anext(chunks, b"")  # before committing to this replica
            self.metrics.ttft.labels(route.alias or "", route.adapter or "", route.arm) \
                .observe(time.perf_counter() - record.started)
            handed_over = True
            return ClosingStreamingResponse(self._relay(first, chunks, upstream, replica, record),
                                            upstream.status_code, out_headers)
        finally:
            if not handed_over:
                replica.in_flight -= 1

    async def _load(self, replica: Replica, route: Route) -> None:
        """Loads the route's adapter on `replica`; any failure but an unreachable replica
        (which takes it out of rotation) is AdapterLoadFailed, so the next replica is tried."""
        try:
            await self.fleet.ensure_loaded(replica, route.adapter or "", route.adapter_path or "")
        except UNREACHABLE:
            raise
        except httpx.HTTPError as exc:
            raise AdapterLoadFailed(f"replica {replica.url} could not load adapter {route.adapter}: "
                                    f"{exc!r}") from exc

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
        seen = bytearray(first)
        trimmed = False
        try:
            yield first
            async for chunk in chunks:
                seen += chunk
                if not record.keep_text and len(seen) > LOG_TAIL_BYTES:
                    del seen[:len(seen) - LOG_TAIL_BYTES]
                    trimmed = True
                yield chunk
        except httpx.HTTPError as exc:
            # Headers are gone already: tell the client in-band, as an SSE error event.
            log.warning("stream from %s broke: %r", replica.url, exc)
            if isinstance(exc, httpx.TimeoutException):  # generation hung mid-stream
                self.fleet.report_failure(replica, exc)
            error = {"error": {"message": f"upstream stream broke: {exc!r}", "type": "api_error",
                               "param": None, "code": "upstream_stream_broken"}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        finally:
            # The bookkeeping first, then the one await, shielded: this can run inside a
            # cancelled scope (anyio cancels every await there), and the connection must
            # still be closed; bounded, so a stuck close cannot hold the task forever.
            replica.in_flight -= 1
            if trimmed:  # the tail starts mid-line: keep whole SSE lines only
                del seen[:seen.find(b"\n") + 1]
            self._log(record, upstream.status_code, bytes(seen))
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await upstream.aclose()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body iterator once it is done, whatever ended it.

    When a cancellation lands while a send is blocked (a slow client, a server shutting
    down), Starlette leaves the generator suspended at its `yield`: its `finally` (in_flight,
    the log, the upstream connection) would run only when garbage collection finalises it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                # this runs in a cancelled scope, too: shielded, and bounded
                with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    await aclose()


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has hung up."""
    while (await receive())["type"] != "http.disconnect":
        pass

"""The fleet under hostile conditions: transient 5xx, adapters that will not load, hung loads,
clients that hang up before their answer, and long streams for keys that log no text."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from pathlib import Path

import httpx
import openai
import pytest

from adapters.errors import AdapterLoadFailed
from adapters.fleet import Fleet
from adapters.schema import Interaction
from gateway.openai_api.proxy import LOG_TAIL_BYTES
from tests.fake_vllm import BASE, FakeFleet
from tests.unit.harness import Gateway, chat, make_gateway, new_key
from tests.unit.test_feedback import rows


def healthy(gw: Gateway) -> list[str]:
    return gw.operator_get("/ready").json()["healthy_upstreams"]


def failovers(gw: Gateway, url: str, reason: str) -> float:
    registry = gw.http.app.state.gateway.metrics.registry
    return registry.get_sample_value("loraloop_upstream_failovers_total", {"upstream": url, "reason": reason}) or 0.0


def interactions(gw: Gateway) -> list[Interaction]:
    return rows(gw, Interaction)


def total_loads(gw: Gateway) -> int:
    return sum(len(r.loads) for r in gw.fleet.replicas.values())


# 1. A transient 502/503/504 moves the request on; the replica stays, and keeps its adapters.

@pytest.mark.parametrize("status", [502, 503, 504])
def test_one_5xx_moves_the_request_on_but_keeps_the_replica_and_its_adapters(gw: Gateway, status: int) -> None:
    for _ in range(2):
        chat(gw.sdk(), gw.pinned)  # both replicas hold it now
    assert total_loads(gw) == 2
    flaky = next(iter(gw.fleet.replicas.values()))
    flaky.error_next, flaky.error_status = 1, status
    for _ in range(4):
        assert chat(gw.sdk(), gw.pinned).parse().model == gw.pinned
    assert flaky.error_next == 0  # it was hit
    assert failovers(gw, flaky.url, "status") == 1
    assert sorted(healthy(gw)) == sorted(gw.fleet.urls)
    assert total_loads(gw) == 2  # no reload anywhere
    replica = next(r for r in gw.http.app.state.gateway.fleet.replicas if r.url == flaky.url)
    assert replica.loaded == {gw.pinned}


def test_repeated_5xx_take_a_replica_out_and_the_probe_brings_it_back_with_its_adapters(gw: Gateway) -> None:
    fleet = gw.http.app.state.gateway.fleet
    for _ in range(2):
        chat(gw.sdk(), gw.pinned)
    flaky = next(iter(gw.fleet.replicas.values()))
    flaky.error_next = 100
    failed = 0
    while failed < fleet.FAILURES_TO_DOWN:
        assert chat(gw.sdk(), gw.pinned).parse().model == gw.pinned  # the other replica serves
        failed = 100 - flaky.error_next
        assert (flaky.url in healthy(gw)) == (failed < fleet.FAILURES_TO_DOWN)
    flaky.error_next = 0
    gw.http.portal.call(fleet.probe_all)
    assert flaky.url in healthy(gw)
    for _ in range(4):
        chat(gw.sdk(), gw.pinned)
    assert total_loads(gw) == 2 and len(flaky.seen) > 0


def test_taking_a_replica_out_keeps_what_it_holds_until_a_probe_says_otherwise(gw: Gateway) -> None:
    fleet = gw.http.app.state.gateway.fleet
    for _ in range(2):
        chat(gw.sdk(), gw.pinned)
    fake = next(iter(gw.fleet.replicas.values()))
    replica = next(r for r in fleet.replicas if r.url == fake.url)
    fake.down = True  # connection refused: out of rotation at once, as before
    gw.http.portal.call(fleet.probe_all)
    assert not replica.healthy and replica.loaded == {gw.pinned}
    fake.restart()  # it comes back empty: the probe is how the fleet learns of a restart
    fake.down = False
    gw.http.portal.call(fleet.probe_all)
    assert replica.healthy and replica.loaded == set()
    for _ in range(4):
        assert chat(gw.sdk(), gw.pinned).parse().model == gw.pinned
    assert fake.loads == [gw.pinned, gw.pinned]  # loaded again, once


# 2. An adapter that will not load on one replica is served from another.

def test_a_failed_adapter_load_moves_the_request_to_another_replica(gw: Gateway) -> None:
    refusing, other = gw.fleet.replicas.values()
    refusing.refuse_loads = True
    for _ in range(4):
        raw = chat(gw.sdk(), gw.pinned)
        assert raw.parse().choices[0].message.content.endswith(other.url)
    assert refusing.loads == [] and other.loads == [gw.pinned]
    assert failovers(gw, refusing.url, "adapter_load") >= 1
    assert sorted(healthy(gw)) == sorted(gw.fleet.urls)  # a refused load is no outage


def test_a_load_that_fails_everywhere_is_502_adapter_load_failed(gw: Gateway) -> None:
    for replica in gw.fleet.replicas.values():
        replica.refuse_loads = True
    with pytest.raises(openai.APIStatusError) as err:
        chat(gw.sdk(), gw.pinned)
    assert err.value.status_code == 502 and err.value.code == "adapter_load_failed"
    assert all(failovers(gw, url, "adapter_load") == 1 for url in gw.fleet.urls)


# 3. Probes do not wait on loads; loads have their own deadline.

def test_a_hung_load_does_not_stall_probes_or_other_replicas_loads(tmp_path: Path, db_url: str) -> None:
    gateway = make_gateway(tmp_path, db_url, health_interval_s=0.05)
    hung, other = gateway.fleet.replicas.values()
    hung.hang_loads = True  # its load of the champion never answers (load timeout: 30 s)
    with gateway.http:
        fleet = gateway.http.app.state.gateway.fleet
        by_url = {r.url: r for r in fleet.replicas}
        time.sleep(0.3)  # reconcile rounds have started: the hung replica's load waits
        other.down = True
        deadline = time.monotonic() + 5
        while by_url[other.url].healthy:  # probes go on while the hung load waits
            assert time.monotonic() < deadline, "a hung load stalled the health probes"
            time.sleep(0.02)
        other.down = False
        while not by_url[other.url].healthy:
            assert time.monotonic() < deadline, "the probe never brought the replica back"
            time.sleep(0.02)
        while gateway.champion not in other.loaded:  # its load is not queued behind the hung one
            assert time.monotonic() < deadline, "the other replica never loaded the champion"
            time.sleep(0.02)
        assert not hung.loads


def test_a_hung_load_gives_up_after_the_load_timeout() -> None:
    fake = FakeFleet(1)
    fake.replicas[fake.urls[0]].hang_loads = True

    async def load() -> float:
        async with httpx.AsyncClient(transport=fake.transport(), timeout=300) as client:
            fleet = Fleet(fake.urls, client, load_timeout_s=0.2)
            await fleet.probe_all()
            started = time.monotonic()
            with pytest.raises(AdapterLoadFailed, match="within"):
                await fleet.ensure_loaded(fleet.replicas[0], "v1", "/store/v1")
            return time.monotonic() - started

    assert asyncio.run(load()) < 2


# 4. A client that hangs up cancels its upstream request.

def _asgi_chat(key: str, body: bytes, hung_up: asyncio.Event):  # type: ignore[no-untyped-def]
    """(scope, receive) of a chat completion POSTed straight to the ASGI app (TestClient
    cannot hang up before the answer): the body first, then http.disconnect once `hung_up`."""
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {}}
    return scope, receive


async def _post_then_hang_up(app, key: str, hang_up_after_s: float) -> tuple[list[dict], float]:  # type: ignore[no-untyped-def]
    """POSTs a non-streamed chat completion straight to the ASGI app and disconnects after
    `hang_up_after_s`; returns what the app sent and how long it took to finish."""
    body = json.dumps({"model": BASE, "messages": [{"role": "user", "content": "hi"}]}).encode()
    hung_up = asyncio.Event()
    sent: list[dict] = []
    scope, receive = _asgi_chat(key, body, hung_up)

    async def send(message: dict) -> None:
        sent.append(message)

    started = time.monotonic()
    call = asyncio.ensure_future(app(scope, receive, send))
    await asyncio.sleep(hang_up_after_s)
    hung_up.set()
    await asyncio.wait_for(call, 10)
    return sent, time.monotonic() - started


def test_a_client_hanging_up_cancels_the_non_streamed_upstream_request(gw: Gateway) -> None:
    for replica in gw.fleet.replicas.values():
        replica.answer_delay_s = 5.0  # vLLM answers a non-streamed request when it is done
    state = gw.http.app.state.gateway
    sent, took = gw.http.portal.call(_post_then_hang_up, gw.http.app, gw.app_key, 0.3)
    assert took < 2, "the gateway waited for the answer nobody wanted"
    assert sum(r.aborted for r in gw.fleet.replicas.values()) == 1  # vLLM saw the request go
    assert all(r.in_flight == 0 for r in state.fleet.replicas)
    assert sent[0]["status"] == 499
    (row,) = interactions(gw)
    assert (row.status, row.response, row.finish_reason) == (499, None, None)
    for replica in gw.fleet.replicas.values():
        replica.answer_delay_s = 0
    assert chat(gw.sdk(), BASE).parse().choices  # and the replicas serve on


# 5. A long stream for a key that logs no text keeps only a tail in memory.

def test_a_long_stream_for_a_no_log_key_keeps_only_the_tail(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    state = gw.http.app.state.gateway
    sizes: list[int] = []
    record = state.log.record

    def capture(rec):  # type: ignore[no-untyped-def]
        sizes.append(len(rec.raw))
        record(rec)

    monkeypatch.setattr(state.log, "record", capture)
    for replica in gw.fleet.replicas.values():
        replica.stream_words = 3000  # some 25 KB of text, 400 KB of SSE
    key = new_key(gw, log_prompts=False)
    chunks = list(gw.sdk(key).chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert sum(len(c.choices[0].delta.content or "") for c in chunks if c.choices) > 4 * LOG_TAIL_BYTES
    assert sizes and sizes[0] <= LOG_TAIL_BYTES
    (row,) = interactions(gw)
    assert (row.status, row.response, row.finish_reason) == (200, None, "stop")
    assert (row.prompt_tokens, row.completion_tokens) == (5, 3000)


def test_a_stream_for_a_logging_key_is_logged_whole(gw: Gateway) -> None:
    for replica in gw.fleet.replicas.values():
        replica.stream_words = 1000
    chunks = list(gw.sdk().chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi"}], stream=True))
    (row,) = interactions(gw)
    assert row.response == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert row.finish_reason == "stop"


def test_a_replica_refusing_the_gateways_key_is_taken_out_and_the_app_never_sees_401(gw: Gateway) -> None:
    """A replica whose --api-key differs from LORALOOP_UPSTREAM_API_KEY: its 401 is about the
    gateway, not the app's key."""
    wrong, right = gw.fleet.replicas.values()
    wrong.error_next, wrong.error_status = 100, 401
    for _ in range(4):
        assert chat(gw.sdk(), BASE).parse().choices[0].message.content.endswith(right.url)
    assert healthy(gw) == [right.url]
    assert failovers(gw, wrong.url, "upstream_auth") == 1


# 6. What a failed load says stays in the logs; the app gets a generic 502.

def test_a_failed_load_tells_the_app_nothing_of_upstream_urls_paths_or_vllms_words(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    for replica in gw.fleet.replicas.values():
        replica.refuse_loads = True
        replica.refuse_message = "Loading lora failed: No adapter found for {path} (disk full)"
    with caplog.at_level(logging.WARNING):
        resp = gw.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {gw.app_key}"},
                            json={"model": gw.pinned, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "adapter_load_failed"
    body = resp.text
    assert "could not be loaded on any model server" in body
    for leak in [*gw.fleet.urls, "r0", "r1", "8000", str(gw.settings.data_dir), "/store", "No adapter found",
                 "disk full", "500"]:
        assert leak not in body, leak
    # the operator still learns which replica said what, in the logs
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(url in logged for url in gw.fleet.urls) and "disk full" in logged


# 7. A hung load: requests waiting behind it give up with it, and then fail over at once.

async def _concurrent_chats(app, key: str, model: str, n: int) -> list[tuple[int, float, str]]:  # type: ignore[no-untyped-def]
    """`n` non-streamed chats at once, straight to the ASGI app: (status, seconds, body) each."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
        async def one() -> tuple[int, float, str]:
            started = time.monotonic()
            resp = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            return resp.status_code, time.monotonic() - started, resp.text
        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("hung_replicas", [1, 2])
def test_requests_behind_a_hung_load_give_up_together_not_in_turn(gw: Gateway, hung_replicas: int) -> None:
    fleet = gw.http.app.state.gateway.fleet
    fleet.load_timeout_s = 0.3
    fakes = list(gw.fleet.replicas.values())
    for fake in fakes[:hung_replicas]:
        fake.hang_loads = True
    # The good replica takes its time, so it is as busy as the hung one and the requests
    # spread over both: about half of them start at the hung load.
    fakes[1].answer_delay_s = 0.3
    answers = gw.http.portal.call(_concurrent_chats, gw.http.app, gw.app_key, gw.pinned, 10)
    took = max(seconds for _, seconds, _ in answers)
    # one load timeout, then the answer: about 0.6 s. In turn, the 5th request at the hung
    # load alone would have waited 1.5 s.
    assert took < 1.2, f"requests took turns at the hung load: {sorted(s for _, s, _ in answers)}"
    if hung_replicas == 1:
        assert [status for status, _, _ in answers] == [200] * 10
        assert all(body.count(fakes[1].url) == 1 for _, _, body in answers)  # the other one served
    else:
        assert [status for status, _, _ in answers] == [502] * 10
        assert all("adapter_load_failed" in body for _, _, body in answers)
        # a new request right after does not wait out a load that just hung: it is 502 at once
        ((status, seconds, _),) = gw.http.portal.call(_concurrent_chats, gw.http.app, gw.app_key, gw.pinned, 1)
        assert status == 502 and seconds < 0.2
    assert all(r.in_flight == 0 for r in fleet.replicas)


def test_a_failed_load_is_tried_again_once_its_memory_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFleet(1)
    refusing = fake.replicas[fake.urls[0]]
    refusing.refuse_loads = True

    async def load() -> None:
        async with httpx.AsyncClient(transport=fake.transport()) as client:
            fleet = Fleet(fake.urls, client, load_timeout_s=1)
            monkeypatch.setattr(fleet, "LOAD_FAILURE_MEMORY_S", 0.2)
            await fleet.probe_all()
            with pytest.raises(AdapterLoadFailed, match="refused"):
                await fleet.ensure_loaded(fleet.replicas[0], "v1", "/store/v1")
            refusing.refuse_loads = False
            with pytest.raises(AdapterLoadFailed, match="not retried yet"):  # too soon: no request sent
                await fleet.ensure_loaded(fleet.replicas[0], "v1", "/store/v1")
            assert refusing.loads == []
            await asyncio.sleep(0.25)
            await fleet.ensure_loaded(fleet.replicas[0], "v1", "/store/v1")
            assert refusing.loads == ["v1"] and "v1" in fleet.replicas[0].loaded

    asyncio.run(load())


# 8. A replica whose generation hangs leaves rotation; an abandoned stream is released at once.

def test_read_timeouts_take_a_replica_out_of_rotation(gw: Gateway) -> None:
    fleet = gw.http.app.state.gateway.fleet
    hanging, other = gw.fleet.replicas.values()
    hanging.slow = True  # every completion there ends in a read timeout
    statuses = []
    for _ in range(4 * fleet.FAILURES_TO_DOWN):
        resp = gw.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {gw.app_key}"},
                            json={"model": BASE, "messages": [{"role": "user", "content": "hi"}]})
        statuses.append(resp.status_code)
    assert statuses.count(504) == fleet.FAILURES_TO_DOWN  # then it was out of rotation
    assert healthy(gw) == [other.url]


async def _stream_then_cancel(app, key: str, state) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """Streams a chat completion straight to the ASGI app, blocks the second body send (a
    client that stopped reading) and cancels the request there; returns the replicas'
    in_flight while blocked and right after the cancellation, before anything else runs."""
    body = json.dumps({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    blocked = asyncio.Event()
    bodies = 0
    scope, receive = _asgi_chat(key, body, asyncio.Event())  # never hangs up: the request is cancelled

    async def send(message: dict) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies == 2:
                blocked.set()
                await asyncio.Event().wait()  # until cancelled

    call = asyncio.ensure_future(app(scope, receive, send))
    await asyncio.wait_for(blocked.wait(), 10)
    during = [r.in_flight for r in state.fleet.replicas]
    call.cancel()
    await asyncio.wait((call,))
    return during, [r.in_flight for r in state.fleet.replicas]  # no await since: no GC, no finalizer task


def test_a_stream_cancelled_while_its_send_is_blocked_is_released_at_once(gw: Gateway) -> None:
    state = gw.http.app.state.gateway
    gc.disable()  # the release must not depend on the garbage collector
    try:
        during, after = gw.http.portal.call(_stream_then_cancel, gw.http.app, gw.app_key, state)
    finally:
        gc.enable()
    assert sum(during) == 1
    assert after == [0, 0]
    (row,) = interactions(gw)  # logged, as far as it got
    assert row.status == 200

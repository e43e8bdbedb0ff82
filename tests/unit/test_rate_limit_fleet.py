"""Rate limits that hold across gateway replicas: buckets in a real Redis, shared by several
RateLimiters (and whole apps) as by replicas behind a load balancer, and what happens while
that Redis is away."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import redis
from fastapi.testclient import TestClient

from adapters.errors import RateLimited
from gateway import rate_limit
from gateway.app import create_app
from gateway.rate_limit import RateLimiter
from tests.unit.harness import Gateway, chat, make_gateway
from tests.unit.test_metrics import scrape, value

REDIS_URL = os.environ.get("LORALOOP_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} does not answer ({exc}); start one with "
                    "`redis-server --save '' --daemonize yes` (apt-get install redis-server), "
                    "or point LORALOOP_TEST_REDIS at one")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards, nobody else's."""
    prefix = f"loraloop-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    """Two gateway replicas' limiters on one Redis: 60 requests a minute, bursts of 10 s."""
    a, b = (RateLimiter(60, 10, redis_url, prefix) for _ in range(2))
    yield a, b
    await a.aclose()
    await b.aclose()


async def admitted(limiter: RateLimiter, key_id: int, rpm: int | None = None) -> bool:
    try:
        await limiter.charge(key_id, rpm)
    except RateLimited:
        return False
    return True


async def test_two_replicas_together_allow_a_key_its_limit_not_twice_it(
        replicas: tuple[RateLimiter, RateLimiter]) -> None:
    a, b = replicas
    assert [await admitted((a, b)[i % 2], 1) for i in range(10)] == [True] * 10
    for limiter in (a, b):
        with pytest.raises(RateLimited) as err:
            await limiter.charge(1, None)
        assert err.value.retry_after_s == 1  # one request a second
        assert "60 requests per minute" in str(err.value)
    # in memory, as before: each replica has a bucket of its own, so the key gets twice its limit
    local = RateLimiter(60, 10), RateLimiter(60, 10)
    assert sum([await admitted(local[i % 2], 1) for i in range(22)]) == 20


async def test_a_bucket_refills_at_the_keys_rate(redis_url: str, prefix: str) -> None:
    a, b = RateLimiter(600, 0.1, redis_url, prefix), RateLimiter(600, 0.1, redis_url, prefix)  # 10/s, 1 at once
    assert await admitted(a, 1)
    assert not await admitted(b, 1)
    await asyncio.sleep(0.15)
    assert await admitted(b, 1)
    assert not await admitted(a, 1)
    await a.aclose()
    await b.aclose()


async def test_keys_and_deployments_do_not_share_buckets(replicas: tuple[RateLimiter, RateLimiter],
                                                         redis_url: str, prefix: str) -> None:
    a, b = replicas
    assert sum([await admitted(a, 1) for _ in range(11)]) == 10
    assert sum([await admitted(b, 2) for _ in range(11)]) == 10  # another key: its own bucket
    assert sum([await admitted(b, 3, rpm=6) for _ in range(2)]) == 1  # its own limit: 0.1/s, bursts of 1
    assert all([await admitted(a, 4, rpm=0) for _ in range(50)])  # unlimited
    other = RateLimiter(60, 10, redis_url, prefix + "staging:")  # key 1 of another deployment
    assert await admitted(other, 1)
    await other.aclose()


async def test_concurrent_charges_never_take_more_than_the_bucket_holds(
        redis_url: str, prefix: str) -> None:
    # 50 at once and 0.1 a second: no token comes back while the 100 charges run
    limiters = [RateLimiter(6, 500, redis_url, prefix) for _ in range(4)]
    results = await asyncio.gather(*(admitted(limiters[i % 4], 1) for i in range(100)))
    assert sum(results) == 50
    for limiter in limiters:
        assert limiter.redis_up and limiter.redis_errors == 0
        await limiter.aclose()


async def test_buckets_use_the_servers_clock_and_expire_once_full_again(
        replicas: tuple[RateLimiter, RateLimiter], redis_url: str, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = replicas
    for _ in range(10):
        await a.charge(1, None)
    # a replica whose clock runs an hour ahead finds the bucket as empty as the others do
    ahead = types.SimpleNamespace(monotonic=lambda: time.monotonic() + 3600, time=lambda: time.time() + 3600)
    monkeypatch.setattr(rate_limit, "time", ahead)
    assert not await admitted(b, 1)
    ttl_ms = redis.Redis.from_url(redis_url).pttl(f"{prefix}1")
    assert 0 < ttl_ms <= 10_000 + 1000  # refilled in 10 s (a missing bucket reads as full)


class RedisProxy:
    """A TCP proxy in front of the real Redis that can be cut (connections refused) or hung
    (connections accepted, never answered), as a Redis that crashed or a network that drops."""

    def __init__(self, redis_url: str, hang: bool = False):
        self.target = redis.connection.parse_url(redis_url)
        self.hang = hang
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.target.get('db', 0)}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]  # the same port when started again

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.hang:
            await reader.read()  # until the client gives up
            return
        up_reader, up_writer = await asyncio.open_connection(self.target.get("host", "127.0.0.1"),
                                                             self.target.get("port", 6379))
        self.writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_redis_away_fails_open_to_this_replicas_own_buckets(
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(60, 5, f"redis://127.0.0.1:{closed_port()}/0", prefix)
    with caplog.at_level(logging.WARNING, "gateway.rate_limit"):
        assert [await admitted(limiter, 1) for _ in range(6)] == [True] * 5 + [False]  # the local bucket
    assert not limiter.redis_up and limiter.redis_errors == 1  # later charges did not wait on Redis
    warnings = [r for r in caplog.records if r.name == "gateway.rate_limit"]
    assert len(warnings) == 1 and "each gateway replica now limits keys on its own" in warnings[0].getMessage()
    await limiter.aclose()


async def test_after_an_outage_the_shared_buckets_take_over_again(
        redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "REDIS_RETRY_S", 0.2)
    proxy = RedisProxy(redis_url)
    await proxy.start()
    limiter = RateLimiter(6, 30, proxy.url, prefix)  # 3 at once, 0.1/s: no refill during the test
    assert await admitted(limiter, 1)  # Redis: 2 left
    await proxy.stop()
    assert [await admitted(limiter, 1) for _ in range(4)] == [True] * 3 + [False]  # local: a full bucket
    assert not limiter.redis_up and limiter.redis_errors >= 1
    await proxy.start()
    await asyncio.sleep(0.3)
    assert [await admitted(limiter, 1) for _ in range(3)] == [True] * 2 + [False]  # Redis's bucket, as left
    assert limiter.redis_up
    await limiter.aclose()
    await proxy.stop()


async def test_a_redis_that_hangs_delays_one_request_not_every_one(redis_url: str, prefix: str) -> None:
    proxy = RedisProxy(redis_url, hang=True)
    await proxy.start()
    limiter = RateLimiter(60, 5, proxy.url, prefix)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await admitted(limiter, 1)
    assert loop.time() - started < 2  # short timeouts, one retry, no backoff
    started = loop.time()
    assert [await admitted(limiter, 1) for _ in range(5)] == [True] * 4 + [False]
    assert loop.time() - started < 0.1 and not limiter.redis_up
    await limiter.aclose()
    await proxy.stop()


# Through the app: two gateways (replicas) on one database and one Redis.


@pytest.fixture
def two_gateways(tmp_path: Path, db_url: str, redis_url: str,
                 prefix: str) -> Iterator[tuple[Gateway, TestClient]]:
    gw = make_gateway(tmp_path, db_url, rate_limit_rpm=60, rate_limit_burst_s=5,
                      rate_limit_redis_url=redis_url, rate_limit_redis_prefix=prefix)
    second = TestClient(create_app(gw.settings, transport=gw.fleet.transport()), raise_server_exceptions=False)
    with gw.http, second:
        yield gw, second
        for client in (gw.http, second):
            client.portal.call(client.app.state.gateway.auth.limiter.aclose)  # type: ignore[union-attr]


def test_two_gateways_sharing_redis_allow_a_key_its_limit_once(two_gateways: tuple[Gateway, TestClient]) -> None:
    gw, second = two_gateways
    clients = gw.sdk(), openai.OpenAI(base_url="http://testserver/v1", api_key=gw.app_key,
                                      http_client=second, max_retries=0)
    for i in range(5):
        chat(clients[i % 2], "default")
    for client in clients:
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, "default")
        assert err.value.code == "rate_limit_exceeded" and int(err.value.response.headers["retry-after"]) == 1
    assert sum(len(r.seen) for r in gw.fleet.replicas.values()) == 5
    assert value(scrape(gw), "loraloop_rate_limit_redis_up") == 1


def test_a_gateway_whose_redis_is_away_still_serves_and_limits_on_its_own(tmp_path: Path, db_url: str) -> None:
    gw = make_gateway(tmp_path, db_url, rate_limit_rpm=60, rate_limit_burst_s=3,
                      rate_limit_redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    with gw.http:
        for _ in range(3):
            assert chat(gw.sdk(), "default").status_code == 200
        with pytest.raises(openai.RateLimitError):
            chat(gw.sdk(), "default")
        samples = scrape(gw)
        assert value(samples, "loraloop_rate_limit_redis_up") == 0
        assert value(samples, "loraloop_rate_limit_redis_errors_total") >= 1


async def test_after_an_outage_one_charge_asks_redis_again_the_others_do_not_wait(
        redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "REDIS_RETRY_S", 0.1)
    proxy = RedisProxy(redis_url, hang=True)  # a Redis that takes every charge's full timeout
    await proxy.start()
    limiter = RateLimiter(6000, 60, proxy.url, prefix)  # plenty of tokens: every charge passes
    assert await admitted(limiter, 1)
    assert not limiter.redis_up
    await asyncio.sleep(0.15)  # the retry moment has come
    asked = 0
    take = limiter.shared.take  # type: ignore[union-attr]

    async def counted(*args: object) -> float:
        nonlocal asked
        asked += 1
        return await take(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(limiter.shared, "take", counted)
    loop = asyncio.get_running_loop()

    async def timed() -> tuple[bool, float]:
        started = loop.time()
        return await admitted(limiter, 1), loop.time() - started

    results = await asyncio.gather(*(timed() for _ in range(20)))
    assert asked == 1  # one probe; the other 19 used the local bucket meanwhile
    assert all(ok for ok, _ in results)
    waits = sorted(seconds for _, seconds in results)
    assert waits[-2] < 0.1 and waits[-1] >= rate_limit.REDIS_TIMEOUT_S  # only the probe waited
    assert not limiter.redis_up and limiter.redis_errors == 2
    await limiter.aclose()
    await proxy.stop()

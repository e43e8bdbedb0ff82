"""Per-key rate limits: a token bucket per API key, shared by every gateway replica through
Redis when LORALOOP_RATE_LIMIT_REDIS_URL is set, else in this gateway's memory.

A key may make `rpm` requests a minute on average and up to `burst` at once; the next one
gets 429 in the OpenAI shape with `Retry-After` (the official SDK waits and retries by
itself). A key's own `rate_limit_rpm` (`loraloop keys create --rate-limit`) overrides the
gateway's LORALOOP_RATE_LIMIT_RPM; 0 is unlimited.

With Redis, a key's bucket is one Redis hash, refilled and taken from by one Lua script
that runs atomically on the server and reads the server's clock: replicas whose clocks
disagree still agree on the bucket, and two replicas never both take its last token. A
bucket expires once it would be full again, so idle keys cost Redis nothing.

Without Redis (the embedded single-process default) each replica keeps its own buckets, so
N replicas behind a load balancer let a key make up to N times its limit.

Redis away (refused, timed out, out of memory, read-only): the limiter fails open to this
replica's own buckets, logs one warning, counts the error
(`loraloop_rate_limit_redis_errors_total`, `loraloop_rate_limit_redis_up` 0) and tries Redis
again after `REDIS_RETRY_S`, with one request at a time (the others keep to the local buckets
until it answers). Completions keep working through a Redis outage; meanwhile each
replica enforces the limit on its own (a key gets up to N times it across N replicas), and
the local buckets start full.
"""

from __future__ import annotations

import logging
import math
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from adapters.errors import RateLimited

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 0.25  # a healthy Redis answers in well under a millisecond
REDIS_RETRY_S = 5.0  # after a failure, requests skip Redis this long instead of each waiting on it

# KEYS[1]: the bucket. ARGV: refill rate in tokens per millisecond, capacity in tokens.
# Returns {1, 0} when a token was taken, else {0, milliseconds until one is there}. Writing
# after TIME needs effects replication, the default since Redis 5.
TAKE = """
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil or at == nil then
  tokens, at = capacity, now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
if tokens < 1 then
  -- nothing written: refilling later from the old point gives the same count, and a flood of
  -- refused requests costs no writes
  return {0, math.ceil((1 - tokens) / rate)}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
-- gone once it would be full again: a missing bucket reads as full
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1000)
return {1, 0}
"""


class LocalBuckets:
    """Token buckets in this process's memory, by key id."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: int, rate: float, capacity: float) -> float:
        """Takes a token: returns 0, or the seconds until one is there (nothing taken)."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key_id] = (tokens - 1.0, now)
        return 0.0


class RedisBuckets:
    """Token buckets in Redis under `prefix` + key id, shared by every replica using them."""

    def __init__(self, url: str, prefix: str):
        # One quick retry (a pooled connection Redis closed) and short timeouts: redis-py's
        # default of 10 retries with backoff would hold every request for seconds in an outage.
        self.client = aioredis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                              socket_connect_timeout=REDIS_TIMEOUT_S,
                                              retry=Retry(NoBackoff(), 1))
        self.prefix = prefix
        self._take = self.client.register_script(TAKE)  # EVALSHA; loaded again after a restart

    async def take(self, key_id: int, rate: float, capacity: float) -> float:
        """Takes a token: returns 0, or the seconds until one is there (nothing taken)."""
        taken, wait_ms = await self._take(keys=[f"{self.prefix}{key_id}"], args=[rate / 1000.0, capacity])
        return 0.0 if taken else int(wait_ms) / 1000.0

    async def aclose(self) -> None:
        await self.client.aclose()


class RateLimiter:
    """Charges each request to its key's bucket: shared through Redis when `redis_url` is
    given, this process's own otherwise or while Redis is away (see the module's docstring)."""

    def __init__(self, default_rpm: int, burst_seconds: float, redis_url: str | None = None,
                 redis_prefix: str = "loraloop:ratelimit:"):
        self.default_rpm = default_rpm
        self.burst_seconds = burst_seconds  # a full bucket holds this many seconds of requests
        self.local = LocalBuckets()
        self.shared = RedisBuckets(redis_url, redis_prefix) if redis_url else None
        self.redis_up = self.shared is not None  # False while falling back to the local buckets
        self.redis_errors = 0  # charges Redis could not answer
        self._skip_redis_until = 0.0
        self._probing = False  # one charge is asking a Redis that was away whether it is back

    async def charge(self, key_id: int | None, key_rpm: int | None) -> None:
        """Takes one request from the key's bucket, or raises RateLimited."""
        rpm = self.default_rpm if key_rpm is None else key_rpm
        if key_id is None or rpm <= 0:
            return
        rate = rpm / 60.0
        capacity = max(1.0, rate * self.burst_seconds)
        wait = await self._take_shared(key_id, rate, capacity)
        if wait is None:
            wait = self.local.take(key_id, rate, capacity)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(f"Rate limit reached for this API key: {rpm} requests per minute. "
                              f"Retry in {seconds} s.", retry_after_s=seconds)

    async def _take_shared(self, key_id: int, rate: float, capacity: float) -> float | None:
        """Redis's answer, or None: no Redis, or it is away (then the local buckets decide)."""
        if self.shared is None:
            return None
        probe = not self.redis_up
        if probe:
            # Redis was away: one charge at a time finds out whether it is back, the others
            # use the local buckets meanwhile. Without this, every charge arriving once
            # REDIS_RETRY_S is up would wait on a dead Redis at the same moment.
            if self._probing or time.monotonic() < self._skip_redis_until:
                return None
            self._probing = True
        try:
            wait = await self.shared.take(key_id, rate, capacity)
        except (RedisError, OSError) as exc:
            self.redis_errors += 1
            self._skip_redis_until = time.monotonic() + REDIS_RETRY_S
            if self.redis_up:
                log.warning("rate limits: Redis is unreachable (%s: %s); each gateway replica now limits "
                            "keys on its own until it is back", type(exc).__name__, exc)
            self.redis_up = False
            return None
        finally:
            if probe:
                self._probing = False
        if not self.redis_up:
            log.info("rate limits: Redis is back; limits hold across replicas again")
            self.redis_up = True
        return wait

    async def aclose(self) -> None:
        """Closes the Redis connections (call once, when the app stops)."""
        if self.shared is not None:
            await self.shared.aclose()

"""Per-key rate limits: a token bucket per API key, in this gateway's memory.

A key may make `rpm` requests a minute on average and up to `burst` at once; the next one
gets 429 in the OpenAI shape with `Retry-After` (the official SDK waits and retries by
itself). A key's own `rate_limit_rpm` (`loraloop keys create --rate-limit`) overrides the
gateway's LORALOOP_RATE_LIMIT_RPM; 0 is unlimited. With N gateway replicas behind a load
balancer a key gets up to N times its limit: the limit protects each replica and the model
servers behind it, it is not a billing quota.
"""

from __future__ import annotations

import math
import time

from adapters.errors import RateLimited


class RateLimiter:
    def __init__(self, default_rpm: int, burst_seconds: float):
        self.default_rpm = default_rpm
        self.burst_seconds = burst_seconds  # a full bucket holds this many seconds of requests
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)

    def charge(self, key_id: int | None, key_rpm: int | None) -> None:
        """Takes one request from the key's bucket, or raises RateLimited."""
        rpm = self.default_rpm if key_rpm is None else key_rpm
        if key_id is None or rpm <= 0:
            return
        rate = rpm / 60.0
        capacity = max(1.0, rate * self.burst_seconds)
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise RateLimited(f"Rate limit reached for this API key: {rpm} requests per minute. "
                              f"Retry in {wait} s.", retry_after_s=wait)
        self._buckets[key_id] = (tokens - 1.0, now)

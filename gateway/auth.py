"""API keys: created and revoked with the CLI, stored as SHA-256 hashes, checked per request.

Checks hit an in-memory cache; a revoked key stops working within `auth_cache_ttl_s`. Every
authenticated request is charged to its key's rate limit (gateway/rate_limit.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from adapters.db import is_outage
from adapters.errors import Forbidden, NotFound, RateLimited, Unauthenticated
from adapters.schema import ApiKey, Scope, utcnow
from gateway.rate_limit import RateLimiter

KEY_PREFIX = "ll-"
KEY_SHAPE = re.compile(r"ll-[A-Za-z0-9_-]{43}")  # what create_key makes: token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, scope and tenant."""

    key_id: int | None
    name: str
    scope: Scope
    tenant: str
    log_prompts: bool = True
    rate_limit_rpm: int | None = None  # None: the gateway's default


DEV_PRINCIPAL = Principal(None, "development", Scope.admin, "default")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, scope: Scope, tenant: str = "default",
               log_prompts: bool = True, rate_limit_rpm: int | None = None) -> tuple[str, ApiKey]:
    """Makes a key; returns the plaintext (shown once, never stored) and its row."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(plaintext), prefix=plaintext[:10], scope=scope,
                 tenant=tenant, log_prompts=log_prompts, rate_limit_rpm=rate_limit_rpm)
    session.add(row)
    session.flush()
    return plaintext, row


def revoke_key(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


class _Lru(OrderedDict):  # type: ignore[type-arg]
    """A dict that forgets its least recently used entries beyond `size`."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_fresh(self, key: str):  # type: ignore[no-untyped-def]
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Authenticator:
    """Checks bearer keys, cheapest test first, so that unknown keys cost next to nothing:

    1. the key's shape (`ll-` and 43 URL-safe characters): anything else is refused without
       a hash or a lookup;
    2. a cache of known keys and one of unknown ones, separate LRUs, so a flood of random
       well-formed keys can never evict the keys real clients use;
    3. the database, on a miss. A client address may spend `failures_per_minute` lookups a
       minute on keys it has not used successfully yet (the token is taken before the lookup
       and given back when the key exists, so concurrent requests cannot all pass). Past
       that its lookups take turns, one at a time for all such addresses, and get 429 while
       that lane is busy: a guessing client costs the database one connection at most, and
       a real key sent from the same address (a NAT, a proxy) still gets through. At most
       `max_lookups` lookups run at once in all, so they never take the thread pool or the
       database's connections from the interaction log and the ratings.
    """

    def __init__(self, sessions: sessionmaker | None, cache_ttl_s: float,
                 limiter: RateLimiter | None = None, failures_per_minute: int = 60, cache_size: int = 10_000,
                 max_lookups: int = 4):
        self.sessions = sessions  # None: development mode, every caller is an admin
        self.cache_ttl_s = cache_ttl_s
        self.limiter = limiter or RateLimiter(0, 10)
        self._known = _Lru(cache_size)  # key hash -> (Principal | None (revoked), valid until)
        self._unknown = _Lru(cache_size)  # key hash -> valid until
        self._failures = FailureLimiter(failures_per_minute)
        self._lookups = anyio.CapacityLimiter(max_lookups)
        self._slow_lane = anyio.Lock()  # lookups of addresses over their budget, one at a time
        self.refused_shape = 0  # counted for the metrics
        self.refused_unknown = 0

    def _lookup(self, key_hash: str) -> Principal | None:
        assert self.sessions is not None
        with self.sessions() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.id, row.name, row.scope, row.tenant, row.log_prompts, row.rate_limit_rpm)

    async def authenticate(self, authorization: str | None, client: str = "", charge: bool = True) -> Principal:
        """The caller behind `authorization` (an HTTP header), from `client` (its address),
        charged to its key's rate limit unless `charge` is false."""
        if self.sessions is None:
            return DEV_PRINCIPAL
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'.")
        key = authorization[7:].strip()
        if not KEY_SHAPE.fullmatch(key):
            self.refused_shape += 1
            raise Unauthenticated("Invalid API key.")
        principal = await self._principal(hash_key(key), client)
        if principal is None:
            self.refused_unknown += 1
            raise Unauthenticated("Invalid or revoked API key.")
        if charge:
            await self.limiter.charge(principal.key_id, principal.rate_limit_rpm)
        return principal

    async def _principal(self, key_hash: str, client: str) -> Principal | None:
        now = time.monotonic()
        known = self._known.get_fresh(key_hash)
        if known is not None and known[1] > now:
            return known[0]
        unknown_until = self._unknown.get_fresh(key_hash)
        if known is None and unknown_until is not None and unknown_until > now:
            self._failures.spend(client)
            return None
        if known is not None:  # seen before: re-checking it is no guess
            return await self._look_up(key_hash, known)
        if self._failures.take(client):
            principal = await self._look_up(key_hash, None)
            if principal is not None:
                self._failures.refund(client)
            return principal
        if self._slow_lane.locked():
            raise RateLimited("Too many invalid API keys from this address; retry shortly.", retry_after_s=1)
        async with self._slow_lane:
            return await self._look_up(key_hash, None)

    async def _look_up(self, key_hash: str, known: tuple[Principal | None, float] | None) -> Principal | None:
        now = time.monotonic()
        try:
            principal = await anyio.to_thread.run_sync(self._lookup, key_hash, limiter=self._lookups)
        except Exception as exc:
            if known is None or not is_outage(exc):
                raise
            # The database is restarting: a key seen recently keeps working meanwhile
            # (a revocation made during the outage takes effect once it is back).
            return known[0]
        if principal is None and known is None:
            self._unknown.put(key_hash, now + self.cache_ttl_s)
        else:  # revoked keys stay here, so a revocation never makes room for random keys
            self._known.put(key_hash, (principal, now + self.cache_ttl_s))
        return principal


class FailureLimiter:
    """Lookups of not-yet-known keys per client address: a token bucket of `per_minute`.
    IPv6 addresses count by /64 (one host can hold a whole /64)."""

    def __init__(self, per_minute: int, addresses: int = 100_000):
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, per_minute))
        self._buckets = _Lru(addresses)  # address -> (tokens, at)

    def take(self, client: str) -> bool:
        """Spends one of `client`'s tokens if it has one; False when it has none."""
        if self.rate <= 0:  # off
            return True
        now, where = time.monotonic(), _network(client)
        tokens = self._tokens(where, now)
        if tokens < 1.0:
            return False
        self._buckets.put(where, (tokens - 1.0, now))
        return True

    def spend(self, client: str) -> None:
        """Spends a token whether or not there is one (a key already known to be unknown)."""
        if self.rate > 0:
            now, where = time.monotonic(), _network(client)
            self._buckets.put(where, (max(0.0, self._tokens(where, now) - 1.0), now))

    def refund(self, client: str) -> None:
        """Gives back the token of a lookup that found a key."""
        if self.rate > 0:
            now, where = time.monotonic(), _network(client)
            self._buckets.put(where, (min(self.capacity, self._tokens(where, now) + 1.0), now))

    def _tokens(self, where: str, now: float) -> float:
        tokens, at = self._buckets.get(where) or (self.capacity, now)
        return min(self.capacity, tokens + (now - at) * self.rate)


def _network(client: str) -> str:
    if ":" not in client:
        return client
    try:
        return str(ipaddress.ip_network(f"{client}/64", strict=False))
    except ValueError:
        return client


def client_address(request: Request) -> str:
    """The caller's address as the server sees it (behind a proxy: the client's, from
    X-Forwarded-For, when LORALOOP_FORWARDED_ALLOW_IPS names the proxy)."""
    return request.client.host if request.client else ""


def require_admin(principal: Principal) -> Principal:
    if principal.scope != Scope.admin:
        raise Forbidden("This route needs an admin key; app keys may call completions and feedback.")
    return principal

"""API keys: created and revoked with the CLI, stored as SHA-256 hashes, checked per request.

Checks hit an in-memory cache; a revoked key stops working within `auth_cache_ttl_s`. Every
authenticated request is charged to its key's rate limit (gateway/rate_limit.py).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import anyio
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from adapters.errors import Forbidden, NotFound, Unauthenticated
from adapters.schema import ApiKey, Scope, utcnow
from gateway.rate_limit import RateLimiter

KEY_PREFIX = "ll-"


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


class Authenticator:
    def __init__(self, sessions: sessionmaker | None, cache_ttl_s: float,
                 limiter: RateLimiter | None = None):
        self.sessions = sessions  # None: development mode, every caller is an admin
        self.cache_ttl_s = cache_ttl_s
        self.limiter = limiter or RateLimiter(0, 10)
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    def _lookup(self, key_hash: str) -> Principal | None:
        assert self.sessions is not None
        with self.sessions() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.id, row.name, row.scope, row.tenant, row.log_prompts, row.rate_limit_rpm)

    async def authenticate(self, authorization: str | None) -> Principal:
        if self.sessions is None:
            return DEV_PRINCIPAL
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'.")
        key_hash = hash_key(authorization[7:].strip())
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            try:
                principal = await anyio.to_thread.run_sync(self._lookup, key_hash)
            except (OperationalError, InterfaceError):
                if cached is None:
                    raise
                # The database is restarting: a key seen recently keeps working meanwhile
                # (a revocation made during the outage takes effect once it is back).
                principal = cached[0]
            if len(self._cache) > 10_000:  # unknown keys are cached too; keep it bounded
                self._cache.clear()
            self._cache[key_hash] = (principal, now + self.cache_ttl_s)
        if principal is None:
            raise Unauthenticated("Invalid or revoked API key.")
        await self.limiter.charge(principal.key_id, principal.rate_limit_rpm)
        return principal


def require_admin(principal: Principal) -> Principal:
    if principal.scope != Scope.admin:
        raise Forbidden("This route needs an admin key; app keys may call completions and feedback.")
    return principal

"""Routing by the request's `model` field (DESIGN.md):

    the base model's name      -> the base model, no adapter        (arm "base")
    an adapter version's name  -> that version, pinned              (arm "pinned")
    an alias                   -> its champion; the base model while it has none
                                                                    (arm "champion")
    an alias in an experiment  -> canary_share of its users (by a hash of the user id, so
                                  a user keeps their arm) get the canary (arm "canary"),
                                  the rest the champion; requests without a user id are
                                  assigned at random. Not before a replica holds the canary.
    an alias, with a segment       -> the segment's alias `<alias>@<segment>` as above, once it
      (X-Loraloop-Segment, or the     exists (adapters/segments.py); until then the alias.
      user's learned segment)         A segment's alias without a champion serves the alias's.
                                      A declared segment wins over a learned one.

Versions and aliases that belong to one tenant exist only for that tenant's keys: for any
other key they are a 404, exactly like names that do not exist, and /v1/models omits them.

The table is a snapshot of the registry, refreshed in the background and once more on a
miss, so a version registered a moment ago is routable at once. Learned segments' members
are too many for it (one row per user): a user's is read when first needed, off the event
loop, and kept 30 s in a bounded cache (`Assignments`), only for aliases that
have learned segments and only for the tenant whose users were placed.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from adapters import registry, segment_assignments
from adapters.errors import ModelNotFound
from adapters.schema import DEFAULT_TENANT
from adapters.segments import segment_alias, split_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    upstream_model: str  # the name vLLM is asked for
    adapter: str | None  # adapter version, None for the base model
    adapter_path: str | None
    alias: str | None  # the alias that served it: a segment's own (`<alias>@<segment>`) where it has one
    arm: str
    segment: str = ""  # the user's segment: as the request declared it, or as their thumbs placed them


class Router:
    def __init__(self, sessions: sessionmaker, base_model: str, miss_refresh_s: float = 0.5,
                 ready: Callable[[str], bool] = lambda name: True):
        self.sessions = sessions
        self.base_model = base_model
        # Whether a canary is loaded on a replica: until it is, its users get the champion.
        self.ready = ready
        self.table = registry.RoutingSnapshot(versions={}, aliases={})
        self.miss_refresh_s = miss_refresh_s
        self._loaded_at = 0.0
        self._started = self._applied = 0  # refresh tickets
        self.assignments = Assignments(sessions)

    def _load(self) -> registry.RoutingSnapshot:
        with self.sessions() as session:
            return registry.snapshot(session)

    async def refresh(self) -> None:
        # Refreshes overlap (the background loop, an admin action, a miss); one that started
        # earlier but finished later must not put an older table back.
        self._started += 1
        ticket = self._started
        table = await anyio.to_thread.run_sync(self._load)
        if ticket > self._applied:
            self.table, self._applied = table, ticket
            self._loaded_at = time.monotonic()

    async def resolve(self, model: str, user: str = "", tenant: str = "default", segment: str = "") -> Route:
        if not segment and user and model in self.table.learned and \
                tenant == (self.table.owners.get(model) or DEFAULT_TENANT):
            segment = await self.assignments.segment(model, tenant, user)
        route = self._lookup(model, user, tenant, segment)
        if route is None and time.monotonic() - self._loaded_at > self.miss_refresh_s:
            await self.refresh()
            route = self._lookup(model, user, tenant, segment)
        if route is None:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        return route

    def visible(self, name: str, tenant: str) -> bool:
        return self.table.owners.get(name, tenant) == tenant

    def _lookup(self, model: str, user: str, tenant: str, segment: str = "") -> Route | None:
        if not self.visible(model, tenant):
            return None
        if model == self.base_model:
            return Route(self.base_model, None, None, None, "base", segment)
        path = self.table.versions.get(model)
        if path is not None:
            return Route(model, model, path, None, "pinned", segment)
        if model not in self.table.aliases:
            return None
        if model in self.table.parents:  # a segment's alias named directly: that segment
            segment = split_name(model)[1] or ""
        elif segment and segment_alias(model, segment) in self.table.aliases:
            model = segment_alias(model, segment)
        split = self.table.splits.get(model)
        if split is not None and split.canary in self.table.versions and in_canary(split, user) \
                and self.ready(split.canary):
            return Route(split.canary, split.canary, self.table.versions[split.canary], model, "canary", segment)
        champion = self.table.champion(model)
        if split is not None and model in self.table.parents:
            # A segment following its parent's champion keeps the one its experiment started
            # with: a promotion decided on the parent's users must not swap the arm it is
            # compared with midway (the judge counts each arm's version only).
            champion = split.champion
        if champion is None or champion not in self.table.versions:
            return Route(self.base_model, None, None, model, "champion", segment)
        return Route(champion, champion, self.table.versions[champion], model, "champion", segment)

    def live_versions(self) -> dict[str, str]:
        """Versions that aliases send users to (champions and running canaries) -> path: what
        every replica should hold before traffic for them arrives."""
        t = self.table
        names = {c for c in t.aliases.values() if c} | {s.canary for s in t.splits.values()} | \
            {s.champion for s in t.splits.values() if s.champion}  # segments' too
        return {n: t.versions[n] for n in names if n in t.versions}

    def model_ids(self, tenant: str) -> list[tuple[str, str]]:
        """(id, kind) of everything this tenant's apps may name in `model`."""
        return [(name, kind) for name, kind in (
            [(self.base_model, "base")]
            + [(name, "adapter") for name in sorted(self.table.versions)]
            + [(alias, "alias") for alias in sorted(self.table.aliases)]) if self.visible(name, tenant)]


def in_canary(split: registry.Split, user: str) -> bool:
    """Sticky: the same user in the same experiment always lands on the same arm."""
    if not user:
        return random.random() < split.share
    digest = hashlib.blake2b(f"{split.experiment}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 < split.share


class Assignments:
    """Users' learned segments (adapters/segment_assignments.py), read once per `ttl_s` per
    user and kept for at most `size` users (least recently used out first): a client
    inventing user ids costs one indexed read each, and memory stays flat. When a read fails
    (the database is down), nobody's is read for `retry_s`: they get the alias's champion
    at once instead of each waiting on the database."""

    def __init__(self, sessions: sessionmaker, ttl_s: float = 30.0, size: int = 100_000, retry_s: float = 5.0):
        self.sessions, self.ttl_s, self.size, self.retry_s = sessions, ttl_s, size, retry_s
        self._down_until = 0.0
        self._cache: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()

    def _read(self, parent: str, tenant: str, user: str) -> str:
        with self.sessions() as session:
            return segment_assignments.segment_of(session, parent, tenant, user)

    async def segment(self, parent: str, tenant: str, user: str) -> str:
        key = (parent, tenant, user)
        hit = self._cache.get(key)
        if hit is not None and hit[1] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[0]
        if time.monotonic() < self._down_until:  # the database failed a moment ago: do not queue on it
            return ""
        try:
            segment = await anyio.to_thread.run_sync(self._read, parent, tenant, user)
        except (OperationalError, InterfaceError) as exc:  # the database is down: everyone backs off a while
            log.warning("learned segments unreadable (%s); serving the alias's champion for %.0f s",
                        type(exc).__name__, self.retry_s)
            self._down_until = time.monotonic() + self.retry_s
            return ""
        except SQLAlchemyError as exc:  # this one read failed (an odd id): this user only, nobody else waits
            log.warning("learned segment of a user unreadable (%s)", type(exc).__name__)
            return ""
        self._cache[key] = (segment, time.monotonic() + self.ttl_s)
        self._cache.move_to_end(key)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return segment

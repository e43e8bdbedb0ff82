"""The fleet: every vLLM replica, whether it is up, and which adapter versions it holds.

Replicas forget their adapters when they restart; the fleet learns that from the next probe
(or from a 404 on use) and loads them again on demand, so a restarted replica reconciles
itself without an operator. What a replica holds is only ever replaced by what a probe read
from it, never cleared on a guess: a replica taken out of rotation for a transient error
comes back with its adapters, without a reload storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from adapters.errors import AdapterLoadFailed

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    url: str
    healthy: bool = False
    in_flight: int = 0
    base_model: str | None = None  # the name the replica serves its base model under
    loaded: set[str] = field(default_factory=set)  # adapter versions it holds now
    slow_probes: int = 0  # consecutive probes that timed out
    failures: int = 0  # consecutive completions answered 502/503/504
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # adapter version -> time.monotonic() of its last failed load here (see ensure_loaded)
    load_failed_at: dict[str, float] = field(default_factory=dict)


class Fleet:
    # A replica busy generating can answer a probe late; only this many timeouts in a row
    # (or a refused connection at once) take it out of rotation.
    SLOW_PROBES_TO_DOWN = 3
    # A 502/503/504 is often one overloaded moment or a proxy hiccup: the request moves on,
    # the replica stays in rotation until this many in a row (or a probe) say it is down.
    FAILURES_TO_DOWN = 3
    # A load that just failed on a replica (hung, or refused) is not tried there again for
    # this long: requests fail over at once instead of each waiting out a load of its own.
    LOAD_FAILURE_MEMORY_S = 5.0

    def __init__(self, urls: list[str], client: httpx.AsyncClient, probe_timeout_s: float = 5.0,
                 load_timeout_s: float = 30.0):
        self.replicas = [Replica(url) for url in urls]
        self.client = client
        self.probe_timeout_s = probe_timeout_s
        # Loads and unloads get their own deadline, far shorter than a completion's: a hung
        # load must not hold a request (or a reconcile round) for the upstream timeout.
        self.load_timeout_s = load_timeout_s
        self.down_events: dict[str, int] = {}  # url -> times taken out of rotation
        self.unloaded: set[str] = set()  # retired versions already unloaded everywhere
        self._next = 0

    def pick_order(self) -> list[Replica]:
        """Healthy replicas, least busy first (ties rotate); down ones wait for their probe."""
        n = len(self.replicas)
        self._next = (self._next + 1) % max(n, 1)
        rotated = self.replicas[self._next:] + self.replicas[:self._next]
        return sorted((r for r in rotated if r.healthy), key=lambda r: r.in_flight)

    def base_model(self) -> str | None:
        return next((r.base_model for r in self.replicas if r.base_model), None)

    async def probe(self, replica: Replica) -> None:
        """Asks a replica what it serves; a replica that does not answer is marked down."""
        try:
            resp = await self.client.get(f"{replica.url}/v1/models", timeout=self.probe_timeout_s)
            resp.raise_for_status()
            models = resp.json()["data"]
        except httpx.TimeoutException as exc:
            replica.slow_probes += 1
            if replica.healthy and replica.slow_probes >= self.SLOW_PROBES_TO_DOWN:
                self.mark_down(replica, exc)
            return
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            if replica.healthy:
                self.mark_down(replica, exc)
            return
        replica.slow_probes = 0
        if not replica.healthy:
            log.info("replica %s is up", replica.url)
        replica.base_model = next((m["id"] for m in models if not m.get("parent")), None)
        replica.loaded = {m["id"] for m in models if m.get("parent")}
        replica.healthy = True

    async def probe_all(self) -> None:
        """Probes every replica at once."""
        await asyncio.gather(*(self.probe(r) for r in self.replicas))

    def mark_down(self, replica: Replica, reason: object) -> None:
        """Takes `replica` out of rotation until a probe finds it up. Its `loaded` is kept:
        the next successful probe replaces it with what the replica lists (none after a
        restart), so guessing here could only cause needless reloads."""
        log.warning("replica %s is down: %r", replica.url, reason)
        if replica.healthy:
            self.down_events[replica.url] = self.down_events.get(replica.url, 0) + 1
        replica.healthy = False
        replica.failures = 0  # it starts afresh once a probe brings it back

    def report_failure(self, replica: Replica, reason: object) -> None:
        """A completion on `replica` was answered 502/503/504: out of rotation only after
        FAILURES_TO_DOWN in a row."""
        replica.failures += 1
        log.warning("replica %s failed a request (%d in a row): %r", replica.url, replica.failures, reason)
        if replica.failures >= self.FAILURES_TO_DOWN:
            self.mark_down(replica, reason)

    def report_success(self, replica: Replica) -> None:
        """A completion on `replica` got an answer that was not a 502/503/504."""
        replica.failures = 0

    async def ensure_loaded(self, replica: Replica, name: str, path: str) -> None:
        """Loads adapter version `name` on `replica` unless it already holds it. Raises
        AdapterLoadFailed (its message names the replica and what it said: for the logs, not
        for clients) when it did not load within `load_timeout_s`, waiting included, or
        failed there a moment ago."""
        if name in replica.loaded:
            return
        self._raise_if_failed_lately(replica, name)
        lock = replica._locks.setdefault(name, asyncio.Lock())
        loading = False
        try:
            # One deadline for waiting on the lock and for the load: a request queued behind
            # a hung load gives up with it, not one load timeout after the one before it.
            async with asyncio.timeout(self.load_timeout_s), lock:
                if name in replica.loaded:
                    return
                # The load it waited on failed: failing over now beats trying it again.
                self._raise_if_failed_lately(replica, name)
                loading = True
                # httpx's timeouts are per read; the deadline above covers the whole call, as
                # a replica trickling bytes (or a transport without timeouts) could hold it forever.
                resp = await self.client.post(f"{replica.url}/v1/load_lora_adapter",
                                              json={"lora_name": name, "lora_path": path},
                                              timeout=self.load_timeout_s)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if not loading:  # waited out the deadline behind another request's load
                raise AdapterLoadFailed(f"replica {replica.url}: gave up waiting on another load of "
                                        f"adapter {name} after {self.load_timeout_s:g} s") from exc
            self._load_failed(replica, name)
            raise AdapterLoadFailed(f"replica {replica.url} did not load adapter {name} "
                                    f"within {self.load_timeout_s:g} s") from exc
        # 400 "already loaded" means another gateway replica got there first: fine.
        if resp.status_code == 200 or (resp.status_code == 400 and "already" in resp.text):
            replica.loaded.add(name)
            replica.load_failed_at.pop(name, None)
            log.info("loaded adapter %s on %s", name, replica.url)
            return
        self._load_failed(replica, name)
        # vLLM's text names the adapter's path on disk: logs only (the proxy tells the client
        # something generic), and no more than 200 characters of it.
        raise AdapterLoadFailed(f"replica {replica.url} refused adapter {name}: "
                                f"{resp.status_code} {resp.text[:200]}")

    def _load_failed(self, replica: Replica, name: str) -> None:
        replica.load_failed_at[name] = time.monotonic()

    def _raise_if_failed_lately(self, replica: Replica, name: str) -> None:
        """A load that failed (timed out, or was refused) LOAD_FAILURE_MEMORY_S ago or less is
        not tried again: every request would otherwise wait out its own copy of a hung load."""
        failed_at = replica.load_failed_at.get(name)
        if failed_at is not None and time.monotonic() - failed_at < self.LOAD_FAILURE_MEMORY_S:
            raise AdapterLoadFailed(f"replica {replica.url} failed to load adapter {name} "
                                    f"{time.monotonic() - failed_at:.1f} s ago; not retried yet")

    def holds(self, name: str) -> bool:
        """Whether some replica in rotation has `name` loaded (and so can serve it now)."""
        return any(r.healthy and name in r.loaded for r in self.replicas)

    async def reconcile(self, live: dict[str, str], retired: frozenset[str]) -> None:
        """Every healthy replica loads the `live` versions (name -> path: what aliases route
        to) before their traffic arrives, also after a restart; a version that retired gives
        its slot back, once (a pinned request may load it again). Replicas load at the same
        time, each its versions one after the other: one slow replica delays only itself."""

        async def load_all(replica: Replica) -> None:
            for name, path in live.items():
                if replica.healthy and name not in replica.loaded:
                    try:
                        await self.ensure_loaded(replica, name, path)
                    except (AdapterLoadFailed, httpx.HTTPError) as exc:  # not routed until it loads
                        log.warning("could not load %s on %s: %r", name, replica.url, exc)

        await asyncio.gather(*(load_all(r) for r in self.replicas))
        for name in retired - self.unloaded:
            if await self.unload(name):
                self.unloaded.add(name)

    async def unload(self, name: str) -> bool:
        """Frees `name`'s slot on every replica holding it (a retired version), on all of
        them at once. False when some replica could not be reached: try again later."""

        async def unload_from(replica: Replica) -> bool:
            try:
                async with asyncio.timeout(self.load_timeout_s):
                    resp = await self.client.post(f"{replica.url}/v1/unload_lora_adapter",
                                                  json={"lora_name": name}, timeout=self.load_timeout_s)
            except (TimeoutError, httpx.HTTPError) as exc:  # the slot stays taken; harmless
                log.warning("could not unload %s from %s: %r", name, replica.url, exc)
                return False
            if resp.status_code in (200, 404):  # 404: it was gone already
                replica.loaded.discard(name)
                log.info("unloaded adapter %s from %s", name, replica.url)
            else:  # a refusal would be refused again: not retried
                log.warning("replica %s refused to unload %s: %s", replica.url, name, resp.status_code)
            return True

        done = await asyncio.gather(*(unload_from(r) for r in self.replicas if r.healthy and name in r.loaded))
        return all(done)

    def forget(self, replica: Replica, name: str) -> None:
        """Called when a replica turns out not to hold `name` after all (it restarted)."""
        replica.loaded.discard(name)

"""The gateway's background loops, each on its own interval: replica health probes, loading
what the routes need onto the replicas (apart from the probes), routing table refreshes,
dashboard figures from the database, the experiment judge, and the two writers (interaction
log, ratings). `running(state)` starts them all and, on the way out, writes what the log
still holds before stopping them."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio

from adapters import leases
from adapters.experiments import judge_all
from adapters.stats import read_stats
from gateway.state import GatewayState

log = logging.getLogger(__name__)


@asynccontextmanager
async def running(state: GatewayState) -> AsyncIterator[None]:
    """Serves with every loop running: first one round of each, so the gateway starts with
    a routing table, its replicas' health and the dashboard figures."""
    settings = state.settings
    await state.fleet.probe_all()
    adopt_base_model(state)
    await state.router.refresh()
    await refresh_stats(state)
    async with anyio.create_task_group() as tasks:
        # Probing and loading on separate loops: a hung adapter load must not stop the
        # probes that notice a replica going down (or coming back).
        tasks.start_soon(every, settings.health_interval_s, lambda: probe_health(state))
        tasks.start_soon(every, settings.health_interval_s, state.sync_fleet)
        tasks.start_soon(every, settings.registry_refresh_s, state.router.refresh)
        tasks.start_soon(every, settings.stats_refresh_s, lambda: refresh_stats(state))
        tasks.start_soon(every, settings.experiments.check_interval_s, lambda: judge_experiments(state))
        tasks.start_soon(state.log.run)
        tasks.start_soon(state.ratings.run)
        yield
        with anyio.move_on_after(10):  # a graceful stop writes what is queued
            await state.log.flush()
        tasks.cancel_scope.cancel()


def adopt_base_model(state: GatewayState) -> None:
    """Without a configured name, apps call the base model by the name the replicas use."""
    if not state.settings.served_model_name and (name := state.fleet.base_model()):
        state.router.base_model = name


async def probe_health(state: GatewayState) -> None:
    """One round of health probes: which replicas are up and what each holds."""
    await state.fleet.probe_all()
    adopt_base_model(state)


async def probe(state: GatewayState) -> None:
    """One probe round, then one reconcile round on what it found (the loops run the two
    apart; this is the both-at-once a caller waiting for a converged fleet wants)."""
    await probe_health(state)
    await state.sync_fleet()


async def judge_experiments(state: GatewayState) -> None:
    """One gateway replica at a time (a lease) judges the running experiments and acts."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{id(state)}"
    ttl = timedelta(seconds=max(30.0, 3 * state.settings.experiments.check_interval_s))

    def judge() -> None:
        if not leases.acquire(state.sessions, "experiments", holder, ttl):
            return
        try:
            for alias, decision, why in judge_all(state.sessions, state.settings.experiments.policy()):
                if decision != "continue":
                    log.warning("experiment on %s: %s (%s)", alias, decision, why)
        finally:
            leases.release(state.sessions, "experiments", holder)

    await anyio.to_thread.run_sync(judge)
    await state.router.refresh()
    await state.sync_fleet()


async def refresh_stats(state: GatewayState) -> None:
    window = timedelta(minutes=state.settings.drift_window_minutes)

    def read() -> None:
        with state.sessions() as session:
            state.metrics.db_stats = read_stats(session, window)

    await anyio.to_thread.run_sync(read)


async def every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await anyio.sleep(seconds)
        try:
            await job()
        except Exception:  # a failed round must not end the loop
            log.exception("background job failed")

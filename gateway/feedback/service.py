"""Durable feedback at thousands per second: group commit.

Each `POST /v1/feedback` puts its rating (or other feedback: adapters/signals.py) on a
queue and waits; one writer task takes every rating waiting at that moment, commits them in
one transaction (one fsync on SQLite with synchronous=FULL) and only then wakes the
requests, which answer 2xx. An acknowledged rating is therefore on disk, and the cost of the
fsync is shared by the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio
from sqlalchemy.orm import sessionmaker

from adapters.db import is_outage
from adapters.errors import InvalidRequest, NotStoredYet
from adapters.feedback import Rating, RatingResult, write_ratings
from adapters.signals import SignalIn, write_signals
from gateway.interaction_log import InteractionLog

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class RatingWriter:
    def __init__(self, sessions: sessionmaker, interactions: InteractionLog,
                 metrics: GatewayMetrics | None = None, batch_size: int = 1000, linger_s: float = 0.002,
                 pending_wait_s: float = 30.0):
        self.sessions = sessions
        self.metrics = metrics
        self.interactions = interactions
        self.batch_size = batch_size
        # Under load, waiting a moment for more ratings makes batches larger and each rating
        # cheaper to commit (bench/README.md); alone, a rating waits at most this long extra.
        self.linger_s = linger_s
        self.pending_wait_s = pending_wait_s
        self.queue: asyncio.Queue[tuple[Rating | SignalIn, asyncio.Future[RatingResult]]] = asyncio.Queue()

    async def submit(self, rating: Rating | SignalIn) -> RatingResult:
        pending = self.interactions.pending
        answers = _answers(rating)  # a preference is about two
        for answer in answers:
            if answer not in pending:
                continue
            # An answer served a moment ago: wait for that answer's row only, here, not in the
            # writer (which would hold up every other rating). The row can take seconds on a
            # busy SQLite (a writer waits up to its 30 s busy timeout for the lock). While the
            # database is away the wait ends at once and writing the rating fails fast (503
            # database_unavailable).
            with anyio.move_on_after(self.pending_wait_s):
                await self.interactions.wait_written(answer)
            if answer in pending and not self.interactions.database_away:
                raise NotStoredYet("This answer is not stored yet (the database is slow); retry the rating "
                                   "shortly.", param="id")
        result = await self._submit_once(rating)
        if not result.stored and not result.invalid and not pending.intersection(answers):
            # With several gateway replicas, the answer may have been served by another one
            # whose interaction log has not written it yet: give that log time to flush.
            await asyncio.sleep(3 * self.interactions.flush_interval_s)
            result = await self._submit_once(rating)
        if not result.stored and pending.intersection(answers):  # served here: never a 404
            raise NotStoredYet("This answer is not stored yet (the database was away); retry the rating "
                               "shortly.", param="id")
        return result

    async def _submit_once(self, rating: Rating | SignalIn) -> RatingResult:
        future: asyncio.Future[RatingResult] = asyncio.get_running_loop().create_future()
        await self.queue.put((rating, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            if self.queue.qsize() < 16:
                await asyncio.sleep(self.linger_s)
            while len(batch) < self.batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            results: list[RatingResult | Exception]
            try:
                results = list(await anyio.to_thread.run_sync(self._write, [rating for rating, _ in batch]))
            except Exception as exc:
                if is_outage(exc):
                    log.warning("writing %d ratings failed: the database is away (%s)", len(batch),
                                type(exc).__name__)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                # One rating the database refuses must not fail the others written with it.
                results = await anyio.to_thread.run_sync(self._write_each, [rating for rating, _ in batch])
            for (rating, future), result in zip(batch, results, strict=True):
                if future.done():  # the client hung up; the rating is stored anyway
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                    continue
                if result.stored and self.metrics is not None:
                    if isinstance(rating, SignalIn):
                        self.metrics.signals.labels(rating.kind, result.adapter_version or "", result.arm).inc()
                    else:
                        self.metrics.feedback.labels("up" if rating.rating > 0 else "down",
                                                     result.adapter_version or "", result.arm).inc()
                future.set_result(result)

    def _write_each(self, ratings: list[Rating | SignalIn]) -> list[RatingResult | Exception]:
        results: list[RatingResult | Exception] = []
        for rating in ratings:
            try:
                results.extend(self._write([rating]))
            except Exception as exc:  # noqa: BLE001 - handed to that rating's request
                if is_outage(exc):
                    results.append(exc)
                    continue
                log.error("rating of %s refused by the database (%s)", rating.interaction_id, type(exc).__name__)
                results.append(InvalidRequest("This rating cannot be stored (the database refused a value in it)."))
        return results

    def _write(self, batch: list[Rating | SignalIn]) -> list[RatingResult]:
        """One transaction for the batch; results in the batch's order."""
        ratings = [r for r in batch if isinstance(r, Rating)]
        signals = [s for s in batch if isinstance(s, SignalIn)]
        with self.sessions.begin() as session:
            rated = iter(write_ratings(session, ratings) if ratings else [])
            signalled = iter(write_signals(session, signals) if signals else [])
            return [next(rated) if isinstance(item, Rating) else next(signalled) for item in batch]


def _answers(rating: Rating | SignalIn) -> tuple[str, ...]:
    return rating.ids if isinstance(rating, SignalIn) else (rating.interaction_id,)

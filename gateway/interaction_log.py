"""The interaction log: every completion the gateway serves, written off the request path.

The proxy hands over the raw upstream bytes (`record`, no parsing, no I/O); a background task
drains the bounded queue in batches, parses the answers in a worker thread and writes one
transaction per batch. A slow database fills the queue instead of slowing completions;
what happens then is the `log_overflow` setting: drop the entry (counted in `dropped`), or
refuse new completions with 503 until there is room again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import null as sql_null
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapters.db import is_outage
from adapters.errors import LogQueueFull
from adapters.feedback import write_interactions
from adapters.schema import Interaction, utcnow
from gateway.openai_api import response_items

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass
class Record:
    id: str
    key_id: int | None
    tenant: str
    end_user: str
    requested_model: str
    adapter_version: str | None
    arm: str
    kind: str  # chat | completions | responses
    request_body: bytes  # the request as received; b"" when the key does not log prompts
    regenerates: str | None
    streamed: bool
    started: float  # time.perf_counter() at arrival
    created_at: datetime = field(default_factory=utcnow)
    status: int = 0
    raw: bytes = b""
    latency_ms: float = 0.0
    keep_text: bool = True
    segment: str = ""
    previous: str | None = None  # a Responses API conversation's previous response

    @property
    def size(self) -> int:
        """Bytes this entry holds while it waits to be written."""
        return len(self.request_body) + len(self.raw)


class InteractionLog:
    def __init__(self, sessions: sessionmaker, max_queue: int, overflow: str,
                 metrics: GatewayMetrics | None = None, batch_size: int = 500, flush_interval_s: float = 0.05,
                 max_bytes: int = 128 << 20):
        self.sessions = sessions
        self.metrics = metrics
        self.queue: asyncio.Queue[Record] = asyncio.Queue(max_queue)
        # Entries are bounded by bytes as well as by count: 10,000 entries of 4 MiB prompts
        # would otherwise be 40 GiB. An entry's bytes count until it is written.
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.overflow = overflow
        self.batch_size = batch_size
        # Entries gather this long before a write (unless a batch fills up or someone waits on
        # `flush`): one transaction per batch, not per completion, is what keeps logging's
        # CPU cost off the requests being served (bench/README.md).
        self.flush_interval_s = flush_interval_s
        self._wake = asyncio.Event()
        self.dropped = 0  # the queue was full
        self.refused = 0  # the database refused the row itself (it can never be written)
        self.written = 0
        self.pending: set[str] = set()  # ids queued but not yet committed
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()  # set (and replaced) after every batch
        self.database_away = False  # the last write found the database away (it is retrying)

    def admit(self) -> None:
        """Called before serving: under the `reject` policy a full log refuses new work."""
        if self.overflow == "reject" and (self.queue.full() or self.queued_bytes >= self.max_bytes):
            raise LogQueueFull("The interaction log is full; retry shortly.")

    def record(self, rec: Record) -> None:
        size = rec.size
        try:
            if self.queued_bytes and self.queued_bytes + size > self.max_bytes:
                raise asyncio.QueueFull
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("interaction log full: dropped %s (%d dropped so far)", rec.id, self.dropped)
            return
        self.queued_bytes += size
        self.pending.add(rec.id)
        self._idle.clear()
        if self.queue.qsize() >= self.batch_size:
            self._wake.set()

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            with anyio.move_on_after(self.flush_interval_s):
                await self._wake.wait()
            self._wake.clear()
            while len(batch) < self.batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await anyio.to_thread.run_sync(self._write, batch)
                self.written += len(batch)
                self.database_away = False
            except Exception as exc:
                # A row the database refuses (not an outage): write the rest one by one
                # rather than retry a batch that can never succeed.
                retry = await anyio.to_thread.run_sync(self._write_each, batch) if not is_outage(exc) else batch
                self.database_away = bool(retry)
                if retry:
                    # The database is away: keep the rows and retry, the queue absorbs the wait.
                    log.warning("writing %d interactions failed (%s); retrying in 1 s", len(retry),
                                type(exc).__name__)
                    await anyio.sleep(1)
                    for rec in retry:
                        self.record_retry(rec)
                    retried = {rec.id for rec in retry}
                    batch = [rec for rec in batch if rec.id not in retried]
            for rec in batch:  # written, or refused for good
                self.pending.discard(rec.id)
                self.queued_bytes -= rec.size
            self._progress.set()
            self._progress = asyncio.Event()
            if not self.pending:
                self._idle.set()

    def record_retry(self, rec: Record) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.dropped += 1
            self.pending.discard(rec.id)
            self.queued_bytes -= rec.size

    async def flush(self) -> None:
        """Waits until everything recorded so far is committed."""
        self._wake.set()
        await self._idle.wait()

    async def wait_written(self, interaction_id: str) -> None:
        """Returns once `interaction_id` waits no more: committed, or dropped. Wakes the writer
        rather than waiting for the whole log to go idle, which under sustained traffic it
        may never do. Returns early while the database is away: that wait has no bound."""
        while interaction_id in self.pending and not self.database_away:
            progress = self._progress
            self._wake.set()
            await progress.wait()

    def _write_each(self, batch: list[Record]) -> list[Record]:
        """Writes a batch the database refused in halves, and halves of those, until each
        refused row stands alone and is dropped (counted): a few bad rows cost a few dozen
        transactions, not one per row of the batch. Returns what is left to retry when the
        database went away meanwhile."""
        parts = [batch[len(batch) // 2:], batch[:len(batch) // 2]]
        while parts:
            part = parts.pop()
            if not part:
                continue
            try:
                self._write(part)
                self.written += len(part)
            except Exception as exc:
                if is_outage(exc):
                    return [rec for p in (part, *parts) for rec in p]
                if len(part) > 1:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]
                    continue
                self.refused += 1
                # the type only: the message may quote the prompt
                log.error("interaction %s refused by the database (%s); dropped", part[0].id, type(exc).__name__)
        return []

    def _write(self, batch: list[Record]) -> None:
        rows = [_row(rec) for rec in batch]
        with self.sessions.begin() as session:
            with_history(session, rows, [rec.previous for rec in batch])
            write_interactions(session, rows)
        if self.metrics is not None:
            self.metrics.count_tokens(rows)


def _row(rec: Record) -> dict:
    parse = parse_response if rec.kind == "responses" else parse_answer
    texts, finish_reason, usage = parse(rec.raw, rec.streamed) if rec.status == 200 else ([None], None, {})
    # Only served answers keep their prompt: a refused request's body is worth nothing to
    # training, and storing it would let a client write 4 MiB rows for free.
    prompt = prompt_of(rec.request_body, rec.kind) if rec.status == 200 else None
    # a model can emit NUL; PostgreSQL cannot store it
    texts = [text.replace("\x00", "") if text is not None else None for text in texts]
    text = texts[0]
    return {
        "id": rec.id, "key_id": rec.key_id, "tenant": rec.tenant, "end_user": rec.end_user,
        "requested_model": rec.requested_model, "adapter_version": rec.adapter_version, "arm": rec.arm,
        "kind": rec.kind, "prompt": prompt, "response": text if rec.keep_text else None,
        # every choice's text, for feedback on choice k (SQL NULL, not JSON null, for one choice)
        # (a key that logs no text keeps only how many there were)
        "choices": [(t or "") if rec.keep_text else "" for t in texts] if len(texts) > 1 else sql_null(),
        "finish_reason": finish_reason, "status": rec.status,
        "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
        "latency_ms": rec.latency_ms, "regenerates": rec.regenerates, "created_at": rec.created_at,
        "segment": rec.segment,
    }


def prompt_of(request_body: bytes, kind: str) -> Any:
    """The messages (chat, responses) or prompt (completions) of a request body the gateway accepted."""
    if not request_body:
        return None
    body = json.loads(request_body)
    if kind == "responses":
        return response_items.messages(body)
    return body.get("messages" if kind == "chat" else "prompt")


def with_history(session: Session, rows: list[dict], previous: list[str | None]) -> None:
    """Completes the prompt of each Responses API answer that continued a conversation
    (`previous[i]`, its previous response) with the conversation so far, read from the
    stored previous answer (or one earlier in `rows`), so it trains as the whole exchange.
    Where that history is not stored (a key that logs no text, a previous answer of tool
    calls only, a purged one), the prompt is dropped (SQL NULL: never trained on): half a
    conversation would teach answers to questions nobody asked."""
    wanted = {p for p in previous if p}
    if not wanted:
        return
    i = Interaction.__table__
    stored = {row.id: (row.prompt, row.response) for row in session.execute(
        select(i.c.id, i.c.prompt, i.c.response).where(i.c.id.in_(wanted)))}
    for row, before in zip(rows, previous, strict=True):
        if before and isinstance(row["prompt"], list):
            prompt, answer = stored.get(before, (None, None))
            whole = response_items.continued(prompt, answer, row["prompt"])
            row["prompt"] = whole if whole is not None else sql_null()
        # a later row may continue this one
        stored[row["id"]] = (row["prompt"] if isinstance(row["prompt"], list) else None, row["response"])


def parse_response(raw: bytes, streamed: bool) -> tuple[list[str | None], str | None, dict]:
    """([output text], finish reason, usage) of a Responses API answer or SSE stream."""
    text, finish_reason, usage = _parse_response(raw, streamed)
    return [text], finish_reason, usage


def _parse_response(raw: bytes, streamed: bool) -> tuple[str | None, str | None, dict]:
    try:
        if not streamed:
            return response_items.answer(json.loads(raw))
        deltas: list[str] = []
        for line in raw.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("type") in response_items.FINAL_EVENTS:
                return response_items.answer(event["response"])
            if event.get("type") == "response.output_text.delta":
                deltas.append(event.get("delta") or "")
        return "".join(deltas), None, {}  # the stream broke before its end
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None, {}


def parse_answer(raw: bytes, streamed: bool) -> tuple[list[str | None], str | None, dict]:
    """(text of each choice, the first choice's finish reason, usage) from a response body
    or SSE stream; ([None], None, {}) when it cannot be read."""
    try:
        if not streamed:
            body = json.loads(raw)
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] if "message" in c else c.get("text") for c in choices]
            return texts or [None], choices[0].get("finish_reason"), body.get("usage") or {}
        parts: dict[int, list[str]] = {0: []}
        finish_reason, usage = None, {}  # type: tuple[str | None, dict]
        for line in raw.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                index = choice.get("index", 0)
                delta = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
                parts.setdefault(index, []).append(delta or "")
                if index == 0:
                    finish_reason = choice.get("finish_reason") or finish_reason
        return ["".join(parts.get(i, [])) for i in range(max(parts) + 1)], finish_reason, usage
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return [None], None, {}

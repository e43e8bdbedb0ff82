"""Feedback -> training data, in TRL's standard formats.

    python -m trainer.data export --format dpo|kto|sft [--split train|heldout] [--out FILE]
    python -m trainer.data report
    python -m trainer.data purge [--older-than-days N] [--user ID]

Rules:
- One vote per answer (adapters.feedback.votes): its own end user's rating, else the first
  rating anyone gave it. +1 is liked, -1 disliked; other ratings of the answer do not count,
  so a client inventing `user` values cannot outvote the person who got the answer.
- DPO pairs: a liked and a disliked answer to the same prompt (the same conversation up to
  the answer), plus regeneration links (a disliked answer and its liked regeneration; marked
  `source: regeneration`, the strongest signal). Identical pairs are kept once.
- KTO: every rated answer as `prompt/completion/label`. SFT: liked conversations as `messages`.
- At most `max_per_user` examples come from one end user, so no one dominates; regeneration
  pairs are counted first.
- The held-out split is by prompt: a prompt's examples are all on one side, never both.
- Tenants (`for_alias`): an alias owned by a tenant trains on that tenant's feedback only; a
  shared alias on the feedback of tenant "default" only, unless `cross_tenant` opts in to
  every tenant that owns no alias. A tenant's data never reaches an adapter another
  tenant's users get without that opt-in.
- Segments (`for_alias`): a segment's alias (`support@formal`, adapters/segments.py) trains
  on its segment's traffic only, including what its users were served before it had an
  alias (for a learned segment: what its assigned users were served by the alias). Any
  other alias trains as before segments, on its tenant(s)' feedback, less every segment
  alias's.
Interactions of keys that opted out of prompt logging carry no text and never appear here.

Scale: rows are streamed from the database (`BATCH` at a time), never loaded whole, and the
report's counts are GROUP BY queries. KTO and SFT read answers in the order they were
served; DPO reads them ordered by prompt (so its pairs come out in that order) and pairs one
prompt at a time, after a first pass that counts each user's regeneration pairs for the cap.
Memory is bounded by the largest prompt group and per-user counters (bounded by the number
of users), not by the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, String, Text, and_, case, cast, exists, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from adapters.feedback import purge_before, purge_user, votes
from adapters.schema import (
    CONVERSATION_KINDS,
    DEFAULT_TENANT,
    IMPLICIT_SIGNALS,
    Alias,
    Interaction,
    SegmentAssignment,
    SignalKind,
    utcnow,
)
from adapters.segments import segment_alias
from trainer.signal_data import SignalRow, choice_text, signal_counts, signal_rows

BATCH = 1000  # rows per fetch: a round trip's cost amortised, memory flat whatever the table's size
# An implicit signal ("copied", "regenerated" without a link) weighs this much of a thumb.
IMPLICIT_WEIGHT = 0.25


@dataclass
class DataConfig:
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out for eval."})
    max_per_user: int = field(default=200, metadata={"help": "Most examples one end user may contribute."})
    adapter_version: str | None = field(default=None, metadata={"help": "Only answers of this version."})
    tenant: str | None = field(default=None, metadata={"help": "Only this tenant's interactions."})
    exclude_tenants: tuple[str, ...] = ()  # never these tenants' interactions
    cross_tenant: bool = field(default=False, metadata={
        "help": "A shared alias trains on every tenant that owns no alias, not only tenant 'default'."})
    # (alias, segment) pairs of segments' aliases (for_alias sets them): with `segment_of`, that
    # segment's traffic only; without, never theirs
    segment_of: tuple[str, str] | None = None
    segments_off: tuple[tuple[str, str], ...] = ()
    # those of them that are learned: their assigned users' rows on the alias are theirs too
    learned: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError("heldout_fraction must be in [0, 1)")
        if self.max_per_user < 1:
            raise ValueError("max_per_user must be at least 1")


@dataclass
class Answer:
    id: str
    prompt: Any
    prompt_key: str
    text: str
    kind: str
    end_user: str
    score: int  # the answer's one vote: +1 or -1


Example = tuple[str, str, dict]  # (prompt key, split, example)


def prompt_key(prompt: Any) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_heldout(key: str, fraction: float) -> bool:
    return int(key[:8], 16) / 0xFFFFFFFF < fraction


def scope_filters(cfg: DataConfig) -> list[Any]:
    """The interactions' tenant and alias conditions of `cfg` (for_alias sets them)."""
    i = Interaction.__table__
    conditions = ([i.c.tenant == cfg.tenant] if cfg.tenant is not None else []) + \
        ([i.c.tenant.not_in(cfg.exclude_tenants)] if cfg.exclude_tenants else [])
    if cfg.segment_of is not None:
        conditions.append(_segments_traffic([cfg.segment_of], cfg.learned))
    if cfg.segments_off:
        conditions.append(~_segments_traffic(cfg.segments_off, cfg.learned))
    return conditions


def _segments_traffic(segments: Sequence[tuple[str, str]], learned: Sequence[tuple[str, str]] = ()) -> Any:
    """What these segments' aliases served, and what their users declared before they had one;
    for a learned segment, what its assigned users were served by the alias before."""
    i, a = Interaction.__table__, SegmentAssignment.__table__
    return or_(i.c.requested_model.in_([segment_alias(alias, segment) for alias, segment in segments]),
               *(and_(i.c.requested_model == alias, i.c.segment == segment) for alias, segment in segments),
               *(and_(i.c.requested_model == alias, i.c.segment == "",
                      exists().where(a.c.parent == alias, a.c.segment == segment, a.c.tenant == i.c.tenant,
                                     a.c.end_user == i.c.end_user))
                 for alias, segment in segments if (alias, segment) in learned))


def _rated(cfg: DataConfig) -> Select:
    """The rated answers `cfg` admits, each once with its vote as `score` (a JOIN, no id list)."""
    i = Interaction.__table__
    admitted = [i.c.response.is_not(None), i.c.prompt.is_not(None), i.c.status == 200]
    if cfg.adapter_version is not None:
        admitted.append(i.c.adapter_version == cfg.adapter_version)
    admitted += scope_filters(cfg)
    v = votes(*admitted, per_choice=True)  # the vote's window then ranks only these answers' ratings
    return (select(i.c.id, i.c.prompt, i.c.response, i.c.kind, i.c.end_user, i.c.adapter_version,
                   i.c.regenerates, i.c.created_at, i.c.segment, v.c.rating.label("score"),
                   v.c.choice.label("choice"), i.c.choices)
            .join(v, v.c.interaction_id == i.c.id))


def _stream(session: Session, query: Select) -> Iterator[Any]:
    """The rows of `query`, BATCH at a time (a server-side cursor on PostgreSQL)."""
    yield from session.execute(query.execution_options(yield_per=BATCH))


def _text(row: Any) -> str:
    """The rated choice's text ("" where a choice's text is not stored)."""
    return choice_text(row.response, row.choices, row.choice) or ""


def rated_answers(session: Session, cfg: DataConfig) -> Iterator[Answer]:
    """Every rated answer `cfg` admits, in the order they were served, streamed."""
    rated = _rated(cfg).subquery()
    for row in _stream(session, select(rated).order_by(rated.c.created_at, rated.c.id, rated.c.choice)):
        yield Answer(row.id, row.prompt, prompt_key(row.prompt), _text(row), row.kind, row.end_user, row.score)


def served_prompts(session: Session, cfg: DataConfig, alias: str, limit: int, per_user: int,
                   max_tokens: int) -> list[Any]:
    """Up to `limit` distinct chat prompts sent to `alias` (of the training split, from what
    `cfg` admits), rated or not, newest first, at most `per_user` from one end user id. What
    best-of-n samples answers for: it needs requests, not ratings, and users rate a few per
    cent of what they ask, so their prompts outnumber their thumbs ~10 to 1.

    Only plain requests are admitted: system and user turns of text ending on a user turn,
    at most `max_tokens` long. An assistant turn in a request is whatever the client wrote,
    and SFT would learn it (a thumb was needed for that before; a request is not enough).
    Requests that named a version or the base (evaluations, comparisons) are not the
    alias's users. The per-user cap keeps one user flooding requests from filling the
    sample, and API keys take turns (each key's newest, then each key's second newest...),
    so one client, however many user ids it invents or requests it sends, gets no more of
    the sample than any other key with traffic; an app whose one key serves all its users
    still gets it all. What is learned from the prompts is still decided by the judge
    (trained on thumbs capped per user), the gate and the A/B test."""
    i = Interaction.__table__
    # (an opted-out key's rows: a NULL response, and a prompt that may be JSON null, not SQL NULL)
    admitted = [i.c.response.is_not(None), i.c.status == 200, i.c.kind.in_(CONVERSATION_KINDS),
                i.c.prompt_tokens <= max_tokens]
    if cfg.segment_of is None:  # a segment's scope is all traffic to it already (its rows from before its alias too)
        admitted.append(i.c.requested_model == alias)
    admitted += scope_filters(cfg)
    # The turns are ranked over narrow columns only; the prompts are read for the rows kept.
    turn = func.row_number().over(partition_by=i.c.key_id, order_by=(i.c.created_at.desc(), i.c.id.desc()))
    ranked = select(i.c.id, i.c.key_id, i.c.created_at, turn.label("turn")).where(*admitted).subquery()
    query = (select(i.c.prompt, i.c.end_user).join(ranked, ranked.c.id == i.c.id)
             .where(ranked.c.turn <= limit * 20)
             .order_by(ranked.c.turn, ranked.c.created_at.desc(), ranked.c.key_id))
    seen: dict[str, Any] = {}
    cap = _Cap(per_user)
    # Bounded read: `limit` prompts rarely need more than a few times as many rows.
    for row in _stream(session, query.limit(limit * 20)):
        if not _plain_request(row.prompt):
            continue
        key = prompt_key(row.prompt)
        if key not in seen and _split(key, cfg) == "train" and cap.take(row.end_user):
            seen[key] = row.prompt
            if len(seen) >= limit:
                break
    return list(seen.values())


def _plain_request(prompt: Any) -> bool:
    """System and user turns of text, ending on a user turn."""
    return isinstance(prompt, list) and bool(prompt) and prompt[-1].get("role") == "user" and \
        all(isinstance(t, dict) and t.get("role") in ("system", "user") and isinstance(t.get("content"), str)
            for t in prompt)


def for_alias(session: Session, alias: str, cfg: DataConfig) -> DataConfig:
    """`cfg` restricted to the feedback that may train `alias` (see the module's rules)."""
    rows = session.execute(select(Alias.name, Alias.tenant, Alias.parent, Alias.segment, Alias.learned)
                           .where(Alias.deleted_at.is_(None))).all()  # a deleted segment's traffic: the parent's
    owners = {row.name: row.tenant for row in rows}
    segments = {row.name: (row.parent, row.segment) for row in rows if row.parent is not None}
    learned = tuple(sorted((row.parent, row.segment) for row in rows if row.parent is not None and row.learned))
    cfg = replace(cfg, segment_of=segments[alias], learned=learned) if alias in segments else \
        replace(cfg, segments_off=tuple(sorted(segments.values())), learned=learned)
    if owners.get(alias) is not None:
        return replace(cfg, tenant=owners[alias])
    owning = tuple(sorted({t for t in owners.values() if t is not None}))
    # Tenants that own an alias stay out of shared ones either way (so if "default" owns
    # one, a shared alias without the opt-in trains on nothing).
    return replace(cfg, exclude_tenants=owning) if cfg.cross_tenant else \
        replace(cfg, tenant=DEFAULT_TENANT, exclude_tenants=owning)


def _turn(kind: str, text: str) -> Any:
    """An answer's `text` as a TRL completion: an assistant turn where `kind` is chat-shaped."""
    return [{"role": "assistant", "content": text}] if kind in CONVERSATION_KINDS else text


class _Cap:
    """At most `limit` examples per end user; a Counter of users, bounded by users, not rows."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, Counter[str]()

    def take(self, user: str, reserved: int = 0) -> bool:
        if self.used[user] >= self.limit - reserved:
            return False
        self.used[user] += 1
        return True


def _split(key: str, cfg: DataConfig) -> str:
    return "heldout" if is_heldout(key, cfg.heldout_fraction) else "train"


def _prompt_text(session: Session, prompt: Any) -> Any:
    """A prompt as text: what answers are grouped and sorted by (PostgreSQL's JSON has no
    equality). Byte order ("C") sorts fastest there, and only equality matters."""
    text = cast(prompt, Text)
    return text.collate("C") if session.get_bind().dialect.name == "postgresql" else text


def _by_prompt(session: Session, cfg: DataConfig, regenerations_only: bool) -> Select:
    """Rated answers ordered by prompt, each followed by its links: the rows of the liked
    answers that regenerate it when it is disliked (`link` 1).

    A link row finds its original through a window over the original's id, a sort, not a
    join: PostgreSQL estimates votes() at 0.5% of its rows (a default selectivity for its
    `rank = 1`) and nest-looped a join of it with itself (70,000 x 70,000 rows)."""
    rated = _rated(cfg).cte("rated")
    # A regeneration links to an answer's first choice; its other choices stand alone.
    own = case((rated.c.choice == 0, rated.c.id), else_=rated.c.id + literal(":") + cast(rated.c.choice, String))
    both = union_all(select(rated, own.label("original"), literal(0).label("link")),
                     select(rated, rated.c.regenerates.label("original"), literal(1).label("link"))
                     .where(rated.c.regenerates.is_not(None), rated.c.score > 0, rated.c.choice == 0)).subquery()

    def of_original(column: Any) -> Any:  # the original's value, on its own row and its links'
        return func.max(case((both.c.link == 0, column))).over(partition_by=both.c.original)

    own_text = _prompt_text(session, both.c.prompt)
    placed = select(both, own_text.label("own_text"), of_original(own_text).label("group_text"),
                    of_original(both.c.created_at).label("original_at"),
                    of_original(both.c.score).label("original_score"),
                    func.sum(both.c.link).over(partition_by=both.c.original).label("links")).subquery()
    linked = placed.c.original_score < 0
    keep = and_(linked, placed.c.links > 0) if regenerations_only else or_(placed.c.link == 0, linked)
    # the prompt comes as group_text only: parsed once per prompt, not once per answer
    columns = [placed.c[name] for name in ("id", "response", "kind", "end_user", "score", "link", "group_text",
                                           "choice", "choices")]
    columns.append(case((placed.c.link == 1, placed.c.own_text)).label("own_text"))  # a link's own prompt only
    return select(*columns).where(keep).order_by(placed.c.group_text, placed.c.original_at, placed.c.original,
                                                 placed.c.link, placed.c.created_at, placed.c.id, placed.c.choice)


def _prompt_groups(session: Session, cfg: DataConfig,
                   regenerations_only: bool = False) -> Iterator[tuple[list[Answer], list[tuple[Answer, Answer]]]]:
    """(answers, links) for one prompt at a time: its rated answers, and the (liked
    regeneration, disliked original) links whose original is one of them. With
    `regenerations_only`, only the originals that have such a link, and their links."""
    answers: list[Answer] = []
    links: list[tuple[Answer, Answer]] = []
    text, prompt, key = None, None, ""
    for row in _stream(session, _by_prompt(session, cfg, regenerations_only)):
        if row.link:  # sorted right after its original
            # A regeneration may edit the prompt; its pair is filed under the original's. But
            # not across the held-out split: a client may point `regenerates` at any answer,
            # and a pair on the training side whose own prompt is held out (or the reverse)
            # would let a judge be checked on answers it trained on.
            if row.own_text == text or _split(prompt_key(json.loads(row.own_text)), cfg) == _split(key, cfg):
                links.append((Answer(row.id, None, "", _text(row), row.kind, row.end_user, row.score),
                              answers[-1]))
            continue
        if row.group_text != text:
            if answers:
                yield answers, links
            answers, links = [], []
            text, prompt = row.group_text, json.loads(row.group_text)
            key = prompt_key(prompt)
        answers.append(Answer(row.id, prompt, key, _text(row), row.kind, row.end_user, row.score))
    if answers:
        yield answers, links


def _group_pairs(answers: list[Answer], links: list[tuple[Answer, Answer]]) -> tuple[list[tuple], list[tuple]]:
    """(regeneration pairs, same-prompt pairs) of one prompt as (user, example); a pair
    identical to one already made (same prompt, chosen and rejected text) is dropped."""
    seen: set[tuple[str, str]] = set()

    def pairs(candidates: list[tuple[Answer, Answer]], source: str) -> list[tuple[str, dict]]:
        out = []
        for chosen, rejected in candidates:
            if chosen.text != rejected.text and (chosen.text, rejected.text) not in seen:
                seen.add((chosen.text, rejected.text))
                out.append((chosen.end_user, {"prompt": rejected.prompt, "chosen": _turn(chosen.kind, chosen.text),
                                              "rejected": _turn(rejected.kind, rejected.text), "source": source}))
        return out

    regenerations = pairs(links, "regeneration")
    liked, disliked = [a for a in answers if a.score > 0], [a for a in answers if a.score < 0]
    return regenerations, pairs([(c, r) for c in liked for r in disliked], "same_prompt")


def _signals(session: Session, cfg: DataConfig, kinds: Sequence[str], unrated: bool = False) -> Iterator[SignalRow]:
    """The counted signals of `kinds` on the answers `cfg` admits (trainer/signal_data.py);
    with `unrated`, only on answers nobody gave a thumb."""
    i = Interaction.__table__
    admitted = scope_filters(cfg) + ([i.c.adapter_version == cfg.adapter_version] if cfg.adapter_version else [])
    return signal_rows(session, admitted, kinds, unrated)


def _signal_pairs(session: Session, cfg: DataConfig) -> Iterator[tuple[str, str, dict]]:
    """(prompt key, user, pair) from the users' own verdicts: a preference between two
    answers, and an edit over the answer it corrects."""
    for row in _signals(session, cfg, (SignalKind.preference, SignalKind.edit)):
        chosen, rejected = (row.text, row.other) if row.kind == SignalKind.preference else (row.other, row.text)
        if chosen is not None and rejected is not None and chosen != rejected:
            yield prompt_key(row.prompt), row.answer_user, {
                "prompt": row.prompt, "chosen": _turn(row.conversation, chosen),
                "rejected": _turn(row.conversation, rejected), "source": row.kind}


def _dpo_groups(session: Session, cfg: DataConfig) -> Iterator[tuple[str, list[dict], bool]]:
    """(prompt key, its capped DPO pairs, whether it is a rated prompt's group), a group at a
    time: first a group per verdict pair (preferences, edits), then every rated prompt's.
    The users' own words win the per-user cap: verdicts first, then regeneration pairs (a
    first pass over the regeneration links counts each user's), and a user's same-prompt
    pairs get the room those leave."""
    regenerated = Counter(user for group in _prompt_groups(session, cfg, regenerations_only=True)
                          for user, _ in _group_pairs(*group)[0])
    first, rest = _Cap(cfg.max_per_user), _Cap(cfg.max_per_user)
    for key, user, pair in _signal_pairs(session, cfg):
        if first.take(user):
            regenerated[user] += 1  # room the same-prompt pairs leave for it
            yield key, [pair], False
    for answers, links in _prompt_groups(session, cfg):
        regenerations, same_prompt = _group_pairs(answers, links)
        yield answers[0].prompt_key, [e for user, e in regenerations if first.take(user)] + [
            e for user, e in same_prompt if rest.take(user, reserved=min(regenerated[user], cfg.max_per_user))], True


def dpo_pairs(session: Session, cfg: DataConfig) -> Iterator[Example]:
    """Capped DPO pairs (see the module's rules), streamed."""
    for key, pairs, _ in _dpo_groups(session, cfg):
        for example in pairs:
            yield key, _split(key, cfg), example


def kto_examples(session: Session, cfg: DataConfig) -> Iterator[Example]:
    """Capped KTO examples: every rated answer, labelled by its vote; then every edit, a
    desirable completion; then implicit signals on answers nobody rated, each a weak label
    kept with probability IMPLICIT_WEIGHT (a deterministic draw by the answer: it weighs
    that much of a thumb, in expectation)."""
    cap = _Cap(cfg.max_per_user)
    for a in rated_answers(session, cfg):
        if a.score != 0 and cap.take(a.end_user):
            yield a.prompt_key, _split(a.prompt_key, cfg), {
                "prompt": a.prompt, "completion": _turn(a.kind, a.text), "label": a.score > 0}
    for row in _signals(session, cfg, (SignalKind.edit,)):
        key = prompt_key(row.prompt)
        if row.other is not None and cap.take(row.answer_user):
            yield key, _split(key, cfg), {"prompt": row.prompt, "completion": _turn(row.conversation, row.other),
                                          "label": True}
    for row in _signals(session, cfg, IMPLICIT_SIGNALS, unrated=True):
        key = prompt_key(row.prompt)
        if _drawn(key + row.text, IMPLICIT_WEIGHT) and cap.take(row.answer_user):
            yield key, _split(key, cfg), {"prompt": row.prompt, "completion": _turn(row.conversation, row.text),
                                          "label": row.kind == SignalKind.copied, "source": "implicit"}


def _drawn(seed: str, weight: float) -> bool:
    return int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < weight


def sft_examples(session: Session, cfg: DataConfig) -> Iterator[Example]:
    """Capped SFT examples: liked chat answers as whole conversations, then the users'
    corrections of answers (edits) likewise."""
    cap = _Cap(cfg.max_per_user)
    for a in rated_answers(session, cfg):
        if a.score > 0 and a.kind in CONVERSATION_KINDS and cap.take(a.end_user):
            yield a.prompt_key, _split(a.prompt_key, cfg), {
                "messages": [*a.prompt, {"role": "assistant", "content": a.text}]}
    for row in _signals(session, cfg, (SignalKind.edit,)):
        key = prompt_key(row.prompt)
        if row.conversation in CONVERSATION_KINDS and row.other is not None and cap.take(row.answer_user):
            yield key, _split(key, cfg), {"messages": [*row.prompt, {"role": "assistant", "content": row.other}]}


def score_examples(session: Session, cfg: DataConfig) -> Iterator[Example]:
    """Named scores as `prompt/completion/name/value` rows (TRL has no format for them: for a
    reward model or an evaluation of the app's own). Not capped: nothing trains on them here."""
    for row in _signals(session, cfg, (SignalKind.score,)):
        key = prompt_key(row.prompt)
        yield key, _split(key, cfg), {"prompt": row.prompt, "completion": _turn(row.conversation, row.text),
                                      "name": row.name, "value": row.value, "comment": row.comment}


BUILDERS = {"dpo": dpo_pairs, "kto": kto_examples, "sft": sft_examples, "scores": score_examples}


def examples(session: Session, fmt: str, cfg: DataConfig) -> Iterator[tuple[str, dict]]:
    """(split, example) in format `fmt` (dpo, kto or sft), streamed from the database."""
    for _, split, example in BUILDERS[fmt](session, cfg):
        yield split, example


def sample_pairs(session: Session, cfg: DataConfig, most: int, seed: int = 0, per_prompt: int = 4) -> list[dict]:
    """A seeded uniform sample of at most `most` training-split DPO pairs, at most
    `per_prompt` of them from one prompt (its liked x disliked answers make a cross product:
    one popular prompt must not fill the sample). Reservoir sampling over the stream: the
    pairs come ordered by prompt text, so the first `most` would all start alike; memory
    stays at `most` pairs however large the store."""
    rng, seen = random.Random(seed), 0
    kept: list[dict] = []
    for key, pairs, _ in _dpo_groups(session, cfg):
        if _split(key, cfg) != "train":
            continue
        for example in rng.sample(pairs, min(len(pairs), per_prompt)):
            seen += 1
            if len(kept) < most:
                kept.append(example)
            elif (slot := rng.randrange(seen)) < most:
                kept[slot] = example
    return kept


def build(session: Session, fmt: str, cfg: DataConfig) -> dict[str, list[dict]]:
    """{"train": [...], "heldout": [...]} in format `fmt` (dpo, kto or sft)."""
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for split, example in examples(session, fmt, cfg):
        out[split].append(example)
    return out


def _pair_stats(session: Session, cfg: DataConfig) -> dict:
    """The report's prompt and pair figures, counted from one streamed DPO pass."""
    splits, sources, per_prompt, prompts = Counter[str](), Counter[str](), [], 0
    for key, pairs, rated_prompt in _dpo_groups(session, cfg):
        prompts += rated_prompt
        if pairs:
            per_prompt.append(len(pairs))
            splits[_split(key, cfg)] += len(pairs)
            sources.update(p["source"] for p in pairs)
    return {"prompts": prompts, "dpo_pairs": {"train": splits["train"], "heldout": splits["heldout"]},
            "pair_sources": {s: sources[s] for s in ("preference", "edit", "regeneration", "same_prompt")
                             if sources[s]},
            "pairs_per_prompt": {"max": max(per_prompt, default=0),
                                 "mean": round(sum(per_prompt) / len(per_prompt), 2) if per_prompt else 0}}


def _version_counts(session: Session, rated: Any) -> dict[str, dict[str, int]]:
    """Interactions, rated, liked and disliked answers per adapter version ("base": none)."""
    versions: dict[str, dict[str, int]] = {}

    def add(version: str | None, **counts: int) -> None:
        v = versions.setdefault(version or "base", {"interactions": 0, "rated": 0, "up": 0, "down": 0})
        for name, n in counts.items():
            v[name] += int(n or 0)

    i = Interaction.__table__
    for version, n in session.execute(select(i.c.adapter_version, func.count()).group_by(i.c.adapter_version)):
        add(version, interactions=n)
    for version, n, up, down in session.execute(
            select(rated.c.adapter_version, func.count(), func.sum(case((rated.c.score > 0, 1), else_=0)),
                   func.sum(case((rated.c.score < 0, 1), else_=0))).group_by(rated.c.adapter_version)):
        add(version, rated=n, up=up, down=down)
    return dict(sorted(versions.items()))


def report(session: Session, cfg: DataConfig) -> dict:
    """The data-quality report: counts in SQL (GROUP BY), pair figures from one DPO pass."""
    rated = _rated(cfg).subquery()
    versions = _version_counts(session, rated)
    per_user = select(func.count().label("n")).select_from(rated).group_by(rated.c.end_user).subquery()
    users, over_cap = session.execute(select(
        func.count(), func.coalesce(func.sum(case((per_user.c.n > cfg.max_per_user, 1), else_=0)), 0))).one()
    pairs = _pair_stats(session, cfg)
    def counted(column: Any) -> dict[str, dict[str, int]]:
        return {value or "": {"rated": int(n), "up": int(up or 0), "down": int(down or 0)}
                for value, n, up, down in session.execute(
                    select(column, func.count(), func.sum(case((rated.c.score > 0, 1), else_=0)),
                           func.sum(case((rated.c.score < 0, 1), else_=0))).group_by(column))}

    segments = counted(rated.c.segment)
    return {
        "rated_answers": sum(v["rated"] for v in versions.values()),
        "liked": sum(v["up"] for v in versions.values()), "disliked": sum(v["down"] for v in versions.values()),
        "prompts": pairs.pop("prompts"), **pairs,
        "users": users, "users_over_cap": over_cap,
        "per_adapter_version": versions,
        # as the requests declared them ("": none); a label's rows stay under it after it gets an alias
        "per_segment": dict(sorted(segments.items())),
        "per_kind": dict(sorted(counted(rated.c.kind).items())),  # chat | completions | responses
        **signal_counts(session, scope_filters(cfg)),  # feedback beyond thumbs: per kind; scores per name
    }


def main(argv: list[str] | None = None) -> None:
    from adapters.db import make_engine, make_sessionmaker, upgrade
    from adapters.settings import StoreSettings

    parser = argparse.ArgumentParser(prog="loraloop data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write training data as JSONL")
    export.add_argument("--format", choices=sorted(BUILDERS), default="dpo")
    export.add_argument("--split", choices=["train", "heldout"], default="train")
    export.add_argument("--out", help="file to write (default: standard output)")
    sub.add_parser("report", help="print the data-quality report as JSON")
    purge = sub.add_parser("purge", help="delete interactions and their ratings")
    purge.add_argument("--older-than-days", type=int, help="default: LORALOOP_RETENTION_DAYS")
    purge.add_argument("--user", help="delete everything of this end user (a deletion request)")
    for p in (export, sub.choices["report"]):
        p.add_argument("--heldout-fraction", type=float, default=DataConfig.heldout_fraction)
        p.add_argument("--max-per-user", type=int, default=DataConfig.max_per_user)
        p.add_argument("--adapter-version")
        p.add_argument("--alias", help="only the feedback that may train this alias (see Tenants above)")
        p.add_argument("--cross-tenant", action="store_true", help="with a shared --alias: "
                       "every tenant that owns no alias, not only tenant 'default'")
    args = parser.parse_args(argv)
    if getattr(args, "cross_tenant", False) and not args.alias:
        parser.error("--cross-tenant needs --alias")

    settings = StoreSettings()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    if args.command == "purge":
        days = args.older_than_days if args.older_than_days is not None else settings.retention_days
        if not days and not args.user:
            parser.error("purge needs --older-than-days, --user or LORALOOP_RETENTION_DAYS")
        with sessions.begin() as session:
            deleted = purge_user(session, args.user) if args.user else 0
            if days:
                deleted += purge_before(session, utcnow() - timedelta(days=days))
        print(json.dumps({"deleted_interactions": deleted}))
        return
    cfg = DataConfig(args.heldout_fraction, args.max_per_user, args.adapter_version, cross_tenant=args.cross_tenant)
    with sessions() as session:
        if args.alias:
            cfg = for_alias(session, args.alias, cfg)
        if args.command == "report":
            print(json.dumps(report(session, cfg), indent=2))
            return
        _export(session, args, cfg)


def _export(session: Session, args: argparse.Namespace, cfg: DataConfig) -> None:
    """Writes the chosen split as JSONL while the rows stream in: nothing is held in memory."""
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - stdout is not ours to close
    written = 0
    for split, example in examples(session, args.format, cfg):
        if split == args.split:
            out.write(json.dumps(example) + "\n")
            written += 1
    if args.out:
        out.close()
        print(f"wrote {written} {args.format} examples ({args.split}) to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

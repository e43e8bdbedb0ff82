"""Feedback -> training data, in TRL's standard formats.

    python -m trainer.data export --format dpo|kto|sft [--split train|heldout] [--out FILE]
    python -m trainer.data report
    python -m trainer.data purge [--older-than-days N] [--user ID]

Rules:
- An answer counts as liked (disliked) when its ratings sum above (below) zero.
- DPO pairs: a liked and a disliked answer to the same prompt (the same conversation up to
  the answer), plus regeneration links (a disliked answer and its liked regeneration; marked
  `source: regeneration`, the strongest signal). Identical pairs are kept once.
- KTO: every rated answer as `prompt/completion/label`. SFT: liked conversations as `messages`.
- At most `max_per_user` examples come from one end user, so no one dominates.
- The held-out split is by prompt: a prompt's examples are all on one side, never both.
- Tenants (`for_alias`): an alias owned by a tenant trains on that tenant's feedback only; a
  shared alias on the feedback of tenants that own no alias, so a tenant's data never
  reaches an adapter another tenant's users get.
Interactions of keys that opted out of prompt logging carry no text and never appear here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.feedback import purge_before, purge_user
from adapters.schema import Alias, Feedback, Interaction, utcnow


@dataclass
class DataConfig:
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out for eval."})
    max_per_user: int = field(default=200, metadata={"help": "Most examples one end user may contribute."})
    adapter_version: str | None = field(default=None, metadata={"help": "Only answers of this version."})
    tenant: str | None = field(default=None, metadata={"help": "Only this tenant's interactions."})
    exclude_tenants: tuple[str, ...] = ()  # never these tenants' interactions

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
    adapter_version: str | None
    regenerates: str | None
    score: int  # sum of ratings


def prompt_key(prompt: Any) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_heldout(key: str, fraction: float) -> bool:
    return int(key[:8], 16) / 0xFFFFFFFF < fraction


def rated_answers(session: Session, cfg: DataConfig) -> list[Answer]:
    scores: Counter[str] = Counter()
    for interaction_id, rating in session.execute(select(Feedback.interaction_id, Feedback.rating)):
        scores[interaction_id] += rating
    query = select(Interaction).where(Interaction.id.in_(list(scores)), Interaction.response.is_not(None),
                                      Interaction.prompt.is_not(None), Interaction.status == 200)
    if cfg.adapter_version is not None:
        query = query.where(Interaction.adapter_version == cfg.adapter_version)
    if cfg.tenant is not None:
        query = query.where(Interaction.tenant == cfg.tenant)
    if cfg.exclude_tenants:
        query = query.where(Interaction.tenant.not_in(cfg.exclude_tenants))
    return [Answer(i.id, i.prompt, prompt_key(i.prompt), i.response or "", i.kind, i.end_user,
                   i.adapter_version, i.regenerates, scores[i.id])
            for i in session.scalars(query.order_by(Interaction.created_at))]


def for_alias(session: Session, alias: str, cfg: DataConfig) -> DataConfig:
    """`cfg` restricted to the feedback that may train `alias` (see the module's rules)."""
    owners = dict(session.execute(select(Alias.name, Alias.tenant)).all())
    if owners.get(alias) is not None:
        return replace(cfg, tenant=owners[alias])
    return replace(cfg, exclude_tenants=tuple(sorted({t for t in owners.values() if t is not None})))


def _turn(answer: Answer, text: str) -> Any:
    return [{"role": "assistant", "content": text}] if answer.kind == "chat" else text


def _capped(examples: Iterator[tuple[str, str, dict]], cfg: DataConfig) -> Iterator[tuple[str, dict]]:
    """(split, example) for (prompt key, user, example), at most cfg.max_per_user per user."""
    per_user: Counter[str] = Counter()
    for key, user, example in examples:
        if per_user[user] >= cfg.max_per_user:
            continue
        per_user[user] += 1
        yield ("heldout" if is_heldout(key, cfg.heldout_fraction) else "train"), example


def dpo_pairs(answers: list[Answer]) -> Iterator[tuple[str, str, dict]]:
    by_id = {a.id: a for a in answers}
    seen: set[tuple[str, str, str]] = set()

    def pair(chosen: Answer, rejected: Answer, prompt: Any, key: str, source: str):  # type: ignore[no-untyped-def]
        ident = (key, chosen.text, rejected.text)
        if chosen.text == rejected.text or ident in seen:
            return None
        seen.add(ident)
        return key, chosen.end_user, {"prompt": prompt, "chosen": _turn(chosen, chosen.text),
                                      "rejected": _turn(rejected, rejected.text), "source": source}

    for answer in answers:  # regeneration links first: they win the per-user cap
        original = by_id.get(answer.regenerates or "")
        if original is not None and answer.score > 0 > original.score and \
                (p := pair(answer, original, original.prompt, original.prompt_key, "regeneration")):
            yield p
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups[answer.prompt_key].append(answer)
    for key, group in groups.items():
        liked = [a for a in group if a.score > 0]
        disliked = [a for a in group if a.score < 0]
        for chosen in liked:
            for rejected in disliked:
                if (p := pair(chosen, rejected, chosen.prompt, key, "same_prompt")):
                    yield p


def kto_examples(answers: list[Answer]) -> Iterator[tuple[str, str, dict]]:
    for a in answers:
        if a.score != 0:
            yield a.prompt_key, a.end_user, {"prompt": a.prompt, "completion": _turn(a, a.text), "label": a.score > 0}


def sft_examples(answers: list[Answer]) -> Iterator[tuple[str, str, dict]]:
    for a in answers:
        if a.score > 0 and a.kind == "chat":
            yield a.prompt_key, a.end_user, {"messages": [*a.prompt, {"role": "assistant", "content": a.text}]}


BUILDERS = {"dpo": dpo_pairs, "kto": kto_examples, "sft": sft_examples}


def build(session: Session, fmt: str, cfg: DataConfig) -> dict[str, list[dict]]:
    """{"train": [...], "heldout": [...]} in format `fmt` (dpo, kto or sft)."""
    return _split(rated_answers(session, cfg), fmt, cfg)


def _split(answers: list[Answer], fmt: str, cfg: DataConfig) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for split, example in _capped(BUILDERS[fmt](answers), cfg):
        out[split].append(example)
    return out


def report(session: Session, cfg: DataConfig) -> dict:
    answers = rated_answers(session, cfg)
    pairs = _split(answers, "dpo", cfg)
    per_prompt = Counter(prompt_key(p["prompt"]) for split in pairs.values() for p in split)
    versions: dict[str, dict[str, int]] = defaultdict(lambda: {"interactions": 0, "rated": 0, "up": 0, "down": 0})
    for version, in session.execute(select(Interaction.adapter_version)):
        versions[version or "base"]["interactions"] += 1
    for a in answers:
        v = versions[a.adapter_version or "base"]
        v["rated"] += 1
        v["up" if a.score > 0 else "down" if a.score < 0 else "rated"] += a.score != 0
    users = Counter(a.end_user for a in answers)
    return {
        "rated_answers": len(answers),
        "liked": sum(a.score > 0 for a in answers), "disliked": sum(a.score < 0 for a in answers),
        "prompts": len({a.prompt_key for a in answers}),
        "dpo_pairs": {split: len(v) for split, v in pairs.items()},
        "pair_sources": Counter(p["source"] for split in pairs.values() for p in split),
        "pairs_per_prompt": {"max": max(per_prompt.values(), default=0),
                             "mean": round(sum(per_prompt.values()) / len(per_prompt), 2) if per_prompt else 0},
        "users": len(users), "users_over_cap": sum(n > cfg.max_per_user for n in users.values()),
        "per_adapter_version": dict(versions),
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
    args = parser.parse_args(argv)

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
    cfg = DataConfig(args.heldout_fraction, args.max_per_user, args.adapter_version)
    with sessions() as session:
        if args.command == "report":
            print(json.dumps(report(session, cfg), indent=2))
            return
        examples = build(session, args.format, cfg)[args.split]
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - stdout is not ours to close
    for example in examples:
        out.write(json.dumps(example) + "\n")
    if args.out:
        out.close()
        print(f"wrote {len(examples)} {args.format} examples ({args.split}) to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

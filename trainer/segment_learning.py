"""Learned segments: finds the groups of an alias's users whose thumbs disagree with the rest,
gives each its own segment's alias (adapters/segments.py), and puts each user in theirs.

Each scheduler tick, for the trained alias (`learn`):
- reads the newest `max_votes` rated answers its users gave a thumb to themselves (the
  answer's own end user's rating: a client rating other users' answers cannot move them),
  of the tenant whose feedback trains it, at most `max_per_user` from one user;
- without learned segments yet: looks for a split of its users that predicts their unseen
  thumbs better than one taste for all (trainer/taste_clusters.py `find_split`). Found, each
  group gets a segment's alias `<alias>@taste-<n>` (while slots are free: LORALOOP_MAX_SEGMENTS)
  and its users are assigned to it. Each new alias serves the alias's champion until a
  candidate trained on its users' feedback wins an A/B test among them, like any segment.
- with learned segments: places users who have rated at least `min_user_votes` answers
  since (new users start in no segment: the alias's champion) in the segment whose taste
  (its members' when the split was found, stored with it) is nearest, and moves an
  assigned user only when another is nearer by `margin` and their own votes say so surely
  (`move_t`): once each segment is served its own style, what a member thumbs says little
  about style, and noise must not move them.

Users who declared a segment (X-Loraloop-Segment) are the app's to place: their rows are not
read. Memory and time are bounded by `max_votes` x the common features (a few hundred at most).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapters import segment_assignments, segments
from adapters.errors import InvalidAdapter
from adapters.schema import DEFAULT_TENANT, Alias, Feedback, Interaction
from adapters.segment_assignments import Placement
from adapters.settings import MAX_SEGMENTS
from trainer import taste_clusters
from trainer.taste_clusters import Votes

log = logging.getLogger(__name__)
PREFIX = segments.LEARNED_PREFIX  # learned segments' names: taste-1, taste-2, ...
TEXT_CHARS = 3200  # of an answer read: taste_clusters.features looks at its first 200 words


@dataclass(frozen=True)
class LearnConfig:
    max_votes: int = 20_000  # newest rated answers read per pass
    max_per_user: int = 100  # of them from one user: one heavy rater is one user
    scan_factor: int = 10  # rows looked at, at most, per vote kept
    min_user_votes: int = 6  # a user's own thumbs before they are placed (or counted in a split)
    min_users: int = 3  # in every group of a split
    max_k: int = 4  # groups tried
    alpha: float = 0.01  # the split's test level (trainer/taste_clusters.py)
    margin: float = 0.2  # how much nearer another segment must be to move an assigned user
    move_t: float = 3.0  # and how surely their own votes say so (taste_clusters.assign)
    place_margin: float = 0.2  # how much nearer the nearest segment must be to place a new user
    unplace_votes: int = 10  # a member's thumbs on their segment's answers before `unplace_z` is asked
    unplace_z: float = 3.0  # how far under their segment's liked share a member's must be to leave it
    max_segments: int = MAX_SEGMENTS


def read_votes(session: Session, parent: str, tenant: str, learned: list[str], cfg: LearnConfig) -> Votes | None:
    """The alias's (and its learned segments') newest self-rated answers as `Votes`, at most
    `max_per_user` of each user's, each user's cut in two halves by a hash of the answer's id.
    Read newest first and streamed, so one user rating thousands of answers (a bot, an eval
    harness) fills their own share and the others' votes are still read; at most
    `scan_factor` x `max_votes` rows are looked at."""
    i, f = Interaction, Feedback
    query = (select(i.id, i.end_user, func.substr(i.response, 1, TEXT_CHARS).label("text"), i.adapter_version,
                    i.requested_model, f.rating)
             .join(f, (f.interaction_id == i.id) & (f.end_user == i.end_user) & (f.choice == 0))
             .where(i.tenant == tenant, i.requested_model.in_([parent, *learned]), i.status == 200,
                    i.response.is_not(None), i.end_user != "", f.rating != 0,
                    (i.segment == "") | i.requested_model.in_(learned))
             .order_by(i.created_at.desc(), i.id).limit(cfg.max_votes * cfg.scan_factor)
             .execution_options(yield_per=1000))
    per_user: Counter[str] = Counter()
    kept = []
    for row in session.execute(query):
        if per_user[row.end_user] < cfg.max_per_user:
            per_user[row.end_user] += 1
            kept.append(row)
            if len(kept) >= cfg.max_votes:
                break
    if not kept:
        return None
    x, columns = taste_clusters.features([r.text or "" for r in kept])
    return Votes([r.end_user for r in kept], x, np.array([1.0 if r.rating > 0 else -1.0 for r in kept]),
                 np.array([hashlib.blake2b(r.id.encode(), digest_size=1).digest()[0] % 2 == 1 for r in kept]),
                 [r.adapter_version or "base" for r in kept], columns, [r.requested_model for r in kept])


def learn(sessions: sessionmaker, parent: str, cfg: LearnConfig = LearnConfig(), actor: str = "scheduler") -> dict:
    """One pass for alias `parent` (see the module's doc). Returns what it did, for the log."""
    with sessions() as session:
        row = session.get(Alias, parent)
        if row is None or row.parent is not None:
            return {"alias": parent, "skipped": "not a top-level alias"}
        tenant = row.tenant or DEFAULT_TENANT
        every = list(session.scalars(select(Alias).where(Alias.parent == parent)))
        mine = [a for a in every if a.deleted_at is None]
        learned = sorted(a.segment or "" for a in mine if a.learned)
        tastes = {a.segment or "": a.taste or {} for a in mine if a.learned}
        taken = {a.segment for a in every}  # a deleted segment's name is not reused
        votes = read_votes(session, parent, tenant, [segments.segment_alias(parent, s) for s in learned], cfg)
        assigned = segment_assignments.current(session, parent, tenant, set(votes.users) if votes else set())
    if votes is None:
        return {"alias": parent, "skipped": "no rated answers"}
    if learned:
        return _place(sessions, parent, tenant, tastes, assigned, votes, cfg, actor)
    split = taste_clusters.find_split(votes, min_user_votes=cfg.min_user_votes, max_k=cfg.max_k,
                                      min_users=cfg.min_users, alpha=cfg.alpha)
    outcome = {"alias": parent, "users": len(set(votes.users)), "votes": len(votes.users)}
    if split is None:
        return {**outcome, "split": None}
    free = cfg.max_segments - len(mine)
    if free < split.k:
        return {**outcome, "split": split.k, "skipped": f"{free} segment slots free, {split.k} groups found"}
    names = [name for name in (f"{PREFIX}{n}" for n in range(1, len(taken) + split.k + 1)) if name not in taken]
    names = names[:split.k]
    numbers = {"groups": split.k, "z": round(split.z, 2), "gain": round(split.gain, 4),
               "heldout_users": split.heldout_users, "heldout_votes": split.heldout_votes}
    centres = taste_clusters.group_centres(votes, split.clusters, cfg.min_user_votes)
    try:
        with sessions.begin() as session:
            for g, name in enumerate(names):
                row = segments.create(session, parent, name, actor=actor, learned=True, max_segments=cfg.max_segments,
                                      reason=f"learned: {split.k} groups of users whose thumbs disagree",
                                      numbers=numbers)
                row.taste = taste_clusters.centre_weights(votes, centres[g])
            placed = _placements(votes, centres, names, {}, cfg)
            added, _ = segment_assignments.place(session, parent, tenant, placed, actor=actor,
                                                 reason="a new split", numbers=numbers)
    except InvalidAdapter as exc:  # an operator took the slots meanwhile
        return {**outcome, "split": split.k, "skipped": str(exc)}
    return {**outcome, "split": split.k, "created": names, "assigned": added, **numbers}


def _placements(votes: Votes, centres: np.ndarray, labels: list[str], current: dict[str, str], cfg: LearnConfig
                ) -> dict[str, Placement]:
    placed = taste_clusters.assign(votes, centres, {u: labels.index(s) for u, s in current.items() if s in labels},
                                   min_votes=cfg.min_user_votes, margin=cfg.margin, move_t=cfg.move_t,
                                   place_margin=cfg.place_margin)
    counts = Counter(votes.users)
    return {u: Placement(labels[g], counts[u], similarity) for u, (g, similarity) in placed.items()}


def _place(sessions: sessionmaker, parent: str, tenant: str, tastes: dict[str, dict], assigned: dict[str, str],
           votes: Votes, cfg: LearnConfig, actor: str) -> dict:
    """Places the users with enough thumbs among the existing learned segments (against the
    tastes stored when the split was found), sticky."""
    labels = sorted(tastes)
    if len(labels) < 2:
        return {"alias": parent, "skipped": "fewer than two learned segments"}
    centres = taste_clusters.centres_from(votes, [tastes[label] for label in labels])
    leaving = poorly_served(votes, assigned, {segments.segment_alias(parent, label): label for label in labels}, cfg)
    placed = _placements(votes, centres, labels, {u: s for u, s in assigned.items() if u not in leaving}, cfg)
    placed = {u: p for u, p in placed.items() if u not in leaving}
    with sessions.begin() as session:
        added, moved = segment_assignments.place(session, parent, tenant, placed, actor=actor,
                                                 reason="users' thumbs since the last pass")
        removed = segment_assignments.unplace(session, parent, tenant, leaving, actor=actor,
                                              reason=f"liked their segment's answers far less than its other users "
                                                     f"(z <= -{cfg.unplace_z}): back on the alias's champion")
    return {"alias": parent, "placed": len(placed), "added": added, "moved": moved, "unplaced": removed}


def poorly_served(votes: Votes, assigned: dict[str, str], segment_of_alias: dict[str, str], cfg: LearnConfig
                  ) -> set[str]:
    """Members who like what their segment serves far less than its other members do: placed
    by mistake (a split found on few thumbs misplaces some), they get the other taste's
    adapter. Their thumbs there say little about style (all they see is the one style), so
    they could never move; they leave the segment (the alias's champion, mixed styles, again)
    and are placed anew once their thumbs say where. A segment whose adapter serves everyone
    badly moves nobody: each member is compared with the others."""
    assert votes.alias is not None
    ups: dict[tuple[str, str], list[int]] = {}  # (segment, user) -> [liked, rated] on the segment's answers
    for user, alias, sign in zip(votes.users, votes.alias, votes.sign, strict=True):
        segment = segment_of_alias.get(alias)
        if segment is not None and assigned.get(user) == segment:
            tally = ups.setdefault((segment, user), [0, 0])
            tally[0] += sign > 0
            tally[1] += 1
    totals: dict[str, list[int]] = {}
    for (segment, _), (liked, rated) in ups.items():
        total = totals.setdefault(segment, [0, 0])
        total[0] += liked
        total[1] += rated
    leaving = set()
    for (segment, user), (liked, rated) in ups.items():
        if rated < cfg.unplace_votes:
            continue
        pool_liked, pool_rated = totals[segment][0] - liked, totals[segment][1] - rated  # the other members
        if pool_rated < 5 * cfg.unplace_votes:
            continue
        share = min(max(pool_liked / pool_rated, 0.01), 0.99)
        z = (liked - rated * share) / math.sqrt(rated * share * (1 - share))
        if z <= -cfg.unplace_z:
            leaving.add(user)
    return leaving

"""Do an alias's users want different things? Groups of users whose thumbs agree, found from
their rated answers and kept only if they predict unseen thumbs better than one taste for all.

Each rated answer is a bag of its words and word pairs (`features`: hashed, so any vocabulary
fits a fixed width; punctuation kept, as "!" and "?" are style). A user's taste is the mean
of their answers' vectors, signed by the thumb (liked +, disliked -), each centred on the
average answer of the adapter version that served it: a user thumbs what they were shown,
and once groups are served different styles, centring on all answers would read "disliked a
broken formal answer" as "dislikes formal". What every user shares (no one likes a broken
answer) is the mean taste; what sets a user apart is their taste less its part along that
mean, and those residuals are clustered (spherical k-means on their main directions,
k = 2..max_k, seeded restarts).

A split must earn its keep on thumbs it never saw (`find_split`): each user's votes are cut in
two by a hash of the answer's id; tastes and groups come from the first half, and each vote
of the second half is scored against the one shared taste and against its user's group's
taste (the cosine of the signed, centred answer with the taste). A user's score is the mean
over their held-out votes; the split is kept only if the groups' scores beat the shared
taste's, user by user, by a one-sided sign-flip (randomisation) test at level `alpha`,
Bonferroni-corrected for the k tried, with at least `min_users` users in every group. The user
is the unit, not the vote: one user's votes are not independent. More groups are kept only
when they beat fewer the same way. Users who all want one thing never pass: a group's taste
is then the shared taste estimated from fewer users, no better at predicting them.

Pure numpy on arrays: trainer/segment_learning.py reads the votes and stores the result.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

DIM = 1 << 16  # hashed feature width: collisions are rare among the few hundred words that carry a style
MAX_WORDS = 200  # of an answer: enough for a style, bounded whatever the answer's length
MIN_SHARE = 0.1  # of the answers a feature must appear in to count (`features`)
_TOKEN = re.compile(r"[a-z0-9']+|[!?.,;:]")


def features(texts: list[str], dim: int = DIM, min_share: float = MIN_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """One unit row per text: its words, adjacent word pairs and length, hashed (crc32: the
    same in every process, unlike Python's salted hash), keeping only the features found in
    at least `min_share` of the texts. A taste a group shares shows in words many answers
    carry (an opener, a sign-off, "!"); a topic's or a name's words come with a few votes
    of each user and only add noise to their taste. It also keeps the matrix narrow: an
    answer has at most a few hundred grams, so at most that many over `min_share` columns
    pass, whatever the number of texts. Returns (rows, the hashed feature of each column)."""
    hashed = []
    for text in texts:
        words = _TOKEN.findall(text[:MAX_WORDS * 16].lower())[:MAX_WORDS]
        # length is a taste too
        shape = [f"#words:{min(len(words) // 8, 12)}", f"#sentences:{min(text.count('. ') + 1, 8)}"]
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] + shape
        hashed.append(np.unique(np.array([zlib.crc32(g.encode()) % dim for g in grams], dtype=np.int64)))
    counts = np.bincount(np.concatenate(hashed), minlength=dim) if hashed else np.zeros(dim, dtype=np.int64)
    kept = np.flatnonzero(counts >= max(min_share * len(texts), 1))
    column = np.full(dim, -1)
    column[kept] = np.arange(len(kept))
    rows = np.zeros((len(texts), max(len(kept), 1)), dtype=np.float32)
    for i, cells in enumerate(hashed):
        rows[i, column[cells][column[cells] >= 0]] = 1.0
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9), kept


@dataclass(frozen=True)
class Votes:
    """Rated answers: one row each."""

    users: list[str]
    x: np.ndarray  # features(answer texts)
    sign: np.ndarray  # +1 liked, -1 disliked
    heldout: np.ndarray  # bool: in the half `find_split` predicts
    served: list[str] | None = None  # the adapter version that answered (None: one for all)
    columns: np.ndarray | None = None  # the hashed feature of each column of x (`features`)
    alias: list[str] | None = None  # the alias (or segment's alias) that served each answer


@dataclass(frozen=True)
class Split:
    k: int
    clusters: dict[str, int]  # user -> cluster, for the users the split was fitted on
    z: float  # how much better its groups' tastes agree with the held-out thumbs than the last (t over users)
    p: float  # the sign-flip test's p-value for that
    gain: float  # mean per user of that agreement's gain over one shared taste (cosine units)
    heldout_users: int
    heldout_votes: int


MIN_EXPOSURE = 20  # votes on one version's answers before they are centred on its own mean


def centred(votes: Votes, mask: np.ndarray) -> np.ndarray:
    """Each answer less the mean answer of the version that served it (over the votes in
    `mask`; versions with fewer than MIN_EXPOSURE there: less the mean of all of them)."""
    if not mask.any():
        return votes.x
    out = votes.x - votes.x[mask].mean(axis=0)
    if votes.served is not None:
        served = np.array(votes.served)
        for version in set(served[mask]):
            group = served == version
            if (group & mask).sum() >= MIN_EXPOSURE:
                out[group] = votes.x[group] - votes.x[group & mask].mean(axis=0)
    return out


def tastes(votes: Votes, mask: np.ndarray, min_votes: int) -> dict[str, np.ndarray]:
    """user -> mean signed, centred answer vector over the votes in `mask`, for users with at
    least `min_votes` of them."""
    answers = centred(votes, mask)
    by_user: dict[str, list[int]] = {}
    for i in np.flatnonzero(mask):
        by_user.setdefault(votes.users[i], []).append(int(i))
    return {user: (votes.sign[rows, None] * answers[rows]).mean(axis=0)
            for user, rows in by_user.items() if len(rows) >= min_votes}


def residuals(taste: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(users, unit residual tastes, the shared taste): each user's taste without its part
    along the shared (mean) taste. Users differ in how much of the shared taste their votes
    show (one rated many broken answers, another few) without wanting anything different."""
    users = sorted(taste)
    matrix = np.stack([taste[u] for u in users])
    shared = matrix.mean(axis=0)
    along = _unit(shared)
    rest = matrix - np.outer(matrix @ along, along)
    return users, rest / np.maximum(np.linalg.norm(rest, axis=1, keepdims=True), 1e-9), shared


def principal(points: np.ndarray, r: int) -> np.ndarray:
    """`points` projected on their top `r` principal directions, as unit rows: a few users' votes
    spread over thousands of words are mostly noise, and the directions users differ along
    most consistently (their tastes) are the first."""
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    projected = points @ vt[:r].T
    return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-9)


def kmeans(points: np.ndarray, k: int, seed: int, restarts: int = 8, iterations: int = 50) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ starts: the best of `restarts` labelings."""
    rng = np.random.default_rng(seed)
    best, best_score = np.zeros(len(points), dtype=int), -math.inf
    for _ in range(restarts):
        centres = [points[rng.integers(len(points))]]
        for _ in range(1, k):
            distance = np.maximum(1 - np.max(points @ np.stack(centres).T, axis=1), 0)
            weights = distance / distance.sum() if distance.sum() > 0 else None
            centres.append(points[rng.choice(len(points), p=weights)])
        c = np.stack(centres)
        for _ in range(iterations):
            labels = np.argmax(points @ c.T, axis=1)
            moved = np.stack([points[labels == j].sum(axis=0) if (labels == j).any() else c[j] for j in range(k)])
            moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-9)
            if np.allclose(moved, c):
                break
            c = moved
        score = float(np.sum(np.max(points @ c.T, axis=1)))
        if score > best_score:
            best, best_score = labels, score
    return best


def find_split(votes: Votes, *, min_user_votes: int = 6, max_k: int = 4, min_users: int = 3,
               alpha: float = 0.01, seed: int = 0) -> Split | None:
    """The grouping of users that predicts their held-out thumbs best, if it beats one shared
    taste significantly (see the module's doc); None when none does. k grows only while each
    step beats the last significantly, so two tastes make two groups, not four. Only users
    with `min_user_votes` votes (the number `assign` places users by) take part."""
    total = Counter(votes.users)
    fit_mask = ~votes.heldout & np.array([total[u] >= min_user_votes for u in votes.users], dtype=bool)
    fit = tastes(votes, fit_mask, 1)
    if len(fit) < 2 * min_users:
        return None
    users, points, shared = residuals(fit)
    index = {u: i for i, u in enumerate(users)}
    answers = centred(votes, fit_mask)
    rows = np.array([i for i in np.flatnonzero(votes.heldout) if votes.users[i] in index], dtype=int)
    if len(rows) == 0:
        return None
    signed = votes.sign[rows, None] * answers[rows]  # each held-out vote, as agreement with a taste
    signed /= np.maximum(np.linalg.norm(signed, axis=1, keepdims=True), 1e-9)
    owner = np.array([index[votes.users[i]] for i in rows])
    counts = np.bincount(owner, minlength=len(users))
    one = _unit(shared)
    tried = range(2, min(max_k, len(users) // min_users) + 1)
    level = alpha / max(len(tried), 1)  # Bonferroni: each k tried is one more chance to fit noise
    matrix = np.stack([fit[u] for u in users])
    rng = np.random.default_rng(seed)

    def per_user(taste_of_vote: np.ndarray) -> np.ndarray:
        """Each user's mean agreement of their held-out thumbs with the taste predicting them."""
        agreement = np.einsum("ij,ij->i", signed, taste_of_vote)
        return np.bincount(owner, weights=agreement, minlength=len(users))[counts > 0] / counts[counts > 0]

    shared_agreement = per_user(np.broadcast_to(one, signed.shape))
    best: Split | None = None
    best_agreement = shared_agreement
    for k in tried:
        labels = kmeans(principal(points, k), k, seed)
        if min(np.bincount(labels, minlength=k)) < min_users:
            continue
        groups = np.stack([_unit(matrix[labels == j].mean(axis=0)) for j in range(k)])
        agreement = per_user(groups[labels[owner]])
        p = sign_flip_p(agreement - best_agreement, rng)
        if p <= level:
            best = Split(k, {u: int(labels[i]) for i, u in enumerate(users)},
                         _t(agreement - best_agreement), p, float((agreement - shared_agreement).mean()),
                         len(agreement), len(rows))
            best_agreement = agreement
    return best


def sign_flip_p(differences: np.ndarray, rng: np.random.Generator, flips: int = 4000) -> float:
    """One-sided p-value of mean(differences) > 0 by random sign flips: exact in the limit,
    with no normality assumed (a few users' differences are far from normal)."""
    if len(differences) < 3 or not np.any(differences):
        return 1.0
    observed = differences.mean()
    beaten = 0
    for start in range(0, flips, 500):  # chunks: flips x users floats at most 500 rows at a time
        signs = rng.choice((-1.0, 1.0), size=(min(500, flips - start), len(differences)))
        beaten += int(np.sum((signs @ differences) / len(differences) >= observed))
    return (beaten + 1) / (flips + 1)


def _t(differences: np.ndarray) -> float:
    if len(differences) < 2 or differences.std(ddof=1) == 0:
        return 0.0
    return float(differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences))))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def group_centres(votes: Votes, members: dict[str, int], min_votes: int) -> np.ndarray:
    """One unit row per group 0..k-1: the direction of its members' residual tastes."""
    taste = tastes(votes, np.ones(len(votes.users), dtype=bool), min_votes)
    users, points, _ = residuals(taste)
    index = {u: i for i, u in enumerate(users)}
    centres = []
    for g in range(max(members.values()) + 1):
        rows = [index[u] for u, m in members.items() if m == g and u in index]
        centres.append(_unit(points[rows].sum(axis=0)) if rows else np.zeros(points.shape[1]))
    return np.stack(centres)


def centre_weights(votes: Votes, centre: np.ndarray, top: int = 300) -> dict[str, float]:
    """A group's centre as {hashed feature: weight}, its `top` largest: what is stored, so
    later passes (over other answers, other columns) place users against the same taste."""
    assert votes.columns is not None
    keep = np.argsort(-np.abs(centre))[:top]
    return {str(int(votes.columns[j])): round(float(centre[j]), 5) for j in keep if centre[j] != 0}


def centres_from(votes: Votes, weights: list[dict[str, float]]) -> np.ndarray:
    """Stored centres (`centre_weights`) as unit rows over `votes`' columns."""
    assert votes.columns is not None
    return np.stack([_unit(np.array([w.get(str(int(c)), 0.0) for c in votes.columns])) for w in weights])


def assign(votes: Votes, centres: np.ndarray, current: dict[str, int], *, min_votes: int, margin: float,
           move_t: float = 3.0, place_margin: float = 0.0) -> dict[str, tuple[int, float]]:
    """user -> (group, cosine to its centre) for every user with `min_votes` votes: the group
    whose centre (`group_centres`, or stored ones: `centres_from`) is nearest their residual
    taste. Sticky: a user keeps their `current` group unless another is nearer by `margin`
    AND their own votes agree with it better than with theirs, vote by vote, by a t of
    `move_t` or more. Once each group is served its own style, a member's votes say little
    about style (everything they see is it) and their taste is mostly noise: noise must not
    move them. A user in no group yet is placed only when the nearest centre is nearer than
    the next by `place_margin` (unsure: they keep the alias's champion and vote on)."""
    everything = np.ones(len(votes.users), dtype=bool)
    taste = tastes(votes, everything, min_votes)
    if not taste:
        return {}
    users, points, _ = residuals(taste)
    similarity = points @ centres.T
    signed = votes.sign[:, None] * centred(votes, everything)
    by_user: dict[str, list[int]] = {}
    for i, user in enumerate(votes.users):
        by_user.setdefault(user, []).append(i)
    placed = {}
    for i, user in enumerate(users):
        best = int(np.argmax(similarity[i]))
        here = current.get(user)
        if here is None and len(centres) > 1 and \
                similarity[i, best] - np.partition(similarity[i], -2)[-2] < place_margin:
            continue
        if here is not None and best != here:
            evidence = signed[by_user[user]] @ (centres[best] - centres[here])
            if similarity[i, best] - similarity[i, here] < margin or _t(evidence) < move_t:
                best = here
        placed[user] = (best, float(similarity[i, best]))
    return placed

"""Do an alias's users want different things? Groups of users whose thumbs agree, found from
their rated answers and kept only if they predict unseen thumbs better than one taste for all.

Each rated answer is a bag of its words and word pairs (`features`: hashed, so any vocabulary
fits a fixed width; punctuation kept, as "!" and "?" are style). A user's taste is the mean
of their answers' vectors, signed by the thumb (liked +, disliked -), centred on the average
answer: the direction of what they like. What every user shares (no one likes a broken
answer) is the mean taste; what sets a user apart is their taste less that mean, and those
residuals are clustered (spherical k-means, k = 2..max_k, seeded restarts).

A split must earn its keep on thumbs it never saw (`find_split`): each user's votes are cut in
two by a hash of the answer's id; tastes and clusters come from the first half, and every
vote of the second half is predicted twice, by the sign of its answer against the one shared
taste and against its user's cluster's taste. The split is kept only if the clusters' correct
predictions beat the shared taste's by McNemar's test on the discordant votes (one-sided,
level `alpha`, Bonferroni-corrected for the k tried), with at least `min_users` users in every cluster. Users
who all want one thing never pass it: a cluster's taste is then the shared taste estimated
from fewer users, no better at predicting them.

Pure numpy on arrays: trainer/segment_learning.py reads the votes and stores the result.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

DIM = 1 << 16  # hashed feature width: collisions are rare among the few hundred words that carry a style
MAX_WORDS = 200  # of an answer: enough for a style, bounded whatever the answer's length
MIN_SHARE = 0.1  # of the answers a feature must appear in to count (`features`)
_TOKEN = re.compile(r"[a-z0-9']+|[!?.,;:]")


def features(texts: list[str], dim: int = DIM, min_share: float = MIN_SHARE) -> np.ndarray:
    """One unit row per text: its words, adjacent word pairs and length, hashed (crc32: the
    same in every process, unlike Python's salted hash), keeping only the features found in
    at least `min_share` of the texts. A taste a group shares shows in words many answers
    carry (an opener, a sign-off, "!"); a topic's or a name's words come with a few votes
    of each user and only add noise to their taste. It also keeps the matrix narrow: an
    answer has at most a few hundred grams, so at most that many over `min_share` columns
    pass, whatever the number of texts."""
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
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@dataclass(frozen=True)
class Votes:
    """Rated answers: one row each."""

    users: list[str]
    x: np.ndarray  # features(answer texts)
    sign: np.ndarray  # +1 liked, -1 disliked
    heldout: np.ndarray  # bool: in the half `find_split` predicts


@dataclass(frozen=True)
class Split:
    k: int
    clusters: dict[str, int]  # user -> cluster, for the users the split was fitted on
    z: float  # how much better its groups' tastes agree with the held-out thumbs than the last (t over users)
    gain: float  # mean per user of that agreement's gain (cosine units)
    heldout_users: int
    heldout_votes: int


def tastes(votes: Votes, mask: np.ndarray, min_votes: int) -> dict[str, np.ndarray]:
    """user -> mean signed, centred answer vector over the votes in `mask`, for users with at
    least `min_votes` of them."""
    centred = votes.x - votes.x[mask].mean(axis=0) if mask.any() else votes.x
    by_user: dict[str, list[int]] = {}
    for i in np.flatnonzero(mask):
        by_user.setdefault(votes.users[i], []).append(int(i))
    return {user: (votes.sign[rows, None] * centred[rows]).mean(axis=0)
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
    """The clustering of users that predicts their held-out thumbs best, if it beats one
    shared taste significantly (see the module's doc); None when none does. k grows only
    while each step beats the last significantly, so two tastes make two groups, not four."""
    fit = tastes(votes, ~votes.heldout, max(min_user_votes // 2, 1))
    if len(fit) < 2 * min_users:
        return None
    users, points, shared = residuals(fit)
    centred = votes.x - votes.x[~votes.heldout].mean(axis=0)
    rows = [i for i in np.flatnonzero(votes.heldout) if votes.users[i] in fit]
    if not rows:
        return None
    signed = votes.sign[rows, None] * centred[rows]  # each held-out vote, as agreement with a taste
    owner = np.array([users.index(votes.users[i]) for i in rows])
    counts = np.bincount(owner, minlength=len(users))
    one = _unit(shared)
    tried = range(2, min(max_k, len(users) // min_users) + 1)
    # one-sided, Bonferroni-corrected: each k tried is one more chance of a split that fits noise
    needed = NormalDist().inv_cdf(1 - alpha / max(len(tried), 1))
    matrix = np.stack([fit[u] for u in users])

    def per_user(taste_of_vote: np.ndarray) -> np.ndarray:
        """Each user's mean agreement of their held-out thumbs with the taste predicting them."""
        agreement = np.einsum("ij,ij->i", signed, taste_of_vote)
        return np.bincount(owner, weights=agreement, minlength=len(users))[counts > 0] / counts[counts > 0]

    best: Split | None = None
    best_agreement = per_user(np.broadcast_to(one, signed.shape))  # one shared taste
    for k in tried:
        labels = kmeans(principal(points, k), k, seed)
        if min(np.bincount(labels, minlength=k)) < min_users:
            continue
        cluster = np.stack([_unit(matrix[labels == j].mean(axis=0)) for j in range(k)])
        agreement = per_user(cluster[labels[owner]])
        # More groups only when they beat the best so far (one taste, then fewer groups)
        # significantly: the user is the unit (one user's votes are not independent), a
        # paired t over users.
        z = _paired_z(agreement - best_agreement)
        if z >= needed:
            gain = float((agreement - per_user(np.broadcast_to(one, signed.shape))).mean())
            best = Split(k, {u: int(labels[i]) for i, u in enumerate(users)}, z, gain, len(agreement), len(rows))
            best_agreement = agreement
    return best


def _paired_z(differences: np.ndarray) -> float:
    if len(differences) < 3 or differences.std(ddof=1) == 0:
        return 0.0
    return float(differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences))))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def assign(taste: dict[str, np.ndarray], members: dict[str, int], current: dict[str, int],
           margin: float) -> dict[str, tuple[int, float]]:
    """user -> (segment, cosine to it) for every user in `taste`: the segment whose members'
    residual taste is nearest. A user keeps their `current` segment unless another is nearer
    by `margin` (sticky: a few noisy thumbs do not bounce anyone between adapters)."""
    users, points, _ = residuals(taste)
    groups = sorted(set(members.values()))
    index = {u: i for i, u in enumerate(users)}
    centres = []
    for g in groups:
        rows = [index[u] for u, m in members.items() if m == g and u in index]
        centre = points[rows].sum(axis=0) if rows else np.zeros(points.shape[1])
        centres.append(centre / max(float(np.linalg.norm(centre)), 1e-9))
    similarity = points @ np.stack(centres).T
    placed = {}
    for i, user in enumerate(users):
        best = int(np.argmax(similarity[i]))
        mine = current.get(user)
        if mine in groups and similarity[i, best] - similarity[i, groups.index(mine)] < margin:
            best = groups.index(mine)
        placed[user] = (groups[best], float(similarity[i, best]))
    return placed

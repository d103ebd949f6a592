"""Recommendation from liked and disliked items: Rocchio preference vector, MMR diversification,
and an explanation ("because you liked X") for each result.

The three building blocks are pure numpy on L2-normalised vectors, so they can be checked by hand;
`recommend` wires them to a vector store (`backends.VectorStore`), by ids only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def normalise(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), eps)).astype(np.float32)


def preference_vector(liked: np.ndarray, disliked: np.ndarray | None = None, *,
                      liked_weight: float = 1.0, disliked_weight: float = 0.5) -> np.ndarray:
    """Rocchio: move towards the mean liked vector and away from the mean disliked one.

    liked (L, D), disliked (M, D) -> (D,) unit vector. If the two cancel out, the liked mean alone
    is used (a user who likes and dislikes the same thing still liked it).
    """
    if len(liked) == 0:
        raise ValueError("at least one liked item is needed")
    centre = liked_weight * liked.mean(axis=0)  # (D,)
    pref = centre if disliked is None or len(disliked) == 0 else centre - disliked_weight * disliked.mean(axis=0)
    if np.linalg.norm(pref) < 1e-6:
        pref = centre
    return normalise(pref)


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lam: float = 0.7,
        relevance: np.ndarray | None = None) -> list[int]:
    """Maximal Marginal Relevance: greedily pick the candidate maximising
    lam * relevance - (1 - lam) * (highest similarity to anything already picked).

    query (D,), candidates (C, D) -> indices into candidates, in pick order. lam=1 is plain ranking;
    smaller lam trades relevance for variety.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    relevance = candidates @ query if relevance is None else relevance  # (C,)
    redundancy = np.full(len(candidates), -np.inf, dtype=np.float64)  # max similarity to the picked set
    picked: list[int] = []
    for _ in range(min(k, len(candidates))):
        score = relevance if not picked else lam * relevance - (1.0 - lam) * redundancy
        score = np.where(np.isin(np.arange(len(candidates)), picked), -np.inf, score)
        best = int(np.argmax(score))
        picked.append(best)
        redundancy = np.maximum(redundancy, candidates @ candidates[best])
    return picked


def nearest_liked(results: np.ndarray, liked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each result (R, D), the index of the most similar liked item (L, D) and that similarity."""
    sims = results @ liked.T  # (R, L)
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(results)), best]


@dataclass
class Recommendation:
    id: str
    score: float  # similarity to the preference vector
    because: str  # the liked item this result is closest to
    because_score: float


def recommend(store, liked_ids: Sequence[str], disliked_ids: Sequence[str] = (), k: int = 10, *,
              lam: float = 0.7, pool: int = 0, disliked_weight: float = 0.5) -> list[Recommendation]:
    """Items for someone who liked `liked_ids` and disliked `disliked_ids`; seen items are excluded.
    An unknown or deleted id raises `UnknownItem`.

    `pool` candidates (default max(5k, 50)) come from the store by the preference vector; MMR
    with `lam` chooses k of them.
    """
    liked_ids, disliked_ids = list(liked_ids), list(disliked_ids)
    liked = store.vectors(liked_ids)  # (L, D)
    disliked = store.vectors(disliked_ids) if disliked_ids else None
    pref = preference_vector(liked, disliked, disliked_weight=disliked_weight)
    (found,) = store.search(pref[None], pool or max(5 * k, 50), exclude_ids=liked_ids + disliked_ids)
    if not found.ids:
        return []
    candidates = store.vectors(found.ids)  # (C, D)
    picked = mmr(pref, candidates, k, lam, relevance=candidates @ pref)
    because, because_score = nearest_liked(candidates[picked], liked)
    return [Recommendation(found.ids[p], float(found.scores[p]), liked_ids[int(b)], float(s))
            for p, b, s in zip(picked, because, because_score)]

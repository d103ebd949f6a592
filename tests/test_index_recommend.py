"""Rocchio, MMR and explanations on small hand-checkable vectors, then through a real store (by ids)."""

import numpy as np
import pytest

from visembed.index.recommend import mmr, nearest_liked, normalise, preference_vector, recommend
from visembed.index.backends import UnknownItem, create_store

E = np.eye(3, dtype=np.float32)


def test_preference_vector_moves_towards_liked_and_away_from_disliked():
    pref = preference_vector(E[[0, 1]], E[[2]])  # mean(e0, e1) - 0.5 e2 = (0.5, 0.5, -0.5)
    np.testing.assert_allclose(pref, np.array([1, 1, -1]) / np.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(preference_vector(E[[0]]), E[0])


def test_preference_vector_falls_back_to_liked_when_they_cancel():
    pref = preference_vector(E[[0]], E[[0]], disliked_weight=1.0)
    np.testing.assert_allclose(pref, E[0])
    with pytest.raises(ValueError):
        preference_vector(E[:0])


def test_mmr_trades_relevance_for_variety():
    q = E[0]
    a = normalise(np.array([1, 0.10, 0]))  # most relevant
    a_twin = normalise(np.array([1, 0.12, 0]))  # almost as relevant, nearly a copy of a
    b = normalise(np.array([1, 0, 0.5]))  # less relevant, different
    candidates = np.stack([a, a_twin, b])
    assert mmr(q, candidates, 3, lam=1.0) == [0, 1, 2]  # plain ranking
    # lam=0.5: twin scores 0.5*0.993 - 0.5*0.9999 < 0, b scores 0.5*0.894 - 0.5*0.890 > 0
    assert mmr(q, candidates, 3, lam=0.5) == [0, 2, 1]
    assert mmr(q, candidates, 10, lam=0.5) == [0, 2, 1]  # never more than there are
    with pytest.raises(ValueError):
        mmr(q, candidates, 2, lam=1.5)


def test_nearest_liked_names_the_closest_liked_item():
    results = np.stack([normalise(np.array([0.9, 0.1, 0])), normalise(np.array([0, 0.2, 1]))])
    which, sims = nearest_liked(results, E[[0, 2]])
    assert list(which) == [0, 1]
    np.testing.assert_allclose(sims, [results[0, 0], results[1, 2]], rtol=1e-6)


def clustered_index():
    """Three tight clusters of 20 items around the axes e0, e1, e2 (ids c{cluster}-{i})."""
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    x = np.concatenate([c + 0.05 * rng.standard_normal((20, 8)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [{"id": f"c{i // 20}-{i % 20}", "caption": ""} for i in range(60)]
    store = create_store(None, 8)
    store.add([item["id"] for item in items], x, items)
    return store


def test_recommend_excludes_seen_items_and_explains_each_result():
    index = clustered_index()
    liked, disliked = ["c0-0", "c0-1", "c1-0"], ["c2-0"]
    recs = recommend(index, liked, disliked, k=10, lam=0.7)
    ids = [r.id for r in recs]
    assert len(ids) == 10 and not set(ids) & set(liked + disliked)
    assert not any(i.startswith("c2") for i in ids)  # the disliked cluster stays out
    for rec, item_id in zip(recs, ids):
        because = rec.because
        assert because in liked and because[:2] == item_id[:2]  # explained by a liked item of its own cluster
    assert [r.score for r in recommend(index, liked, k=5, lam=1.0)] == sorted(
        [r.score for r in recommend(index, liked, k=5, lam=1.0)], reverse=True)


def test_recommend_diversity_reaches_the_second_liked_cluster():
    index = clustered_index()
    liked = ["c0-0", "c0-1", "c0-2", "c1-0"]  # mostly cluster 0: the preference leans that way
    plain = recommend(index, liked, k=5, lam=1.0)
    diverse = recommend(index, liked, k=5, lam=0.55)
    clusters = lambda recs: {r.id[:2] for r in recs}  # noqa: E731
    assert clusters(plain) == {"c0"}
    assert clusters(diverse) == {"c0", "c1"}


def test_recommend_unknown_or_deleted_ids_fail_clearly():
    index = clustered_index()
    index.delete(["c0-3"])
    with pytest.raises(UnknownItem, match="c0-3"):
        recommend(index, ["c0-3"])
    with pytest.raises(UnknownItem, match="zzz"):
        recommend(index, ["c0-0"], ["zzz"])

"""VectorIndex on random unit vectors: exact and approximate search, add/delete, atomic files."""

import json

import faiss
import numpy as np
import pytest

from visembed.index.store import (
    CorruptIndex, IndexNotFound, IndexSettings, UnknownItem, VectorIndex,
)


def unit_vectors(n, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items_for(n, prefix="item"):
    return [{"id": f"{prefix}-{i}", "caption": f"caption {i}", "path": None} for i in range(n)]


def exact_top(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :k]


SMALL_APPROX = {
    "hnsw": IndexSettings(kind="hnsw", hnsw_m=16, hnsw_ef_construction=64, hnsw_ef_search=128),
    "ivfpq": IndexSettings(kind="ivfpq", ivf_nlist=16, ivf_nprobe=16, pq_m=16, rerank=10),
}


def test_flat_search_is_exact_inner_product():
    x = unit_vectors(300)
    index = VectorIndex.build(x, items_for(300))
    assert index.kind == "flat"
    q = unit_vectors(5, seed=1)
    scores, rows = index.search(q, 10)
    assert np.array_equal(rows, exact_top(x, q, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, rows, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_recall_against_exact(kind):
    x = unit_vectors(3000)
    q = unit_vectors(50, seed=1)
    index = VectorIndex.build(x, items_for(3000), SMALL_APPROX[kind])
    assert index.kind == kind
    _, rows = index.search(q, 10)
    truth = exact_top(x, q, 10)
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])
    assert recall >= 0.9


def test_auto_kind_switches_at_the_size_threshold():
    settings = IndexSettings(kind="auto", exact_below=500, large_kind="hnsw")
    assert VectorIndex.build(unit_vectors(499), items_for(499), settings).kind == "flat"
    assert VectorIndex.build(unit_vectors(500), items_for(500), settings).kind == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSettings(kind="annoy").resolve_kind(10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_add_and_delete_without_rebuild(kind, tmp_path):
    settings = SMALL_APPROX.get(kind, IndexSettings(kind="flat"))
    x = unit_vectors(2000)
    index = VectorIndex.build(x, items_for(2000), settings)
    built = index.faiss_index

    new = unit_vectors(3, seed=7)
    index.add(new, items_for(3, prefix="new"))
    assert index.faiss_index is built and len(index) == 2003
    _, rows = index.search(new, 1)
    assert [index.items[r]["id"] for r in rows[:, 0]] == ["new-0", "new-1", "new-2"]

    assert index.delete(["new-1", "item-5"]) == 2
    assert "new-1" not in index and len(index) == 2001
    _, rows = index.search(np.stack([new[1], x[5]]), 20)
    found = {index.items[r]["id"] for r in rows.ravel() if r >= 0}
    assert not found & {"new-1", "item-5"}

    index.save(tmp_path)
    reopened = VectorIndex.open(tmp_path)
    assert len(reopened) == 2001 and "item-5" not in reopened and "new-2" in reopened
    _, rows = reopened.search(new[2:], 1)
    assert reopened.items[rows[0, 0]]["id"] == "new-2"


def test_add_rejects_repeated_ids_and_wrong_shapes():
    index = VectorIndex.build(unit_vectors(10), items_for(10))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(unit_vectors(1), [{"id": "item-3"}])
    with pytest.raises(ValueError, match="shape"):
        index.add(unit_vectors(1, d=8), [{"id": "x"}])
    with pytest.raises(UnknownItem, match="nope"):
        index.delete(["nope"])


def test_exclusions_and_fewer_live_items_than_k():
    x = unit_vectors(6)
    index = VectorIndex.build(x, items_for(6))
    index.delete(["item-0"])
    scores, rows = index.search(x[:1], 10, exclude_rows=[1])
    live = rows[0][rows[0] >= 0]
    assert sorted(live) == [2, 3, 4, 5]
    assert list(rows[0][4:]) == [-1] * 6 and np.all(scores[0][4:] == 0)


def test_save_is_generational_and_deletion_only_rewrites_the_manifest(tmp_path):
    index = VectorIndex.build(unit_vectors(50), items_for(50))
    index.save(tmp_path)
    first = json.loads((tmp_path / "index.json").read_text())
    index.delete(["item-1"])
    index.save(tmp_path)
    second = json.loads((tmp_path / "index.json").read_text())
    assert second["generation"] == first["generation"] + 1
    assert second["files"] == first["files"] and second["deleted"] == [1]
    index.add(unit_vectors(1, seed=3), [{"id": "extra"}])
    index.save(tmp_path)
    third = json.loads((tmp_path / "index.json").read_text())
    assert third["files"]["vectors"] != first["files"]["vectors"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["index.json", *third["files"].values()])  # old generation and tmp files gone


def test_crash_during_save_leaves_the_previous_index_readable(tmp_path, monkeypatch):
    index = VectorIndex.build(unit_vectors(40), items_for(40))
    index.save(tmp_path)
    index.add(unit_vectors(2, seed=5), items_for(2, prefix="late"))

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        index.save(tmp_path)
    reopened = VectorIndex.open(tmp_path)
    assert len(reopened) == 40 and "late-0" not in reopened
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_and_corrupt_indexes_give_clear_errors(tmp_path):
    with pytest.raises(IndexNotFound, match="does not exist"):
        VectorIndex.open(tmp_path / "nowhere")
    with pytest.raises(IndexNotFound, match="index.json is missing"):
        VectorIndex.open(tmp_path)

    index = VectorIndex.build(unit_vectors(20), items_for(20))
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "index.json").read_text())

    faiss_file = tmp_path / manifest["files"]["faiss"]
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptIndex, match="cannot read"):
        VectorIndex.open(tmp_path)
    faiss_file.write_bytes(good)

    items_file = tmp_path / manifest["files"]["items"]
    lines = items_file.read_text().splitlines(keepends=True)
    items_file.write_text("".join(lines[:-1]))
    with pytest.raises(CorruptIndex, match="inconsistent"):
        VectorIndex.open(tmp_path)

    (tmp_path / "index.json").write_text("{ not json")
    with pytest.raises(CorruptIndex, match="not valid JSON"):
        VectorIndex.open(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptIndex, match="not a visembed index"):
        VectorIndex.open(tmp_path)


def test_ivfpq_exact_rerank_recovers_what_pq_codes_lose():
    x, q = unit_vectors(3000), unit_vectors(50, seed=1)
    truth = exact_top(x, q, 10)

    def recall(rerank):
        settings = IndexSettings(kind="ivfpq", ivf_nlist=16, ivf_nprobe=16, pq_m=16, rerank=rerank)
        scores, rows = VectorIndex.build(x, items_for(3000), settings).search(q, 10)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, rows, axis=1), rtol=1e-5)  # exact scores
        return np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])

    assert recall(10) > recall(1) + 0.2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused_with_the_count_of_bad_rows(bad):
    from visembed.index.store import NonFiniteVectors

    x = unit_vectors(10)
    x[[2, 7], 3] = bad
    with pytest.raises(NonFiniteVectors, match="2 of 10 vectors contain NaN/inf"):
        VectorIndex.build(x, items_for(10))
    index = VectorIndex.build(unit_vectors(5), items_for(5))
    with pytest.raises(NonFiniteVectors, match="2 of 10 vectors"):
        index.add(x, items_for(10, prefix="new"))
    assert len(index) == 5 and index.vectors.shape == (5, 32)


def test_reopened_follows_the_committed_generation_sharing_unchanged_data(tmp_path):
    index = VectorIndex.build(unit_vectors(20), items_for(20))
    index.save(tmp_path)
    reader = VectorIndex.open(tmp_path)  # a long-running reader, as the HTTP service

    writer = VectorIndex.open(tmp_path)  # another process: `index delete`
    writer.delete(["item-3"])
    writer.save(tmp_path)
    fresh = reader.reopened(tmp_path)
    assert "item-3" not in fresh and "item-3" in reader and len(fresh) == 19
    assert fresh.faiss_index is reader.faiss_index and fresh.vectors is reader.vectors  # nothing read again

    writer.add(unit_vectors(2, seed=5), items_for(2, prefix="new"))  # `index add`: new data files
    writer.save(tmp_path)
    newer = fresh.reopened(tmp_path)
    assert len(newer) == 21 and "new-1" in newer and newer.vectors is not fresh.vectors

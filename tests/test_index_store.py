"""The FAISS store on random unit vectors: exact and approximate search, add/delete, atomic files.
(What every backend must do is in test_index_backends.py; this is what is particular to FAISS.)"""

import json

import faiss
import numpy as np
import pytest

from visembed.index.backends import CorruptIndex, IndexNotFound, UnknownItem, open_store
from visembed.index.backends.faiss_kinds import IndexSettings
from visembed.index.backends.faiss_store import FaissStore


def unit_vectors(n, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items_for(n, prefix="item"):
    return [{"id": f"{prefix}-{i}", "caption": f"caption {i}", "path": None} for i in range(n)]


def build(vectors, items, settings=None, directory=None) -> FaissStore:
    """What `build_index` does: one `add` of everything into an empty store."""
    store = FaissStore.create(directory, vectors.shape[1], settings)
    store.add([item["id"] for item in items], vectors, items)
    return store


def exact_top(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :k]


def item_ids(rows, prefix="item"):
    return [[f"{prefix}-{r}" for r in row] for row in rows]


SMALL_APPROX = {
    "hnsw": IndexSettings(kind="hnsw", hnsw_m=16, hnsw_ef_construction=64, hnsw_ef_search=128),
    "ivfpq": IndexSettings(kind="ivfpq", ivf_nlist=16, ivf_nprobe=16, pq_m=16, rerank=10),
}


def test_flat_search_is_exact_inner_product():
    x = unit_vectors(300)
    store = build(x, items_for(300))
    assert store.kind == "flat"
    q = unit_vectors(5, seed=1)
    matches = store.search(q, 10)
    truth = exact_top(x, q, 10)
    assert [m.ids for m in matches] == item_ids(truth)
    np.testing.assert_allclose(np.stack([m.scores for m in matches]), np.take_along_axis(q @ x.T, truth, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_recall_against_exact(kind):
    x = unit_vectors(3000)
    q = unit_vectors(50, seed=1)
    store = build(x, items_for(3000), SMALL_APPROX[kind])
    assert store.kind == kind
    found = [m.ids for m in store.search(q, 10)]
    truth = item_ids(exact_top(x, q, 10))
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(found, truth)])
    assert recall >= 0.9


def test_auto_kind_switches_at_the_size_threshold():
    settings = IndexSettings(kind="auto", exact_below=500, large_kind="hnsw")
    assert build(unit_vectors(499), items_for(499), settings).kind == "flat"
    assert build(unit_vectors(500), items_for(500), settings).kind == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSettings(kind="annoy").resolve_kind(10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_add_and_delete_without_rebuild(kind, tmp_path):
    settings = SMALL_APPROX.get(kind, IndexSettings(kind="flat"))
    x = unit_vectors(2000)
    store = build(x, items_for(2000), settings, tmp_path)
    built = store.faiss_index

    new = unit_vectors(3, seed=7)
    store.add(["new-0", "new-1", "new-2"], new, items_for(3, prefix="new"))
    assert store.faiss_index is built and len(store) == 2003
    assert [m.ids[0] for m in store.search(new, 1)] == ["new-0", "new-1", "new-2"]

    assert store.delete(["new-1", "item-5"]) == 2
    assert "new-1" not in store and len(store) == 2001
    found = {i for m in store.search(np.stack([new[1], x[5]]), 20) for i in m.ids}
    assert not found & {"new-1", "item-5"}

    store.commit()
    reopened = open_store(tmp_path)
    assert len(reopened) == 2001 and "item-5" not in reopened and "new-2" in reopened
    assert reopened.search(new[2:], 1)[0].ids == ["new-2"]


def test_add_rejects_repeated_ids_and_wrong_shapes():
    store = build(unit_vectors(10), items_for(10))
    with pytest.raises(ValueError, match="already in the index"):
        store.add(["item-3"], unit_vectors(1), [{"id": "item-3"}])
    with pytest.raises(ValueError, match="shape"):
        store.add(["x"], unit_vectors(1, d=8), [{"id": "x"}])
    with pytest.raises(UnknownItem, match="nope"):
        store.delete(["nope"])


def test_exclusions_and_fewer_live_items_than_k():
    x = unit_vectors(6)
    store = build(x, items_for(6))
    store.delete(["item-0"])
    (found,) = store.search(x[:1], 10, exclude_ids=["item-1"])
    assert sorted(found.ids) == ["item-2", "item-3", "item-4", "item-5"]
    assert len(found.scores) == 4  # no padding: fewer live items than k give fewer matches


def test_save_is_generational_and_deletion_only_rewrites_the_manifest(tmp_path):
    store = build(unit_vectors(50), items_for(50), directory=tmp_path)
    store.commit()
    first = json.loads((tmp_path / "index.json").read_text())
    store.delete(["item-1"])
    store.commit()
    second = json.loads((tmp_path / "index.json").read_text())
    assert second["generation"] == first["generation"] + 1
    assert second["files"] == first["files"] and second["deleted"] == [1]
    store.add(["extra"], unit_vectors(1, seed=3), [{"id": "extra"}])
    store.commit()
    third = json.loads((tmp_path / "index.json").read_text())
    assert third["files"]["vectors"] != first["files"]["vectors"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["index.json", *third["files"].values()])  # old generation and tmp files gone


def test_crash_during_save_leaves_the_previous_index_readable(tmp_path, monkeypatch):
    store = build(unit_vectors(40), items_for(40), directory=tmp_path)
    store.commit()
    store.add(["late-0", "late-1"], unit_vectors(2, seed=5), items_for(2, prefix="late"))

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        store.commit()
    reopened = open_store(tmp_path)
    assert len(reopened) == 40 and "late-0" not in reopened
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_and_corrupt_indexes_give_clear_errors(tmp_path):
    with pytest.raises(IndexNotFound, match="does not exist"):
        open_store(tmp_path / "nowhere")
    with pytest.raises(IndexNotFound, match="index.json is missing"):
        open_store(tmp_path)

    build(unit_vectors(20), items_for(20), directory=tmp_path).commit()
    manifest = json.loads((tmp_path / "index.json").read_text())

    faiss_file = tmp_path / manifest["files"]["faiss"]
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptIndex, match="cannot read"):
        open_store(tmp_path)
    faiss_file.write_bytes(good)

    items_file = tmp_path / manifest["files"]["items"]
    lines = items_file.read_text().splitlines(keepends=True)
    items_file.write_text("".join(lines[:-1]))
    with pytest.raises(CorruptIndex, match="inconsistent"):
        open_store(tmp_path)

    (tmp_path / "index.json").write_text("{ not json")
    with pytest.raises(CorruptIndex, match="not valid JSON"):
        open_store(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptIndex, match="not a visembed index"):
        open_store(tmp_path)


def test_ivfpq_exact_rerank_recovers_what_pq_codes_lose():
    x, q = unit_vectors(3000), unit_vectors(50, seed=1)
    truth = item_ids(exact_top(x, q, 10))
    row = {f"item-{i}": i for i in range(3000)}

    def recall(rerank):
        settings = IndexSettings(kind="ivfpq", ivf_nlist=16, ivf_nprobe=16, pq_m=16, rerank=rerank)
        matches = build(x, items_for(3000), settings).search(q, 10)
        for query, m in zip(q, matches):  # exact scores
            np.testing.assert_allclose(m.scores, x[[row[i] for i in m.ids]] @ query, rtol=1e-5)
        return np.mean([len(set(m.ids) & set(t)) / 10 for m, t in zip(matches, truth)])

    assert recall(10) > recall(1) + 0.2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused_with_the_count_of_bad_rows(bad):
    from visembed.index.backends import NonFiniteVectors

    x = unit_vectors(10)
    x[[2, 7], 3] = bad
    with pytest.raises(NonFiniteVectors, match="2 of 10 vectors contain NaN/inf"):
        build(x, items_for(10))
    store = build(unit_vectors(5), items_for(5))
    with pytest.raises(NonFiniteVectors, match="2 of 10 vectors"):
        store.add([f"new-{i}" for i in range(10)], x, items_for(10, prefix="new"))
    assert len(store) == 5 and store.vectors(store.ids()).shape == (5, 32)


def test_newer_follows_the_committed_generation_sharing_unchanged_data(tmp_path):
    build(unit_vectors(20), items_for(20), directory=tmp_path).commit()
    reader = open_store(tmp_path)  # a long-running reader, as the HTTP service
    reader.set_search_threads(1)
    assert reader.newer() is None

    writer = open_store(tmp_path)  # another process: `index delete`
    writer.delete(["item-3"])
    writer.commit()
    fresh = reader.newer()
    assert "item-3" not in fresh and "item-3" in reader and len(fresh) == 19
    assert fresh.faiss_index is reader.faiss_index and fresh._vectors is reader._vectors  # nothing read again
    assert fresh.search_threads == 1 and reader.newer() is None and fresh.newer() is None  # offered once

    writer.add(["new-0", "new-1"], unit_vectors(2, seed=5), items_for(2, prefix="new"))  # `index add`: new data files
    writer.commit()
    newer = fresh.newer()
    assert len(newer) == 21 and "new-1" in newer and newer._vectors is not fresh._vectors


def test_adding_to_a_store_that_shares_its_faiss_index_leaves_the_other_one_alone(tmp_path):
    x = unit_vectors(20)
    build(x, items_for(20), directory=tmp_path).commit()
    reader = open_store(tmp_path)
    writer = open_store(tmp_path)
    writer.delete(["item-3"])
    writer.commit()
    fresh = reader.newer()  # shares the reader's FAISS index
    fresh.add(["twin"], x[:1], [{"caption": "twin"}])
    assert fresh.search(x[:1], 2)[0].ids in (["item-0", "twin"], ["twin", "item-0"])
    assert reader.faiss_index.ntotal == 20 and len(reader.search(x[:1], 25)[0].ids) == 20  # never the twin's row


def test_search_threads_are_set_in_the_searching_thread():
    import threading

    store = build(unit_vectors(20), items_for(20))
    store.set_search_threads(1)
    seen = []

    def search_in_a_fresh_thread():  # as a thread-pool worker: libgomp's setting is per thread
        faiss.omp_set_num_threads(2)  # whatever the thread started with (OMP_NUM_THREADS, cores)
        store.search(unit_vectors(1), 3)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search_in_a_fresh_thread)
    worker.start()
    worker.join()
    assert seen == [1]


def test_an_in_memory_store_refuses_to_commit():
    from visembed.index.backends import IndexStoreError

    with pytest.raises(IndexStoreError, match="in memory"):
        build(unit_vectors(3), items_for(3)).commit()


def test_a_broken_commit_is_reported_once(tmp_path):
    from visembed.index.backends import IndexStoreError

    build(unit_vectors(5), items_for(5), directory=tmp_path).commit()
    reader = open_store(tmp_path)
    (tmp_path / "index.json").write_text("{ not json")
    with pytest.raises(IndexStoreError, match="not valid JSON"):
        reader.newer()
    assert reader.newer() is None and len(reader) == 5  # not read again until the next commit

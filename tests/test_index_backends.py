"""The `VectorStore` contract, run on every backend (see `visembed/index/backends/base.py`).

A new backend joins by adding one entry to `BACKENDS`: a function that makes an empty store whose
commits land at a location, and one that opens what is committed there.
"""

import numpy as np
import pytest

from visembed.index.backends import (
    IndexNotFound, IndexStoreError, Matches, NonFiniteVectors, UnknownItem, VectorStore, create_store, open_store,
)
from visembed.index.backends.faiss_kinds import IndexSettings

DIM = 16


def faiss_backend(kind):
    settings = IndexSettings(kind=kind, hnsw_m=8, hnsw_ef_construction=64, hnsw_ef_search=64, ivf_nlist=2,
                             ivf_nprobe=2, pq_m=4, rerank=100)  # small sizes, searched exhaustively
    return {"create": lambda where: create_store(where, DIM, settings=settings, info={"model_dir": "m"}),
            "open": open_store}


def milvus_backend(kind):
    """Milvus Lite in a file beside the index folder (`milvus:PATH.db`): the same code as for a server."""
    def create(where):
        pytest.importorskip("milvus_lite", reason="the `milvus` extra (./dev test installs it)")
        from visembed.index.backends.milvus_store import MilvusSettings

        settings = MilvusSettings(uri=str(where.parent / "milvus.db"), kind=kind, hnsw_m=8, hnsw_ef_construction=64,
                                  hnsw_ef_search=64, ivf_nlist=2, ivf_nprobe=2)
        return create_store(where, DIM, settings=settings, info={"model_dir": "m"}, backend="milvus")

    return {"create": create, "open": open_store}


BACKENDS = {"faiss-flat": faiss_backend("flat"), "faiss-hnsw": faiss_backend("hnsw"),
            "faiss-ivfpq": faiss_backend("ivfpq")}
BACKENDS.update({"milvus-flat": milvus_backend("flat"), "milvus-hnsw": milvus_backend("hnsw"),
                 "milvus-ivf": milvus_backend("ivf_flat")})


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    """(make an empty store, open the committed one), both at a fresh location."""
    chosen = BACKENDS[request.param]
    where = tmp_path / "store"
    return (lambda: chosen["create"](where)), (lambda: chosen["open"](where))


def unit_vectors(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(make, n=100, seed=0):
    """A store of n items "v0".."v{n-1}" (vectors from `unit_vectors(n, seed)`), not committed."""
    store, x = make(), unit_vectors(n, seed)
    store.add([f"v{i}" for i in range(n)], x, [{"caption": f"caption {i}", "n": i} for i in range(n)])
    return store, x


def exact_ids(x, query, k, skip=()):
    order = [f"v{i}" for i in np.argsort(-(x @ query))]
    return [i for i in order if i not in skip][:k]


def test_it_is_a_vector_store(backend):
    make, _ = backend
    store = make()
    assert isinstance(store, VectorStore) and store.dim == DIM and len(store) == 0 and store.ids() == []
    (found,) = store.search(unit_vectors(1), 5)
    assert isinstance(found, Matches) and found.ids == [] and len(found.scores) == 0


def test_search_answers_ids_and_inner_products_best_first(backend):
    make, _ = backend
    store, x = filled(make)
    queries = unit_vectors(3, seed=1)
    matches = store.search(queries, 5)
    assert len(matches) == 3
    for query, found in zip(queries, matches):
        assert found.ids == exact_ids(x, query, 5)
        assert found.scores.dtype == np.float32 and found.scores.shape == (5,)
        np.testing.assert_allclose(found.scores, x[[int(i[1:]) for i in found.ids]] @ query, rtol=1e-5)
    assert store.search(x[:1], 1)[0].ids == ["v0"]  # an item's own vector finds it first


def test_vectors_and_meta_by_id(backend):
    make, _ = backend
    store, x = filled(make)
    np.testing.assert_array_equal(store.vectors(["v7", "v2", "v7"]), x[[7, 2, 7]])
    assert store.vectors([]).shape == (0, DIM)
    assert store.meta(["v3"]) == [{"id": "v3", "caption": "caption 3", "n": 3}]
    store.meta(["v3"])[0]["caption"] = "changed"
    assert store.meta(["v3"])[0]["caption"] == "caption 3"  # copies
    assert store.ids() == [f"v{i}" for i in range(100)] and "v99" in store and "v100" not in store
    for ask in (store.vectors, store.meta, store.delete):
        with pytest.raises(UnknownItem, match="nope"):
            ask(["v1", "nope"])


def test_delete_hides_items_and_remembers_them(backend):
    make, _ = backend
    store, x = filled(make)
    assert store.delete(["v0", "v1", "v0"]) == 2
    assert len(store) == 98 and "v0" not in store and store.deleted_ids() == {"v0", "v1"}
    assert "v0" not in store.ids() and not {"v0", "v1"} & set(store.search(x[:2], 10)[0].ids)
    with pytest.raises(UnknownItem):
        store.vectors(["v0"])
    with pytest.raises(UnknownItem):
        store.delete(["v0"])  # already gone

    back = unit_vectors(1, seed=9)
    store.add(["v0"], back, [{"caption": "again"}])  # a deleted id may come back, with a new vector
    assert "v0" in store and store.deleted_ids() == {"v1"} and store.meta(["v0"])[0]["caption"] == "again"
    np.testing.assert_array_equal(store.vectors(["v0"]), back)
    assert store.search(back, 1)[0].ids == ["v0"]


def test_exclusions_and_fewer_items_than_k(backend):
    make, _ = backend
    store, x = filled(make, n=20)  # IVF-PQ trains 16 centroids: no fewer items on a first add
    store.delete(["v5"])
    (found,) = store.search(x[:1], 30, exclude_ids=["v0", "v2", "not-there"])
    assert found.ids == exact_ids(x, x[0], 30, skip={"v0", "v2", "v5"}) and len(found.scores) == 17


def test_add_is_all_or_nothing(backend):
    make, _ = backend
    store, x = filled(make, n=20)
    bad = unit_vectors(3, seed=2)
    bad[1, 4] = np.nan
    with pytest.raises(NonFiniteVectors, match="1 of 3 vectors"):
        store.add(["a", "b", "c"], bad, [{}, {}, {}])
    with pytest.raises(ValueError, match="already in the index or repeated"):
        store.add(["a", "v3"], unit_vectors(2, seed=3), [{}, {}])
    with pytest.raises(ValueError, match="already in the index or repeated"):
        store.add(["a", "a"], unit_vectors(2, seed=3), [{}, {}])
    with pytest.raises(ValueError, match="shape"):
        store.add(["a"], np.ones((1, DIM + 1), np.float32), [{}])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        store.add(["a"], unit_vectors(2, seed=3), [{}])
    with pytest.raises(ValueError, match="names another id"):
        store.add(["a"], unit_vectors(1, seed=3), [{"id": "b"}])
    assert len(store) == 20 and store.ids() == [f"v{i}" for i in range(20)] and "a" not in store
    assert store.search(unit_vectors(1, seed=3), 10)[0].ids == exact_ids(x, unit_vectors(1, seed=3)[0], 10)


def test_commit_is_what_other_readers_see(backend):
    make, reopen = backend
    with pytest.raises(IndexNotFound):
        reopen()
    store, x = filled(make)
    store.delete(["v4"])
    store.info["data_spec"] = "random"
    store.commit()
    other = reopen()
    assert other.ids() == store.ids() and other.deleted_ids() == {"v4"} and len(other) == 99
    assert other.info["model_dir"] == "m" and other.info["data_spec"] == "random"
    np.testing.assert_array_equal(other.vectors(other.ids()), store.vectors(store.ids()))
    assert other.meta(["v9"]) == store.meta(["v9"])
    queries = unit_vectors(4, seed=5)
    for a, b in zip(other.search(queries, 7, exclude_ids=["v1"]), store.search(queries, 7, exclude_ids=["v1"])):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)

    store.add(["late"], unit_vectors(1, seed=6), [{"caption": "late"}])  # not committed: not seen
    assert "late" not in reopen()


def test_a_reader_follows_commits_once_each(backend):
    make, reopen = backend
    store, _ = filled(make, n=20)
    store.commit()
    reader = reopen()
    reader.set_search_threads(1)
    assert reader.newer() is None

    writer = reopen()
    writer.delete(["v3"])
    writer.commit()
    fresh = reader.newer()
    assert fresh is not None and "v3" not in fresh and "v3" in reader  # the old object still answers as it did
    assert reader.newer() is None and fresh.newer() is None

    writer.add(["new"], unit_vectors(1, seed=8), [{"caption": "new"}])
    writer.commit()
    newest = fresh.newer()
    assert newest is not None and "new" in newest and len(newest) == 20


"""Index folders written before `index/backends/` (main at ca6bcbd, `VectorIndex` by row numbers)
open with the FAISS store and answer exactly as they did: same ids, same scores, same
recommendations and explanations, for every index kind, with tombstones, added items and an id
deleted and added back (fixtures/index_v1, made by fixtures/index_v1/make.py on main).

FAISS and numpy choose SIMD kernels by CPU: on a machine with other instruction sets than the one
that made the fixture, scores may differ in the last bits, so there they are compared to 1e-6
(absolute: a relative bound fails on scores near 0, seen on an AVX2-only CPU: 1.5e-8 off 0.0035).
"""

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from visembed.index.backends import open_store
from visembed.index.searcher import Searcher

FIXTURE = Path(__file__).parent / "fixtures" / "index_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
SAME_CPU = EXPECTED["instruction_sets"] == sorted(faiss.supported_instruction_sets())
QUERIES = np.array(EXPECTED["queries"], dtype=np.float32)


def assert_same_hits(hits, expected):
    got = [h.as_dict() for h in hits]
    assert [(h["id"], h["caption"], h["path"], h["because"]) for h in got] == [
        (h["id"], h["caption"], h["path"], h["because"]) for h in expected]
    for key in ("score", "because_score"):
        values = [h[key] for h in got]
        wanted = [h[key] for h in expected]
        if SAME_CPU or None in wanted:
            assert values == wanted, key  # bit for bit
        else:
            np.testing.assert_allclose(values, wanted, rtol=0, atol=1e-6, err_msg=key)


@pytest.fixture(params=sorted(EXPECTED["kinds"]))
def old_index(request, tmp_path):
    folder = tmp_path / request.param
    shutil.copytree(FIXTURE / request.param, folder)  # a copy: a commit must not touch the fixture
    return request.param, folder


def test_an_index_written_by_main_answers_as_it_did(old_index):
    kind, folder = old_index
    expected = EXPECTED["kinds"][kind]
    store = open_store(folder)
    assert store.kind == kind and store.ids() == expected["ids"] and store.deleted_ids() == set(expected["deleted"])
    searcher = Searcher(store, None, folder)
    for query, hits in zip(QUERIES, expected["search"]):
        assert_same_hits(searcher.search_vector(query, 10), hits)
    for query, hits in zip(QUERIES, expected["search_excluding"]):
        assert_same_hits(searcher.search_vector(query, 7, exclude_ids=["item-0", "added-1", "item-100"]), hits)
    assert_same_hits(searcher.search_vector(QUERIES[0], 400), expected["search_k_400"])  # fewer live items than k
    for item_id, hits in expected["similar"].items():
        assert_same_hits(searcher.similar(item_id, 8), hits)
    assert_same_hits(searcher.recommend(["item-1", "item-2", "added-0"], ["item-5"], 9), expected["recommend"])
    assert_same_hits(searcher.recommend(["item-20"], [], 6, lam=0.4), expected["recommend_varied"])


def test_an_old_index_takes_deletions_and_additions_in_its_own_format(old_index):
    kind, folder = old_index
    before = json.loads((folder / "index.json").read_text())
    store = open_store(folder)
    store.delete(["item-13"])
    store.commit()
    after = json.loads((folder / "index.json").read_text())
    assert after["files"] == before["files"] and after["generation"] == before["generation"] + 1
    assert after["deleted"] == sorted(before["deleted"] + [13])
    assert {k: v for k, v in after.items() if k not in ("generation", "deleted", "live")} == {
        k: v for k, v in before.items() if k not in ("generation", "deleted", "live")}

    new = store.vectors(["item-14"]) * -1.0
    store.add(["fresh"], new, [{"caption": "fresh", "path": None}])
    store.commit()
    reopened = open_store(folder)
    assert reopened.ids()[-1] == "fresh" and "item-13" not in reopened and len(reopened) == before["live"]  # -1 +1
    lines = (folder / json.loads((folder / "index.json").read_text())["files"]["items"]).read_text().splitlines()
    assert json.loads(lines[-1]) == {"id": "fresh", "caption": "fresh", "path": None}

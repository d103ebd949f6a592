"""The FAISS index kinds the FAISS store builds (exact, HNSW, IVF-PQ) and their knobs.

`IndexSettings` travels in index.json, so an index searches with the settings it was built with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivfpq")


@dataclass
class IndexSettings:
    kind: str = "auto"  # "auto", "flat" (exact inner product), "hnsw" or "ivfpq"
    exact_below: int = 20_000  # auto: exact search below this many items (~5 ms a query on 2 cores), `large_kind` above
    large_kind: str = "hnsw"
    hnsw_m: int = 32  # graph degree: more = better recall, more memory and build time
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128  # candidates kept while searching: the recall/latency knob
    ivf_nlist: int = 0  # IVF cells; 0 = about 4 * sqrt(N)
    ivf_nprobe: int = 32  # cells visited per query
    pq_m: int = 32  # PQ sub-quantisers (must divide the dimension)
    rerank: int = 4  # ivfpq: fetch k * rerank candidates and re-score them exactly

    def resolve_kind(self, n: int) -> str:
        kind = self.large_kind if self.kind == "auto" and n >= self.exact_below else self.kind
        kind = "flat" if kind == "auto" else kind
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r} (choose flat, hnsw, ivfpq or auto)")
        return kind


def new_faiss_index(kind: str, dim: int, train: np.ndarray, s: IndexSettings) -> faiss.Index:
    """An empty FAISS index of `kind` (IVF-PQ trained on a sample of `train`, (N, dim))."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = s.hnsw_ef_construction
        return index
    if dim % s.pq_m:
        raise ValueError(f"pq_m={s.pq_m} does not divide the dimension {dim}")
    nlist = s.ivf_nlist or max(1, int(4 * math.sqrt(len(train))))
    nlist = min(nlist, max(1, len(train) // 39))  # faiss wants >= 39 training points per cell
    bits = 8 if len(train) >= 256 * 39 else 4
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, s.pq_m, bits, faiss.METRIC_INNER_PRODUCT)
    sample = train[np.random.default_rng(0).permutation(len(train))[: max(nlist * 64, 2**bits * 64)]]
    index.train(np.ascontiguousarray(sample))
    return index


def search_params(kind: str, s: IndexSettings, hidden: set[int]) -> tuple[faiss.SearchParameters, tuple]:
    """Search parameters that skip the `hidden` rows, and the objects they point to (keep them
    alive while searching: faiss holds raw pointers to them)."""
    selector, keep_alive = None, ()
    if hidden:
        batch = faiss.IDSelectorBatch(np.fromiter(hidden, dtype=np.int64))
        selector = faiss.IDSelectorNot(batch)
        keep_alive = (batch, selector)
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=s.hnsw_ef_search)
    elif kind == "ivfpq":
        params = faiss.SearchParametersIVF(sel=selector, nprobe=s.ivf_nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    return params, keep_alive

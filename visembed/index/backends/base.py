"""What a vector store is: items named by string ids, each with one vector and one metadata dict.

Everything above the store (`Searcher`, recommendation, the HTTP service, the index commands)
speaks ids only; how a backend finds vectors (FAISS row numbers, a database's primary keys) stays
inside it. A backend needs nothing more than ids, vectors and a JSON-able dict per id, so a vector
database (Milvus) can implement `VectorStore` as well as the FAISS folder (`faiss_store`).

Semantics every backend keeps (`tests/test_index_backends.py` checks them on each one):

- Vectors are float32 (N, dim), L2-normalised by the caller; scores are inner products. Vectors
  with NaN/inf are refused (`NonFiniteVectors`) and nothing of that call is stored.
- An id is live once added and until deleted. Adding a live id (or one id twice) is a
  `ValueError`; an id deleted earlier may be added again. Asking for an unknown or deleted id
  (`vectors`, `meta`, `delete`) raises `UnknownItem`; `exclude_ids` ignores ids it does not hold.
- `deleted_ids()` remembers ids deleted and not added back, so that a rebuild can leave them out.
- Changes are visible to the same object at once and to other readers after `commit()`, which
  is atomic: a crash leaves the previous commit readable. `info` (what the index is about: model
  folder, weights' sha256, data spec, ...) is committed with the items.
- A long-lived reader follows other writers with `newer()`; queries in flight keep the object
  they started with, so one answer never mixes two commits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np


class IndexStoreError(Exception):
    """Any problem with an index or store; the message is meant for the user as it is."""


class IndexNotFound(IndexStoreError):
    pass


class CorruptIndex(IndexStoreError):
    pass


class UnknownItem(IndexStoreError, LookupError):
    pass


class NonFiniteVectors(IndexStoreError, ValueError):
    """NaN/inf vectors: a broken model. An index would store them and rank them anywhere."""


class Matches(NamedTuple):
    """One query's answer: ids best first (fewer than k when fewer live items match), and scores."""

    ids: list[str]
    scores: np.ndarray  # (len(ids),) float32 inner products with the query


@runtime_checkable
class VectorStore(Protocol):
    """Items by id: vectors, metadata, nearest-neighbour search. See the module docstring."""

    info: dict  # JSON-able facts about the whole index; committed with the items

    @property
    def dim(self) -> int:
        """Length of every vector."""

    def __len__(self) -> int:
        """Live items."""

    def __contains__(self, item_id: object) -> bool:
        """True for a live id."""

    def ids(self) -> list[str]:
        """Every live id, in the order they were added."""

    def deleted_ids(self) -> set[str]:
        """Ids deleted and not added back since (a rebuild keeps them out)."""

    def add(self, ids: Sequence[str], vectors: np.ndarray, meta: Sequence[dict]) -> None:
        """Store `vectors[i]` and `meta[i]` under `ids[i]`; all or nothing."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove live items; returns how many distinct ids went."""

    def search(self, queries: np.ndarray, k: int, exclude_ids: Sequence[str] = ()) -> list[Matches]:
        """The k live items with the highest inner product for each query (Q, dim), `exclude_ids` left out."""

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), dim) float32, in the order asked."""

    def meta(self, ids: Sequence[str]) -> list[dict]:
        """Each id's metadata dict as added, with `"id"` set to the id (new dicts: setting a key in
        one changes nothing stored)."""

    def commit(self) -> None:
        """Make every change so far durable and visible to other readers, atomically."""

    def newer(self) -> VectorStore | None:
        """A store of the commit made (by anyone) since this one was opened or last asked, or None.
        Each commit is offered once, so a broken one is not read again and again; `IndexStoreError`
        when it cannot be read. This object stays valid for the queries already using it."""

    def set_search_threads(self, threads: int | None) -> None:
        """Threads one search may use (None: the backend's default). A server whose parallelism is
        concurrent requests sets 1; a backend that searches elsewhere may ignore it."""


# ---- checks every backend applies to `add` -----------------------------------------------------

def checked_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """`vectors` as a C-contiguous float32 (N, dim) matrix; ValueError for another shape,
    `NonFiniteVectors` when a row holds NaN/inf."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"expected vectors of shape (N, {dim or 'D'}), got {vectors.shape}")
    bad = int((~np.isfinite(vectors)).any(axis=1).sum()) if vectors.size else 0
    if bad:
        raise NonFiniteVectors(f"{bad} of {len(vectors)} vectors contain NaN/inf: the model that made them is broken "
                               "(diverged training or corrupt weights); nothing was indexed")
    return vectors


def checked_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    """`queries` as a C-contiguous float32 (Q, dim) matrix; ValueError for another shape or k < 1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"expected queries of shape (Q, {dim}), got {queries.shape}")
    if k < 1:
        raise ValueError("k must be at least 1")
    return queries


def checked_items(ids: Sequence[str], vectors: np.ndarray, meta: Sequence[dict], live) -> list[dict]:
    """One metadata dict per id with `"id"` first (a copy), after checking that counts match,
    that no id repeats and that none is live already (`live`: a container of live ids)."""
    ids = [str(i) for i in ids]
    if not len(ids) == len(vectors) == len(meta):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids and {len(meta)} metadata dicts")
    clash = [i for i in ids if i in live]
    if clash or len(set(ids)) != len(ids):
        raise ValueError(f"item ids already in the index or repeated: {(clash or ids)[:5]}")
    items = []
    for item_id, fields in zip(ids, meta):
        if "id" in fields and str(fields["id"]) != item_id:
            raise ValueError(f"metadata of {item_id!r} names another id ({fields['id']!r})")
        items.append({"id": item_id, **{k: v for k, v in fields.items() if k != "id"}})
    return items


def read_index_file(directory: Path, name: str, fmt: str, what: str) -> dict:
    """The JSON file `name` that names a store's committed state (FAISS `index.json`, Milvus
    `store.json`): IndexNotFound when absent, CorruptIndex when it is not `what` of format `fmt`."""
    path = Path(directory) / name
    if not path.is_file():
        raise IndexNotFound(f"no index at {directory}: {name} is missing (build one with `visembed index build`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptIndex(f"{path} is not valid JSON ({exc}); rebuild the index") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise CorruptIndex(f"{path} is not {what} (expected format {fmt!r})")
    return data


def file_stamp(path: Path) -> tuple | None:
    """(inode, size, mtime) of a file replaced atomically on each commit (a new inode), None when absent:
    how a reader notices another process's commit without reading the file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns

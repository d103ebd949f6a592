"""Vector stores: the `VectorStore` protocol (`base`) and its backends (`faiss_store`, FAISS in an
index folder; `milvus_store`, a Milvus collection named by the folder's store.json). `open_store`/`create_store` are what the rest of visembed calls; a new backend
implements `base.VectorStore`, joins `BACKENDS` and the parametrisation of
`tests/test_index_backends.py`.

Names load on first use: `base` (the protocol and its errors) imports no FAISS.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from visembed.index.backends.base import (
    CorruptIndex, IndexNotFound, IndexStoreError, Matches, NonFiniteVectors, UnknownItem, VectorStore,
)

BACKENDS = {"faiss": "visembed.index.backends.faiss_store:FaissStore",
            "milvus": "visembed.index.backends.milvus_store:MilvusStore"}
POINTER = "store.json"  # in an index folder whose items live elsewhere: {"backend": NAME, ...} (FAISS: none)


def backend_class(name: str = "faiss"):
    if name not in BACKENDS:
        raise ValueError(f"unknown vector store backend {name!r} (choose {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_of(index_dir: str | Path) -> str:
    """The backend an index folder was built with: the one its store.json names, else FAISS."""
    import json

    pointer = Path(index_dir) / POINTER
    if not pointer.is_file():
        return "faiss"
    try:
        return str(json.loads(pointer.read_text(encoding="utf-8"))["backend"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CorruptIndex(f"{pointer} is not valid JSON naming a backend; rebuild the index") from None


def open_store(index_dir: str | Path, backend: str | None = None) -> VectorStore:
    """The store committed in `index_dir` (by the backend it was built with, unless told);
    `IndexNotFound`/`CorruptIndex` with a sentence."""
    return backend_class(backend or backend_of(index_dir)).open(index_dir)


def create_store(index_dir: str | Path | None, dim: int, *, settings=None, info: dict | None = None,
                 backend: str = "faiss") -> VectorStore:
    """An empty store whose `commit()` replaces what `index_dir` holds (None: in memory, where the
    backend allows). `settings`: the backend's own (FAISS: `IndexSettings`)."""
    return backend_class(backend).create(index_dir, dim, settings, info)


__all__ = ["BACKENDS", "CorruptIndex", "IndexNotFound", "IndexStoreError", "Matches", "NonFiniteVectors",
           "UnknownItem", "VectorStore", "backend_class", "backend_of", "create_store", "open_store"]

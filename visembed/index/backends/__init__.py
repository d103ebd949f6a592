"""Vector stores: the `VectorStore` protocol (`base`) and its backends (`faiss_store`, FAISS in an
index folder). `open_store`/`create_store` are what the rest of visembed calls; a new backend
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

BACKENDS = {"faiss": "visembed.index.backends.faiss_store:FaissStore"}


def backend_class(name: str = "faiss"):
    if name not in BACKENDS:
        raise ValueError(f"unknown vector store backend {name!r} (choose {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_store(index_dir: str | Path, backend: str = "faiss") -> VectorStore:
    """The store committed in `index_dir`; `IndexNotFound`/`CorruptIndex` with a sentence."""
    return backend_class(backend).open(index_dir)


def create_store(index_dir: str | Path | None, dim: int, *, settings=None, info: dict | None = None,
                 backend: str = "faiss") -> VectorStore:
    """An empty store whose `commit()` replaces what `index_dir` holds (None: in memory, where the
    backend allows). `settings`: the backend's own (FAISS: `IndexSettings`)."""
    return backend_class(backend).create(index_dir, dim, settings, info)


__all__ = ["BACKENDS", "CorruptIndex", "IndexNotFound", "IndexStoreError", "Matches", "NonFiniteVectors",
           "UnknownItem", "VectorStore", "backend_class", "create_store", "open_store"]

"""Search and recommendation over embeddings: shards -> a vector store (`backends/`) -> queries.

    from visembed.index import build_index, Searcher
    build_index("runs/demo", "builtin:emoji", "runs/demo-index")
    add_to_index("runs/demo-index", "more_photos/")  # later: new items, no rebuild
    Searcher.open("runs/demo-index").search_text("a red apple", k=5)

Names load on first use, so `visembed.index.backends` works without torch being imported.
"""

import importlib

_WHERE = {
    "build_index": "build", "add_to_index": "build", "AddReport": "build",
    "Searcher": "searcher", "Hit": "searcher",
    "VectorStore": "backends", "Matches": "backends", "open_store": "backends", "create_store": "backends",
    "IndexStoreError": "backends", "IndexNotFound": "backends", "CorruptIndex": "backends", "UnknownItem": "backends",
    "NonFiniteVectors": "backends",
    "FaissStore": "backends.faiss_store", "IndexSettings": "backends.faiss_kinds",
    "preference_vector": "recommend", "mmr": "recommend", "nearest_liked": "recommend", "recommend": "recommend",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'visembed.index' has no attribute {name!r}")
    return getattr(importlib.import_module(f"visembed.index.{_WHERE[name]}"), name)

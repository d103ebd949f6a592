"""A model and a vector store together: what the CLI and the HTTP service both ask questions of.
Everything here speaks ids; the store (`backends.VectorStore`) keeps how it finds them.

A long-lived searcher (the HTTP service) follows the index: `refresh()` asks the store for a
commit made since by another process (`index delete`, `index add`, a rebuild; for the FAISS folder
one `stat` of index.json) and swaps it in. Every query works on the one store it started with, so a
swap never mixes two commits in one answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from visembed.index.backends import IndexStoreError, UnknownItem, VectorStore, open_store
from visembed.index.query import combine, image_query, text_query
from visembed.index.recommend import recommend

log = logging.getLogger(__name__)


@dataclass
class Hit:
    id: str
    score: float
    caption: str
    path: str | None
    because: str | None = None  # recommendations: the liked item this result is closest to
    because_score: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class Searcher:
    def __init__(self, store: VectorStore, model, index_dir: str | Path):
        self.store, self.model = store, model
        self.index_dir = Path(index_dir).resolve()  # thumbnails live under it
        self._model_lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        self._reload_lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: str | Path, model_dir: str | Path | None = None, model_backend: str = "torch",
             model_quantize: str | None = None) -> Searcher:
        store = open_store(index_dir)
        model_dir = Path(model_dir or store.info.get("model_dir") or "")
        if not str(model_dir) or not model_dir.is_dir():
            raise IndexStoreError(f"the model folder {str(model_dir)!r} that made this index is not there; "
                                  "pass the model folder explicitly (--model)")
        import visembed

        model = visembed.load(model_dir, backend=model_backend, quantize=model_quantize)  # see visembed.api.load
        if model.embed_dim != store.dim:
            raise IndexStoreError(f"model {model_dir} makes {model.embed_dim}-d vectors but the index holds {store.dim}-d ones")
        return cls(store, model, index_dir)

    def set_search_threads(self, threads: int | None) -> None:
        """Threads one search may use (the store carries the setting over to newer commits)."""
        self.store.set_search_threads(threads)

    # ---- following the index -----------------------------------------------------------------

    def refresh(self) -> bool:
        """Swap in the commit made since the last look, if any; True when it did. A new commit
        that cannot be used (corrupt, other weights) is logged and the current store kept; the
        store offers each commit once, so it is not retried until another commit comes."""
        if not self._reload_lock.acquire(blocking=False):
            return False  # another request is loading it: answer from the current one meanwhile
        try:
            current = self.store
            try:
                fresh = current.newer()
                if fresh is None:
                    return False
                if fresh.dim != current.dim or (fresh.info.get("weights_sha256") or None) != (
                        current.info.get("weights_sha256") or None):
                    raise IndexStoreError("the new index was built with another model; restart the server with it")
            except IndexStoreError as exc:
                log.error("index in %s changed but cannot be loaded, still serving the previous one: %s",
                          self.index_dir, exc)
                return False
            self.store = fresh
            return True
        finally:
            self._reload_lock.release()

    # ---- queries -----------------------------------------------------------------------------

    def text_vector(self, text: str) -> np.ndarray:
        with self._model_lock:
            return text_query(self.model, text)

    def image_vector(self, image, text: str | None = None, text_weight: float = 0.5) -> np.ndarray:
        """An image, optionally moved towards a text modifier (composed query)."""
        with self._model_lock:
            vec = image_query(self.model, image)
            if text and text.strip():
                vec = combine(vec, text_query(self.model, text), text_weight)
        return vec

    def search_vector(self, vector: np.ndarray, k: int = 10, exclude_ids: Sequence[str] = ()) -> list[Hit]:
        """Nearest items to `vector` (D,); an unknown or deleted id in `exclude_ids` raises `UnknownItem`."""
        store = self.store
        for item_id in exclude_ids:
            if item_id not in store:
                raise UnknownItem(f"no item with id {item_id!r} in the index")
        (found,) = store.search(vector[None], k, exclude_ids=exclude_ids)
        return _hits(store, found.ids, found.scores)

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        return self.search_vector(self.text_vector(text), k)

    def search_image(self, image, k: int = 10, text: str | None = None, text_weight: float = 0.5) -> list[Hit]:
        return self.search_vector(self.image_vector(image, text, text_weight), k)

    def similar(self, item_id: str, k: int = 10) -> list[Hit]:
        """"More like this": the item's own vector as the query, the item itself left out."""
        store = self.store
        (found,) = store.search(store.vectors([item_id]), k, exclude_ids=[item_id])
        return _hits(store, found.ids, found.scores)

    def recommend(self, liked: Sequence[str], disliked: Sequence[str] = (), k: int = 10, lam: float = 0.7) -> list[Hit]:
        store = self.store
        recs = recommend(store, liked, disliked, k, lam=lam)
        return _hits(store, [r.id for r in recs], [r.score for r in recs],
                     because=[r.because for r in recs], because_scores=[r.because_score for r in recs])

    # ---- item images -------------------------------------------------------------------------

    def item(self, item_id: str) -> dict:
        """The live item's metadata; `UnknownItem` for an unknown or deleted id."""
        return self.store.meta([item_id])[0]

    def image_file(self, item_id: str) -> Path | None:
        """The item's original image file, if the data had one and it is still there."""
        path = self.item(item_id).get("path")
        try:
            return Path(path) if path and Path(path).is_file() else None
        except OSError:  # a path the file system refuses (too long, no permission): no original
            return None

    def thumbnail(self, item_id: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of the thumbnail stored at build time, or None when it is gone
        (the `embeddings/` folder deleted to save space, a truncated file)."""
        ref = self.item(item_id).get("thumb")
        if not ref:
            return None
        rel, offset, length = ref
        path = (self.index_dir / rel).resolve()
        if not path.is_relative_to(self.index_dir):  # metadata is ours, but never read outside the index
            return None
        try:
            with open(path, "rb") as f:
                f.seek(int(offset))
                data = f.read(int(length))
        except OSError:
            return None
        if len(data) != int(length):
            return None
        return data, "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"


def _hits(store: VectorStore, ids: Sequence[str], scores: Sequence[float], because: Sequence[str] | None = None,
          because_scores: Sequence[float] | None = None) -> list[Hit]:
    because = because or [None] * len(ids)
    because_scores = because_scores or [None] * len(ids)
    return [Hit(item["id"], float(score), item.get("caption", ""), item.get("path"), why, why_score)
            for item, score, why, why_score in zip(store.meta(ids), scores, because, because_scores)]

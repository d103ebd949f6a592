"""A model and an index together: what the CLI and the HTTP service both ask questions of.

A long-lived searcher (the HTTP service) follows the index folder: `refresh()` compares index.json's
file identity (inode, size, mtime) with the one it loaded, one `stat`, and when another process
committed a new generation (`index delete`, `index add`, a rebuild) it opens that one and swaps it
in. Every query works on the one index it started with, so a swap never mixes two generations'
row numbers in one answer.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from visembed.index.query import combine, image_query, text_query
from visembed.index.recommend import recommend
from visembed.index.store import IndexStoreError, VectorIndex

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
    def __init__(self, index: VectorIndex, model, index_dir: str | Path):
        self.index, self.model = index, model
        self.index_dir = Path(index_dir).resolve()
        self._model_lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        self._reload_lock = threading.Lock()
        self._stamp = self._manifest_stamp()

    @classmethod
    def open(cls, index_dir: str | Path, model_dir: str | Path | None = None) -> Searcher:
        index = VectorIndex.open(index_dir)
        model_dir = Path(model_dir or index.info.get("model_dir") or "")
        if not str(model_dir) or not model_dir.is_dir():
            raise IndexStoreError(f"the model folder {str(model_dir)!r} that made this index is not there; "
                                  "pass the model folder explicitly (--model)")
        import visembed

        model = visembed.load(model_dir)
        if model.embed_dim != index.dim:
            raise IndexStoreError(f"model {model_dir} makes {model.embed_dim}-d vectors but the index holds {index.dim}-d ones")
        return cls(index, model, index_dir)

    # ---- following the folder ----------------------------------------------------------------

    def _manifest_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.index_dir / "index.json")
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns  # index.json is replaced atomically: a new inode

    def refresh(self) -> bool:
        """Swap in the generation committed since the last look, if any; True when it did. A new
        generation that cannot be used (corrupt, other weights) is logged and the current index
        kept; it is not retried until index.json changes again."""
        stamp = self._manifest_stamp()
        if stamp == self._stamp or stamp is None:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False  # another request is loading it: answer from the current one meanwhile
        try:
            current = self.index
            try:
                fresh = current.reopened(self.index_dir)
                if fresh.dim != current.dim or (fresh.info.get("weights_sha256") or None) != (
                        current.info.get("weights_sha256") or None):
                    raise IndexStoreError("the new index was built with another model; restart the server with it")
            except IndexStoreError as exc:
                log.error("index in %s changed but cannot be loaded, still serving the previous one: %s",
                          self.index_dir, exc)
                self._stamp = stamp
                return False
            fresh.search_threads = current.search_threads
            self.index, self._stamp = fresh, stamp
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
        index = self.index
        scores, rows = index.search(vector[None], k, exclude_rows=index.rows(exclude_ids))
        return [_hit(index, int(r), float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        return self.search_vector(self.text_vector(text), k)

    def search_image(self, image, k: int = 10, text: str | None = None, text_weight: float = 0.5) -> list[Hit]:
        return self.search_vector(self.image_vector(image, text, text_weight), k)

    def similar(self, item_id: str, k: int = 10) -> list[Hit]:
        """"More like this": the item's own vector as the query, the item itself left out."""
        index = self.index
        row = index.rows([item_id])[0]
        scores, rows = index.search(index.vectors[row][None], k, exclude_rows=[row])
        return [_hit(index, int(r), float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]

    def recommend(self, liked: Sequence[str], disliked: Sequence[str] = (), k: int = 10, lam: float = 0.7) -> list[Hit]:
        index = self.index
        recs = recommend(index, liked, disliked, k, lam=lam)
        return [_hit(index, r.row, r.score, because_row=r.because_row, because_score=r.because_score) for r in recs]

    # ---- item images -------------------------------------------------------------------------

    def item(self, item_id: str) -> dict:
        """The live item's metadata; `UnknownItem` for an unknown or deleted id."""
        return self.index.item(item_id)

    def image_file(self, item_id: str) -> Path | None:
        """The item's original image file, if the data had one and it is still there."""
        path = self.index.item(item_id).get("path")
        try:
            return Path(path) if path and Path(path).is_file() else None
        except OSError:  # a path the file system refuses (too long, no permission): no original
            return None

    def thumbnail(self, item_id: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of the thumbnail stored at build time, or None when it is gone
        (the `embeddings/` folder deleted to save space, a truncated file)."""
        ref = self.index.item(item_id).get("thumb")
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


def _hit(index: VectorIndex, row: int, score: float, because_row: int | None = None,
         because_score: float | None = None) -> Hit:
    item = index.items[row]
    because = index.items[because_row]["id"] if because_row is not None else None
    return Hit(item["id"], score, item.get("caption", ""), item.get("path"), because, because_score)

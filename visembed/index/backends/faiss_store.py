"""The FAISS backend of `VectorStore`: an index folder of numbered generations.

    INDEX_DIR/index.json              {"format": "visembed-index/1", "generation", "kind", "dim", "count", "live",
                                       "files", "deleted", "settings", ...info}
    INDEX_DIR/index.00003.faiss       the FAISS index: row i is the i-th item ever added
    INDEX_DIR/vectors.00003.npy       float32 (count, dim), kept for exact re-scoring and for `vectors(ids)`
    INDEX_DIR/items.00003.jsonl       one metadata dict per row, "id" first

Ids map to rows inside this module only. Deletion is a tombstone (a row number in index.json's
"deleted") filtered out inside the FAISS search by an ID selector, so it works the same for every
index kind, including HNSW, which cannot remove vectors; an id deleted and added again gets a new
row. Every commit writes a new generation of data files (unless only tombstones or `info` changed)
and then atomically replaces index.json, which names them: a crash at any moment leaves the
previous commit intact. Folders written before the store had this name open unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from visembed.atomic import atomic_write, atomic_write_json, atomic_write_npy, atomic_write_text
from visembed.index.backends.base import (
    CorruptIndex, IndexNotFound, IndexStoreError, Matches, UnknownItem, checked_items, checked_queries, checked_vectors,
    file_stamp, read_index_file,
)
from visembed.index.backends.faiss_kinds import IndexSettings, new_faiss_index, search_params

FORMAT = "visembed-index/1"
_MANIFEST_KEYS = ("format", "generation", "kind", "dim", "count", "live", "files", "deleted", "settings")
_GENERATION_FILE = re.compile(r"^(index|vectors|items)\.\d{5,}\.(faiss|npy|jsonl)$")


class FaissStore:
    """A `VectorStore` kept in memory (FAISS index, vectors, metadata, tombstones) and committed to
    `directory`. `create` starts an empty one, `open` reads the committed generation."""

    def __init__(self, directory: str | Path | None, dim: int, settings: IndexSettings | None = None,
                 info: dict | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.settings = settings or IndexSettings()
        self.info = dict(info or {})
        self.kind: str | None = None  # chosen by the first `add` (or the commit of an empty store)
        self.faiss_index: faiss.Index | None = None
        self._dim = int(dim)
        self._vectors = np.zeros((0, self._dim), np.float32)  # (rows, dim), L2-normalised
        self._items: list[dict] = []  # one per row
        self._row_of: dict[str, int] = {}  # id -> its newest row
        self._deleted: set[int] = set()  # tombstoned rows
        self._saved_files: dict | None = None  # the data files in `directory` that still match memory
        self._stamp: tuple | None = None  # index.json's identity when this generation was read or written
        self._search_threads: int | None = None
        self._shares_index = False  # True when a store from `newer()` holds the same FAISS index

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path | None, dim: int, settings: IndexSettings | None = None,
               info: dict | None = None) -> FaissStore:
        """An empty store whose `commit` writes the next generation of `directory` (replacing what
        is committed there); `directory=None` keeps it in memory (tests, benchmarks). The first
        `add` chooses the index kind from its count (`settings.resolve_kind`) and trains it on its
        vectors: add everything at once when building."""
        return cls(directory, dim, settings, info)

    @classmethod
    def open(cls, directory: str | Path) -> FaissStore:
        """The generation committed in `directory`; `IndexNotFound`/`CorruptIndex` with a sentence."""
        directory = Path(directory)
        stamp = _manifest_stamp(directory)  # before reading: a commit in between is seen as newer
        manifest = _read_manifest(directory)
        try:
            files = manifest["files"]
            settings = IndexSettings(**manifest["settings"])
            dim, count = int(manifest["dim"]), int(manifest["count"])
            deleted = [int(r) for r in manifest["deleted"]]
            kind = manifest["kind"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndex(f"{directory / 'index.json'} is incomplete or malformed ({exc!r})") from None
        try:
            faiss_index = faiss.read_index(str(directory / files["faiss"]))
            vectors = np.load(directory / files["vectors"], allow_pickle=False)
            with open(directory / files["items"], encoding="utf-8") as f:
                items = [json.loads(line) for line in f]
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            raise CorruptIndex(f"cannot read the index files in {directory}: {str(exc).splitlines()[0][:200]}") from None
        problems = []
        if faiss_index.ntotal != count or len(items) != count or vectors.shape != (count, dim):
            problems.append(f"expected {count} items of dimension {dim}, found faiss={faiss_index.ntotal}, "
                            f"vectors={vectors.shape}, metadata={len(items)}")
        if faiss_index.d != dim:
            problems.append(f"faiss index has dimension {faiss_index.d}, not {dim}")
        if any(not 0 <= r < count for r in deleted):
            problems.append("tombstones point outside the index")
        if problems:
            raise CorruptIndex(f"index in {directory} is inconsistent: {'; '.join(problems)}")
        store = cls(directory, dim, settings, _info(manifest))
        store._load(faiss_index, vectors.astype(np.float32, copy=False), items, kind, deleted)
        store._saved_files, store._stamp = dict(files), stamp
        return store

    def _load(self, faiss_index, vectors: np.ndarray, items: list[dict], kind: str, deleted: Iterable[int]) -> None:
        self.faiss_index, self._vectors, self._items, self.kind = faiss_index, vectors, items, kind
        self._row_of = {item["id"]: row for row, item in enumerate(items)}
        self._deleted = set(int(r) for r in deleted)

    def newer(self) -> FaissStore | None:
        """The generation committed since this one was read (one `stat` of index.json when there is
        none). When only tombstones or `info` changed (`index delete`), the new store shares this
        one's FAISS index, vectors and metadata instead of reading them again."""
        if self.directory is None:
            return None
        stamp = _manifest_stamp(self.directory)
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp  # offered once, even when it cannot be read
        fresh = self._reopened(stamp)
        fresh._search_threads = self._search_threads
        return fresh

    def _reopened(self, stamp: tuple) -> FaissStore:
        manifest = _read_manifest(self.directory)
        if self._saved_files is None or manifest.get("files") != self._saved_files:
            return FaissStore.open(self.directory)
        try:
            deleted = [int(r) for r in manifest["deleted"]]
            settings = IndexSettings(**manifest["settings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndex(f"{self.directory / 'index.json'} is incomplete or malformed ({exc!r})") from None
        count = len(self._items)
        if int(manifest.get("count", -1)) != count or any(not 0 <= r < count for r in deleted):
            raise CorruptIndex(f"index in {self.directory} is inconsistent: tombstones do not fit its {count} items")
        fresh = FaissStore(self.directory, self._dim, settings, _info(manifest))
        fresh.faiss_index, fresh._vectors, fresh._items, fresh.kind = self.faiss_index, self._vectors, self._items, self.kind
        fresh._row_of, fresh._deleted = self._row_of, set(deleted)
        fresh._saved_files, fresh._stamp = self._saved_files, stamp
        fresh._shares_index = self._shares_index = True
        return fresh

    # ---- what it holds ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._items) - len(self._deleted)

    def __contains__(self, item_id: object) -> bool:
        row = self._row_of.get(item_id)  # type: ignore[arg-type]
        return row is not None and row not in self._deleted

    def ids(self) -> list[str]:
        return [self._items[row]["id"] for row in self._live_rows()]

    def deleted_ids(self) -> set[str]:
        return {self._items[row]["id"] for row in self._deleted} - {i for i in self._row_of if i in self}

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        return self._vectors[self._rows(ids)]

    def meta(self, ids: Sequence[str]) -> list[dict]:
        return [dict(self._items[row]) for row in self._rows(ids)]

    def _live_rows(self) -> np.ndarray:
        alive = np.ones(len(self._items), dtype=bool)
        alive[list(self._deleted)] = False
        return np.flatnonzero(alive)

    def _rows(self, ids: Iterable[str]) -> list[int]:
        """Rows of live items; an unknown or deleted id raises `UnknownItem`."""
        rows = []
        for item_id in ids:
            if item_id not in self:
                raise UnknownItem(f"no item with id {item_id!r} in the index")
            rows.append(self._row_of[item_id])
        return rows

    # ---- changes ------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: np.ndarray, meta: Sequence[dict]) -> None:
        vectors = checked_vectors(vectors, self._dim)
        items = checked_items(ids, vectors, meta, self)
        if not items:
            return
        if self.faiss_index is None:
            self.kind = self.settings.resolve_kind(len(vectors))
            self.faiss_index = new_faiss_index(self.kind, self._dim, vectors, self.settings)
        elif self._shares_index:  # copy on write: the other store keeps answering from its own rows
            self.faiss_index, self._shares_index = faiss.clone_index(self.faiss_index), False
        start = len(self._items)
        self.faiss_index.add(vectors)  # row numbers continue: new rows are start .. start + n - 1
        self._vectors = vectors if start == 0 else np.concatenate([self._vectors, vectors])
        self._items = self._items + items  # a new list: a store from `newer()` may share the old one
        self._row_of = {**self._row_of, **{item["id"]: start + i for i, item in enumerate(items)}}
        self._saved_files = None

    def delete(self, ids: Sequence[str]) -> int:
        rows = self._rows(ids)
        self._deleted.update(rows)
        return len(set(rows))

    def set_search_threads(self, threads: int | None) -> None:
        self._search_threads = threads

    @property
    def search_threads(self) -> int | None:
        """OpenMP threads per FAISS search; None = FAISS's default (every core)."""
        return self._search_threads

    # ---- search -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, exclude_ids: Sequence[str] = ()) -> list[Matches]:
        queries = checked_queries(queries, self._dim, k)
        hidden = self._deleted.union(self._row_of[i] for i in exclude_ids if i in self)
        scores, rows = self._search_rows(queries, k, hidden)
        found = rows >= 0  # (Q, k); the hits come first, -1 pads the rest
        return [Matches([self._items[r]["id"] for r in row[keep]], score[keep])
                for row, score, keep in zip(rows, scores, found)]

    def _search_rows(self, queries: np.ndarray, k: int, hidden: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query: scores (Q, k) and rows (Q, k), -1 where fewer match."""
        fetch = min(k * (self.settings.rerank if self.kind == "ivfpq" else 1), len(self._items))
        if fetch == 0:
            return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
        params, keep_alive = search_params(self.kind, self.settings, hidden)
        if self._search_threads:  # libgomp keeps this per thread: set it in the thread that searches
            faiss.omp_set_num_threads(self._search_threads)
        scores, rows = self.faiss_index.search(queries, fetch, params=params)
        del keep_alive
        if self.kind == "ivfpq":  # PQ scores are approximate: re-score the candidates exactly
            exact = np.einsum("qcd,qd->qc", self._vectors[np.maximum(rows, 0)], queries)
            exact[rows < 0] = -np.inf
            order = np.argsort(-exact, axis=1)
            rows = np.take_along_axis(rows, order, axis=1)
            scores = np.take_along_axis(exact, order, axis=1)
        scores, rows = scores[:, :k], rows[:, :k]
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)))
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.where(rows < 0, 0.0, scores).astype(np.float32)
        return scores, rows

    # ---- committing ---------------------------------------------------------------------------

    def commit(self) -> None:
        """Write a new generation of data files (only index.json when just tombstones or `info`
        changed), then switch `index.json` to it atomically and remove the files it no longer names."""
        if self.directory is None:
            raise IndexStoreError("this store lives in memory only: create it with a folder to commit it")
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        if self.faiss_index is None:  # nothing was ever added: an empty index of the kind asked for
            kind = self.settings.resolve_kind(0)
            self.kind = "flat" if kind == "ivfpq" else kind  # IVF-PQ cannot be trained on nothing
            self.faiss_index = new_faiss_index(self.kind, self._dim, self._vectors, self.settings)
        old = _read_manifest(directory) if (directory / "index.json").exists() else None
        generation = int((old or {}).get("generation", 0)) + 1
        files = self._saved_files
        if files is None:
            files = {
                "faiss": f"index.{generation:05d}.faiss",
                "vectors": f"vectors.{generation:05d}.npy",
                "items": f"items.{generation:05d}.jsonl",
            }
            atomic_write(directory / files["faiss"], lambda tmp: faiss.write_index(self.faiss_index, tmp))
            atomic_write_npy(directory / files["vectors"], self._vectors)
            atomic_write_text(directory / files["items"],
                              "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self._items))
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "kind": self.kind,
            "dim": self._dim,
            "count": len(self._items),
            "live": len(self),
            "files": files,
            "deleted": sorted(self._deleted),
            "settings": dataclasses.asdict(self.settings),
            **self.info,
        }
        atomic_write_json(directory / "index.json", manifest, indent=1)
        _remove_stale_generations(directory, set(files.values()))
        self._saved_files, self._stamp = dict(files), _manifest_stamp(directory)


def _info(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}


def _manifest_stamp(directory: Path) -> tuple | None:
    return file_stamp(directory / "index.json")


def _read_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise IndexNotFound(f"no index at {directory}: the folder does not exist (build one with `visembed index build`)")
    return read_index_file(directory, "index.json", FORMAT, "a visembed index")


def _remove_stale_generations(directory: Path, keep: set[str]) -> None:
    for path in directory.iterdir():
        if _GENERATION_FILE.match(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)

"""A FAISS index plus the metadata that turns its row numbers back into items.

Row `i` of the FAISS index is row `i` of `vectors` and of `items`; public ids are the dataset's
string ids. Deletion is a tombstone filtered out inside the FAISS search (an ID selector), so it
works the same for every index kind, including HNSW, which cannot remove vectors.

On disk, every save writes a new *generation* of data files and then atomically replaces
`index.json`, which names them: a crash at any moment leaves the previous index intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from visembed.atomic import atomic_write, atomic_write_json, atomic_write_npy, atomic_write_text

FORMAT = "visembed-index/1"


class IndexStoreError(Exception):
    """Any problem with an index folder; the message is meant for the user as it is."""


class IndexNotFound(IndexStoreError):
    pass


class CorruptIndex(IndexStoreError):
    pass


class UnknownItem(IndexStoreError, LookupError):
    pass


class NonFiniteVectors(IndexStoreError, ValueError):
    """NaN/inf vectors: a broken model. FAISS would index them and rank them anywhere."""


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
        if kind not in ("flat", "hnsw", "ivfpq"):
            raise ValueError(f"unknown index kind {kind!r} (choose flat, hnsw, ivfpq or auto)")
        return kind


def _new_faiss_index(kind: str, dim: int, train: np.ndarray, s: IndexSettings) -> faiss.Index:
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


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"expected vectors of shape (N, {dim or 'D'}), got {vectors.shape}")
    return vectors


def _refuse_non_finite(vectors: np.ndarray) -> None:
    bad = int((~np.isfinite(vectors)).any(axis=1).sum()) if vectors.size else 0
    if bad:
        raise NonFiniteVectors(f"{bad} of {len(vectors)} vectors contain NaN/inf: the model that made them is broken "
                               "(diverged training or corrupt weights); nothing was indexed")


class VectorIndex:
    """Vectors (N, D), one metadata dict per row (`id`, `caption`, `path`, ...) and tombstones."""

    def __init__(self, faiss_index: faiss.Index, vectors: np.ndarray, items: list[dict], kind: str,
                 settings: IndexSettings, info: dict | None = None, deleted: Iterable[int] = ()):
        self.faiss_index = faiss_index
        self.vectors = vectors  # (N, D) float32, L2-normalised; kept for reranking and recommendation
        self.items = items
        self.kind = kind
        self.settings = settings
        self.info = dict(info or {})  # model_dir, data_spec, ...: travels in index.json
        self.deleted = set(int(r) for r in deleted)
        self.row_of = {item["id"]: row for row, item in enumerate(items)}
        self._saved: tuple[Path, dict] | None = None  # data files on disk that still match memory
        self.search_threads: int | None = None  # OpenMP threads per FAISS search; None = FAISS's default

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, items: list[dict], settings: IndexSettings | None = None,
              info: dict | None = None) -> VectorIndex:
        settings = settings or IndexSettings()
        vectors = _as_matrix(vectors)
        _refuse_non_finite(vectors)
        if len(items) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(items)} items")
        ids = [item["id"] for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids are not unique")
        kind = settings.resolve_kind(len(vectors))
        index = _new_faiss_index(kind, vectors.shape[1], vectors, settings)
        index.add(vectors)
        return cls(index, vectors, [dict(item) for item in items], kind, settings, info)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.items) - len(self.deleted)

    def __contains__(self, item_id: str) -> bool:
        row = self.row_of.get(item_id)
        return row is not None and row not in self.deleted

    def live_rows(self) -> np.ndarray:
        alive = np.ones(len(self.items), dtype=bool)
        alive[list(self.deleted)] = False
        return np.flatnonzero(alive)

    def rows(self, ids: Iterable[str]) -> list[int]:
        """Rows of live items; an unknown or deleted id raises `UnknownItem`."""
        out = []
        for item_id in ids:
            if item_id not in self:
                raise UnknownItem(f"no item with id {item_id!r} in the index")
            out.append(self.row_of[item_id])
        return out

    def item(self, item_id: str) -> dict:
        return self.items[self.rows([item_id])[0]]

    # ---- changes without a rebuild ---------------------------------------------------------

    def add(self, vectors: np.ndarray, items: list[dict]) -> None:
        vectors = _as_matrix(vectors, self.dim)
        _refuse_non_finite(vectors)
        if len(items) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(items)} items")
        new_ids = [item["id"] for item in items]
        clash = [i for i in new_ids if i in self.row_of and self.row_of[i] not in self.deleted]
        if clash or len(set(new_ids)) != len(new_ids):
            raise ValueError(f"item ids already in the index or repeated: {(clash or new_ids)[:5]}")
        start = len(self.items)
        self.faiss_index.add(vectors)  # row numbers continue: new rows are start .. start + n - 1
        self.vectors = np.concatenate([self.vectors, vectors])
        for offset, item in enumerate(items):
            self.items.append(dict(item))
            self.row_of[item["id"]] = start + offset
        self._saved = None

    def delete(self, ids: Iterable[str]) -> int:
        rows = self.rows(ids)
        self.deleted.update(rows)
        return len(set(rows))

    # ---- search -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, exclude_rows: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query: scores (Q, k) and rows (Q, k), -1 where fewer match."""
        queries = _as_matrix(queries, self.dim)
        if k < 1:
            raise ValueError("k must be at least 1")
        hidden = self.deleted.union(int(r) for r in exclude_rows)
        fetch = min(k * (self.settings.rerank if self.kind == "ivfpq" else 1), len(self.items))
        if fetch == 0:
            return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
        params, keep_alive = self._search_params(hidden)
        if self.search_threads:  # libgomp keeps this per thread: set it in the thread that searches
            faiss.omp_set_num_threads(self.search_threads)
        scores, rows = self.faiss_index.search(queries, fetch, params=params)
        del keep_alive
        if self.kind == "ivfpq":  # PQ scores are approximate: re-score the candidates exactly
            exact = np.einsum("qcd,qd->qc", self.vectors[np.maximum(rows, 0)], queries)
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

    def _search_params(self, hidden: set[int]) -> tuple[faiss.SearchParameters, tuple]:
        """Search parameters that skip `hidden` rows, and the objects they point to (keep them alive)."""
        selector, keep_alive = None, ()
        if hidden:
            batch = faiss.IDSelectorBatch(np.fromiter(hidden, dtype=np.int64))
            selector = faiss.IDSelectorNot(batch)
            keep_alive = (batch, selector)  # faiss holds raw pointers to these
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.settings.hnsw_ef_search)
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.settings.ivf_nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        return params, keep_alive

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write a new generation of data files, then switch `index.json` to it atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        old = _read_manifest(directory) if (directory / "index.json").exists() else None
        generation = int((old or {}).get("generation", 0)) + 1
        if self._saved and self._saved[0] == directory.resolve():
            files = dict(self._saved[1])  # only tombstones changed: the data files are still valid
        else:
            files = {
                "faiss": f"index.{generation:05d}.faiss",
                "vectors": f"vectors.{generation:05d}.npy",
                "items": f"items.{generation:05d}.jsonl",
            }
            atomic_write(directory / files["faiss"], lambda tmp: faiss.write_index(self.faiss_index, tmp))
            atomic_write_npy(directory / files["vectors"], self.vectors)
            atomic_write_text(directory / files["items"],
                              "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.items))
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self.items),
            "live": len(self),
            "files": files,
            "deleted": sorted(self.deleted),
            "settings": dataclasses.asdict(self.settings),
            **self.info,
        }
        atomic_write_json(directory / "index.json", manifest, indent=1)
        _remove_stale_generations(directory, set(files.values()))
        self._saved = (directory.resolve(), files)
        return directory

    @classmethod
    def open(cls, directory: str | Path) -> VectorIndex:
        directory = Path(directory)
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
        info = {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}
        index = cls(faiss_index, vectors.astype(np.float32, copy=False), items, kind, settings, info, deleted)
        index._saved = (directory.resolve(), dict(files))
        return index


    def reopened(self, directory: str | Path) -> VectorIndex:
        """The generation now committed in `directory` (which this index was opened from or saved
        to). When only tombstones or metadata changed (`index delete`: same data files), the new
        index shares this one's FAISS index, vectors and items instead of reading them again; a
        long-running reader (the HTTP service) follows deletions at the cost of reading index.json."""
        directory = Path(directory)
        manifest = _read_manifest(directory)
        files = manifest.get("files")
        if not (self._saved and self._saved[0] == directory.resolve() and files == self._saved[1]):
            return VectorIndex.open(directory)
        try:
            deleted = [int(r) for r in manifest["deleted"]]
            settings = IndexSettings(**manifest["settings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndex(f"{directory / 'index.json'} is incomplete or malformed ({exc!r})") from None
        if int(manifest.get("count", -1)) != len(self.items) or any(not 0 <= r < len(self.items) for r in deleted):
            raise CorruptIndex(f"index in {directory} is inconsistent: tombstones do not fit its {len(self.items)} items")
        info = {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}
        index = VectorIndex(self.faiss_index, self.vectors, self.items, self.kind, settings, info, deleted)
        index._saved = self._saved
        return index


_MANIFEST_KEYS = ("format", "generation", "kind", "dim", "count", "live", "files", "deleted", "settings")


def _read_manifest(directory: Path) -> dict:
    path = directory / "index.json"
    if not directory.is_dir():
        raise IndexNotFound(f"no index at {directory}: the folder does not exist (build one with `visembed index build`)")
    if not path.is_file():
        raise IndexNotFound(f"no index at {directory}: index.json is missing (build one with `visembed index build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptIndex(f"{path} is not valid JSON ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptIndex(f"{path} is not a visembed index (expected format {FORMAT!r})")
    return manifest


_GENERATION_FILE = re.compile(r"^(index|vectors|items)\.\d{5,}\.(faiss|npy|jsonl)$")


def _remove_stale_generations(directory: Path, keep: set[str]) -> None:
    for path in directory.iterdir():
        if _GENERATION_FILE.match(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)

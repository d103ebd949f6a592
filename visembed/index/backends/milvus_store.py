"""The Milvus backend of `VectorStore`: items in a Milvus collection, the index folder keeps a pointer.

    --store milvus:PATH.db              Milvus Lite: a local file (folder), no server, one process at a time
    --store milvus://HOST:PORT[/NAME]   a Milvus standalone or cluster (http:// and https:// alike)

    INDEX_DIR/store.json   {"backend": "milvus", "uri", "collection", "commit", "kind", "dim", "live",
                            "next_seq", "deleted", "settings", ...info}
    INDEX_DIR/embeddings/  the shards and thumbnails, as for the FAISS folder

One row per item: `pk` (the id), `vec` (float32, inner-product metric on L2-normalised vectors),
`meta` (JSON), `seq` (add order) and `added` (the commit that added it). The same code talks to
Milvus Lite and to a server: pymilvus's `MilvusClient` takes a file path or a URI.

Commits, as the protocol asks (`base.py`):
- A build (`create` then `commit`) writes a new *generation*: a fresh collection `NAME_gNNNNN`,
  filled, indexed and loaded before store.json switches to it atomically; the old one is dropped
  after. A crash leaves the previous generation serving.
- An opened store buffers `add`/`delete` in memory (its own searches see them at once, exactly).
  `commit` inserts the new rows tagged `added = commit + 1`, which readers of older commits filter
  out (`added <= commit`), deletes the removed rows, then switches store.json. Deletions reach the
  server before store.json switches (a reader of the older commit on a server stops seeing them a
  moment early); rows of a commit that crashed before switching stay invisible and are purged by
  the next commit.
- Ids deleted and not added back are listed in store.json, so a rebuild leaves them out.

Milvus Lite allows one process per file: a second process (a second writer, or `index delete`
while `serve` holds the file) gets `IndexStoreError` with a sentence saying so, never a hang. A
server address that does not answer fails after `settings.timeout` seconds, in one line. Live ids
and their add order are held in memory (as the FAISS folder holds its metadata); vectors and
metadata stay in Milvus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visembed.atomic import atomic_write_json
from visembed.index.backends.base import (
    CorruptIndex, IndexStoreError, Matches, UnknownItem, checked_items, checked_queries, checked_vectors, file_stamp,
    read_index_file,
)

POINTER = "store.json"
FORMAT = "visembed-milvus/1"
KINDS = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT", "ivf_sq8": "IVF_SQ8"}
MAX_LIMIT = 16_384  # Milvus answers at most this many hits per query
BATCH = 2_000  # rows per insert / get / query call (gRPC messages stay far below 64 MB at 2048-d)
_POINTER_KEYS = ("format", "backend", "uri", "collection", "commit", "kind", "dim", "live", "next_seq", "deleted",
                 "settings")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")


@dataclass
class MilvusSettings:
    uri: str = ""  # a Milvus Lite file path (*.db) or http(s)://HOST:PORT
    collection: str = ""  # base collection name; "" = derived from the index folder
    kind: str = "auto"  # auto, flat, hnsw, ivf_flat or ivf_sq8
    exact_below: int = 20_000  # auto: FLAT (exact) below this many items, `large_kind` above
    large_kind: str = "hnsw"  # hnsw, ivf_flat or ivf_sq8
    compact_above: int = 50_000_000  # auto with large_kind hnsw: IVF_SQ8 (a quarter of the memory) above this
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0 = about 4 * sqrt(N)
    ivf_nprobe: int = 32
    timeout: float = 10.0  # seconds to reach a server before giving up

    def resolve_kind(self, n: int) -> str:
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n < self.exact_below else self.large_kind
            kind = "ivf_sq8" if kind == "hnsw" and n >= self.compact_above else kind
        if kind not in KINDS:
            raise ValueError(f"unknown Milvus index kind {kind!r} (choose auto, {', '.join(KINDS)})")
        return kind

    @classmethod
    def from_spec(cls, spec: str, **knobs) -> MilvusSettings:
        """`milvus:PATH.db` (Milvus Lite) or `milvus://HOST:PORT[/COLLECTION]` / `http(s)://...`."""
        lite = spec.startswith("milvus:") and not spec.startswith("milvus://")
        if lite:
            path = spec[len("milvus:"):]
            if not path.endswith(".db"):
                raise ValueError(f"--store {spec!r}: a Milvus Lite file ends in .db (milvus:PATH.db)")
            return cls(uri=str(Path(path).expanduser().resolve()), **knobs)
        scheme, sep, rest = spec.partition("://")
        if not sep or scheme not in ("milvus", "http", "https") or not rest.split("/")[0]:
            raise ValueError(f"--store {spec!r}: expected faiss, milvus:PATH.db or milvus://HOST:PORT[/COLLECTION]")
        address, _, collection = rest.partition("/")
        if collection and not _NAME.match(collection):
            raise ValueError(f"--store {spec!r}: a collection name is letters, digits and underscores")
        return cls(uri=f"{'https' if scheme == 'https' else 'http'}://{address}", collection=collection, **knobs)

    @property
    def is_lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))


def _quiet_libraries() -> None:
    """pymilvus and milvus_lite log a traceback to stderr for every failed call; ours carries the
    sentence the user needs, so theirs would only bury it."""
    for name in ("pymilvus", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # grpc's C core logs to stderr on its own (pymilvus's keepalive pings draw "too_many_pings" GOAWAY
    # lines from Milvus Lite's in-process server after an idle minute); read once, at grpc's import
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def connect(settings: MilvusSettings):
    """A `MilvusClient` for `settings.uri`; `IndexStoreError` with one sentence when it cannot be had."""
    _quiet_libraries()  # before pymilvus imports grpc
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise IndexStoreError("the Milvus backend needs pymilvus and milvus-lite: pip install 'visembed[milvus]'") from None
    try:
        if settings.is_lite:
            Path(settings.uri).parent.mkdir(parents=True, exist_ok=True)
            return MilvusClient(settings.uri)
        return MilvusClient(uri=settings.uri, timeout=settings.timeout, token=os.environ.get("MILVUS_TOKEN", ""))
    except Exception as exc:  # pymilvus raises its own classes, and grpc's for a dead address
        if settings.is_lite:
            raise IndexStoreError(
                f"cannot open the Milvus Lite file {settings.uri}: another process has it open (Milvus Lite allows "
                "one process per file: stop the `visembed serve` or build using it, or use a Milvus server, "
                "--store milvus://HOST:PORT)") from None
        raise IndexStoreError(f"no Milvus server answers at {settings.uri} within {settings.timeout:g} s "
                              f"({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return str(text).splitlines()[0][:200] if text else type(exc).__name__


class MilvusStore:
    """A `VectorStore` whose committed items live in Milvus; `create` starts an empty generation,
    `open` follows the one store.json names."""

    def __init__(self, directory: str | Path | None, dim: int, settings: MilvusSettings | None = None,
                 info: dict | None = None):
        if directory is None:
            raise IndexStoreError("a Milvus store needs an index folder for its pointer (store.json)")
        self.directory = Path(directory)
        self.settings = settings or MilvusSettings()
        if not self.settings.uri:
            raise IndexStoreError("a Milvus store needs a location: --store milvus:PATH.db or milvus://HOST:PORT")
        self.settings.collection = self.settings.collection or default_collection(self.directory)
        self.info = dict(info or {})
        self.kind: str | None = None
        self._dim = int(dim)
        self._client = None
        self._collection: str | None = None  # the committed generation's collection; None before the first commit
        self._commit = 0  # store.json's commit number this object reads
        self._next_seq = 0
        self._committed: dict[str, int] = {}  # live committed id -> seq, in add order
        self._pending: dict[str, tuple[np.ndarray, dict]] = {}  # added since the last commit, in add order
        self._removed: set[str] = set()  # committed ids deleted since the last commit
        self._deleted: set[str] = set()  # ids deleted and not added back (store.json's "deleted")
        self._fresh = True  # created, not opened: the next commit writes a new generation
        self._stamp: tuple | None = None
        self._search_threads: int | None = None

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory, dim: int, settings: MilvusSettings | None = None, info: dict | None = None) -> MilvusStore:
        store = cls(directory, dim, settings, info)
        store._client = connect(store.settings)
        return store

    @classmethod
    def open(cls, directory: str | Path) -> MilvusStore:
        directory = Path(directory)
        stamp = _pointer_stamp(directory)
        pointer = read_pointer(directory)
        try:
            settings = MilvusSettings(**pointer["settings"])
            store = cls(directory, int(pointer["dim"]), settings, _info(pointer))
            store._collection, store._commit = str(pointer["collection"]), int(pointer["commit"])
            store._next_seq, store.kind = int(pointer["next_seq"]), str(pointer["kind"])
            store._deleted = {str(i) for i in pointer["deleted"]}
            live = int(pointer["live"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndex(f"{directory / POINTER} is incomplete or malformed ({exc!r})") from None
        store._client = connect(settings)
        store._check_collection()
        store._committed = store._read_ids()
        if len(store._committed) != live:
            raise CorruptIndex(f"the Milvus collection {store._collection} at {settings.uri} holds "
                               f"{len(store._committed)} items where {directory / POINTER} says {live}")
        store._fresh, store._stamp = False, stamp
        return store

    def _check_collection(self) -> None:
        """The collection store.json names must exist, hold vectors of our dimension and carry the
        fingerprint (weights' sha256) of the model this index was built with."""
        client = self._client
        try:
            if not client.has_collection(self._collection):
                raise CorruptIndex(f"the Milvus collection {self._collection} that {self.directory / POINTER} names "
                                   f"is not at {self.settings.uri}; rebuild the index")
            description = client.describe_collection(self._collection)
            found, owner = _vector_dim(description), _owner(description)
            if found != self._dim:
                raise IndexStoreError(f"the Milvus collection {self._collection} holds {found}-d vectors, not the "
                                      f"{self._dim}-d ones this index was built with (another model); rebuild the index")
            if owner.get("weights_sha256") != self.info.get("weights_sha256"):
                raise IndexStoreError(f"the Milvus collection {self._collection} at {self.settings.uri} was built by "
                                      f"another model (weights {str(owner.get('weights_sha256'))[:12]}, this index's "
                                      f"{str(self.info.get('weights_sha256'))[:12]}); rebuild the index")
            client.load_collection(self._collection)
        except IndexStoreError:
            raise
        except Exception as exc:
            raise IndexStoreError(f"Milvus at {self.settings.uri}: {_first_line(exc)}") from None

    def _read_ids(self) -> dict[str, int]:
        """Every committed live id with its seq, in add order (queried by seq windows: ids may hold
        any character, seq numbers are plain integers)."""
        found: list[tuple[int, str]] = []
        window = 10_000
        for low in range(0, self._next_seq, window):
            rows = self._call("query", self._collection, limit=window, output_fields=["pk", "seq"],
                              filter=f"added <= {self._commit} and seq >= {low} and seq < {low + window}")
            found += [(int(row["seq"]), str(row["pk"])) for row in rows]
        return {pk: seq for seq, pk in sorted(found)}

    def newer(self) -> MilvusStore | None:
        stamp = _pointer_stamp(self.directory)
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp  # offered once, even when it cannot be read
        fresh = MilvusStore.open(self.directory)
        fresh._search_threads = self._search_threads
        return fresh

    # ---- what it holds ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._committed) - len(self._removed) + len(self._pending)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._pending or (item_id in self._committed and item_id not in self._removed)

    def ids(self) -> list[str]:
        return [i for i in self._committed if i not in self._removed and i not in self._pending] + list(self._pending)

    def deleted_ids(self) -> set[str]:
        return set(self._deleted)

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        rows = self._rows(ids, ["vec"])
        out = np.zeros((len(ids), self._dim), np.float32)
        for i, item_id in enumerate(ids):
            out[i] = self._pending[item_id][0] if item_id in self._pending else rows[item_id]["vec"]
        return out

    def meta(self, ids: Sequence[str]) -> list[dict]:
        rows = self._rows(ids, ["meta"])
        return [{"id": i, **(self._pending[i][1] if i in self._pending else rows[i]["meta"])} for i in ids]

    def _rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict]:
        """Committed rows of `ids` by id (pending ones come from memory); `UnknownItem` for an id not live."""
        for item_id in ids:
            if item_id not in self:
                raise UnknownItem(f"no item with id {item_id!r} in the index")
        wanted = list(dict.fromkeys(i for i in ids if i not in self._pending))
        rows = {}
        for start in range(0, len(wanted), BATCH):
            for row in self._call("get", self._collection, ids=wanted[start : start + BATCH], output_fields=fields):
                rows[str(row["pk"])] = row
        missing = [i for i in wanted if i not in rows]
        if missing:
            raise CorruptIndex(f"the Milvus collection {self._collection} lost items {missing[:5]}; rebuild the index")
        return rows

    # ---- changes ------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: np.ndarray, meta: Sequence[dict]) -> None:
        vectors = checked_vectors(vectors, self._dim)
        items = checked_items(ids, vectors, meta, self)
        for item, vector in zip(items, vectors):
            fields = {k: v for k, v in item.items() if k != "id"}
            json.dumps(fields)  # Milvus stores JSON: refuse what it cannot hold now, not at commit
            self._pending[item["id"]] = (vector.copy(), fields)
            self._deleted.discard(item["id"])

    def delete(self, ids: Sequence[str]) -> int:
        for item_id in ids:
            if item_id not in self:
                raise UnknownItem(f"no item with id {item_id!r} in the index")
        for item_id in set(ids):
            if self._pending.pop(item_id, None) is None or item_id in self._committed:
                self._removed.add(item_id)
            self._deleted.add(item_id)
        return len(set(ids))

    def set_search_threads(self, threads: int | None) -> None:
        self._search_threads = threads  # Milvus searches in its own threads (or on its own machines)

    # ---- search -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, exclude_ids: Sequence[str] = ()) -> list[Matches]:
        queries = checked_queries(queries, self._dim, k)
        excluded = set(exclude_ids)
        hidden = self._committed.keys() & (self._removed | self._pending.keys() | excluded)  # in Milvus, not answers
        answers = [([], []) for _ in queries]
        visible = len(self._committed) - len(hidden)
        if self._collection is not None and visible > 0:
            fetch = min(k + len(hidden), MAX_LIMIT)  # hidden ids are dropped here, not in a filter string
            params = {"ef": max(self.settings.hnsw_ef_search, fetch)} if self.kind == "hnsw" else \
                {"nprobe": self.settings.ivf_nprobe} if self.kind in ("ivf_flat", "ivf_sq8") else {}
            found = self._call("search", self._collection, data=list(queries), limit=fetch, output_fields=["pk"],
                               filter=f"added <= {self._commit}", search_params={"metric_type": "IP", "params": params})
            for answer, hits in zip(answers, found):
                for hit in hits:
                    if hit["pk"] not in hidden:
                        answer[0].append(str(hit["pk"]))
                        answer[1].append(float(hit["distance"]))
        pending = [i for i in self._pending if i not in excluded]
        if pending:  # not in Milvus yet: scored exactly, here
            matrix = np.stack([self._pending[i][0] for i in pending])  # (P, dim)
            scores = queries @ matrix.T  # (Q, P)
            for answer, row in zip(answers, scores):
                answer[0].extend(pending)
                answer[1].extend(row.tolist())
        out = []
        for ids, scores in answers:
            order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
            out.append(Matches([ids[j] for j in order], np.asarray([scores[j] for j in order], np.float32)))
        return out

    # ---- committing ---------------------------------------------------------------------------

    def commit(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = read_pointer(self.directory) if (self.directory / POINTER).exists() else None
        commit = max(self._commit, int((previous or {}).get("commit", 0))) + 1
        old_collection = (previous or {}).get("collection")
        if self._fresh:
            self._collection = self._new_generation(commit)
        else:
            self._call("delete", self._collection, filter=f"added >= {commit}")  # a crashed commit's rows
        rows = []
        for item_id, (vector, fields) in self._pending.items():
            rows.append({"pk": item_id, "vec": vector, "meta": fields, "seq": self._next_seq, "added": commit})
            self._next_seq += 1
        removed = [i for i in self._removed if i in self._committed]
        if removed:
            for start in range(0, len(removed), BATCH):
                self._call("delete", self._collection, ids=removed[start : start + BATCH])
        for start in range(0, len(rows), BATCH):
            self._call("insert", self._collection, data=rows[start : start + BATCH])
        if rows or removed:  # seal the rows into an indexed segment: Milvus Lite scans unsealed ones row by row
            self._call("flush", self._collection)
        if self._fresh:
            self._call("load_collection", self._collection)  # after the inserts: the index is built over all rows
        for item_id in removed:
            self._committed.pop(item_id, None)
        for row in rows:
            self._committed.pop(row["pk"], None)
            self._committed[row["pk"]] = row["seq"]
        self._pending, self._removed, self._commit = {}, set(), commit
        pointer = {
            "format": FORMAT, "backend": "milvus", "uri": self.settings.uri, "collection": self._collection,
            "commit": commit, "kind": self.kind, "dim": self._dim, "live": len(self._committed),
            "next_seq": self._next_seq, "deleted": sorted(self._deleted), "settings": dataclasses.asdict(self.settings),
            **self.info,
        }
        atomic_write_json(self.directory / POINTER, pointer, indent=1)
        self._stamp = _pointer_stamp(self.directory)
        if self._fresh and old_collection and old_collection != self._collection:
            try:
                self._client.drop_collection(old_collection)  # the previous generation: nobody reads it now
            except Exception:
                pass  # already gone, or the server is busy: it is named nowhere
        self._fresh = False

    def _new_generation(self, commit: int) -> str:
        """An empty, indexed collection `BASE_gNNNNN` for the items of a build."""
        from pymilvus import DataType, MilvusClient

        n = len(self._pending)
        self.kind = self.settings.resolve_kind(n)
        name = f"{self.settings.collection}_g{commit:05d}"
        owner = {"index_dir": str(self.directory.resolve()), "weights_sha256": self.info.get("weights_sha256"),
                 "dim": self._dim}
        if self._call("has_collection", name):
            found = _owner(self._call("describe_collection", name))
            if found.get("index_dir") != owner["index_dir"]:
                raise IndexStoreError(f"the Milvus collection {name} at {self.settings.uri} belongs to another index "
                                      f"({found.get('index_dir') or 'not made by visembed'}); name another collection "
                                      "(milvus://HOST:PORT/NAME)")
            self._call("drop_collection", name)  # a build of this folder that crashed before its commit
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=65_535)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("added", DataType.INT64)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vec", index_type=KINDS[self.kind], metric_type="IP", params=self._index_params(n))
        self._call("create_collection", name, schema=schema, index_params=index,
                   properties={"visembed": json.dumps(owner)})
        return name

    def _index_params(self, n: int) -> dict:
        s = self.settings
        if self.kind == "hnsw":
            return {"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction}
        if self.kind in ("ivf_flat", "ivf_sq8"):
            return {"nlist": s.ivf_nlist or max(1, min(65_536, int(4 * np.sqrt(max(n, 1)))))}
        return {}

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as exc:
            raise IndexStoreError(f"Milvus at {self.settings.uri} refused {method}: {_first_line(exc)}") from None


def default_collection(directory: Path) -> str:
    """`visembed_<folder>_<hash of its path>`: index folders sharing one server never collide."""
    resolved = str(Path(directory).resolve())
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(resolved).name)[:40]
    return f"visembed_{stem}_{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def _vector_dim(description: dict) -> int | None:
    for field in description.get("fields", []):
        if field.get("name") == "vec":
            return int(field.get("params", {}).get("dim", -1))
    return None


def _owner(description: dict) -> dict:
    """What `_new_generation` recorded in a collection's properties ({} for one made elsewhere)."""
    try:
        owner = json.loads((description.get("properties") or {}).get("visembed", "{}"))
    except (TypeError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _info(pointer: dict) -> dict:
    return {k: v for k, v in pointer.items() if k not in _POINTER_KEYS}


def _pointer_stamp(directory: Path) -> tuple | None:
    return file_stamp(Path(directory) / POINTER)


def read_pointer(directory: Path) -> dict:
    return read_index_file(directory, POINTER, FORMAT, "a visembed Milvus index")

"""`build_index`: model folder + data spec -> a searchable index folder (resumable);
`add_to_index`: new samples into an existing index, without a rebuild.

A rebuild into an existing index folder (the way to resume, and to refresh an index after the
data changed) trusts nothing it cannot prove: shards are reused only when their content
fingerprint matches (see `embed`), rows that left the data leave the index, items deleted with
`index delete` stay deleted, items added with `index add` stay, and the shards of an `index add`
that never committed are neither read nor kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from visembed.data import SkipCounter, spec_roots
from visembed.index.embed import (
    ADDED_PREFIX, SHARD_SIZE, embed_dataset, embed_samples, read_shards, remove_unreferenced_shards, shard_stem,
)
from visembed.index.backends import POINTER, IndexStoreError, VectorStore, backend_of, create_store, open_store


def weights_sha256(model_dir: Path) -> str:
    """The weights' content, not their file's mtime: `train --resume` of a finished run or a second
    `visembed demo` rewrites identical weights, and the shards made with them stay valid."""
    from visembed.checkpoint import weights_path

    digest = hashlib.sha256()
    with open(weights_path(model_dir), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def quantized(model) -> dict:
    """{"quantize": "int8"} for a model whose encoders run quantised graphs, else {}: recorded with
    the vectors (a shard's source, an index's info) only then, so float indexes read as before."""
    kind = getattr(model, "quantize", None)
    return {"quantize": kind} if kind else {}


def _vector_kind(quantize) -> str:
    """How an index's vectors were made, for a message; a recorded value we never write (a tampered
    index.json) is named as unknown, not echoed."""
    if not quantize:
        return "float vectors (no --quantize)"
    return f"{quantize} vectors (--quantize {quantize})" if quantize == "int8" else "vectors of an unknown kind"


def build_index(model_dir: str | Path, data_spec: str, out_dir: str | Path, *, split: str | None = None,
                progress: bool = True, settings=None, language: str = "en",
                shard_size: int = SHARD_SIZE, batch_size: int = 64, keep_deletions: bool = True,
                backend: str = "faiss", model_backend: str = "torch", model_quantize: str | None = None) -> Path:
    """Embed every image of `data_spec` (split "all" unless told otherwise) with the model in
    `model_dir` and write an index to `out_dir`.

    Rerunning into the same folder resumes after a crash and refreshes the index after the data
    changed: finished shards whose rows and weights still match are reused, everything else is
    embedded again, and rows no longer in the data leave the index. What the committed index
    recorded is carried through: items added with `add_to_index` are kept (unless the data now
    holds the same id), and items deleted with `index delete` stay deleted. To bring deleted items
    back, rebuild with `keep_deletions=False` (or into a new folder).

    `backend` and `settings`: the store (`faiss` with `IndexSettings`, `milvus` with
    `MilvusSettings`). Under `torchrun` every rank embeds its own shards (shard i on rank
    i mod world, into the same `out_dir`: a shared folder across machines) and rank 0 alone builds
    the store once all shards are there; the other ranks return then (torchrun ends when rank 0 has
    committed). `model_backend` / `model_quantize`: how the encoders run (`visembed.load`'s
    `backend` / `quantize`); int8 vectors are recorded as such and never mixed with float ones."""
    import visembed
    from visembed import distributed
    from visembed.data import open_dataset

    split = split or "all"
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if not model_dir.is_dir():
        raise IndexStoreError(f"no model folder at {model_dir}")
    fingerprint = weights_sha256(model_dir)
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0 and backend == "milvus":  # a dead address or a Lite file in use: one line now, not after embedding
        from visembed.index.backends.milvus_store import connect

        connect(settings)
    previous = _committed_index(out_dir, fingerprint, backend) if rank == 0 else None  # Milvus Lite: one process
    model = visembed.load(model_dir, backend=model_backend, quantize=model_quantize)  # see visembed.api.load
    source = {"weights_sha256": fingerprint, "data_spec": data_spec, "split": split, "language": language,
              **quantized(model)}
    dataset = open_dataset(data_spec, split, language=language, need="nothing")  # captions optional
    report = embed_dataset(model, dataset, out_dir, source=source, shard_size=shard_size,
                           batch_size=batch_size, progress=progress and rank == 0, rank=rank, world=world)
    reused = distributed.reduce_number(report.reused_shards)
    distributed.barrier()  # every rank's shards are on disk
    if rank != 0:  # no wait for rank 0's build: a long one would outlast the process group's timeout
        return out_dir
    vectors, items, skipped = read_shards(out_dir, report.names)
    if getattr(dataset, "skipped", None) is not None:
        skipped.update(dataset.skipped)  # rows the source itself left out (missing files, empty captions)
    deleted_ids: set[str] = set()
    if previous is not None:
        vectors, items = _with_added_items(previous, vectors, items)
        if keep_deletions:
            deleted_ids = previous.deleted_ids()
    if not items:
        raise IndexStoreError(f"no usable images in {data_spec!r} ({skipped.summary()})")
    info = {"model_dir": str(model_dir), "weights_sha256": fingerprint, "data_spec": data_spec, "split": split,
            "language": language, "skipped": skipped.as_dict(), "reused_shards": reused,
            "data_roots": data_roots(data_spec), "data_roots_from": "specs", **quantized(model)}
    info["unserved_files"] = unserved_files(items, info["data_roots"])
    if previous is not None and previous.info.get("added"):
        info["added"] = previous.info["added"]
    store = create_store(out_dir, vectors.shape[1], settings=settings, info=info, backend=backend)
    store.add([item["id"] for item in items], vectors, items)
    still_there = [i for i in deleted_ids if i in store]
    if still_there:
        store.delete(still_there)
    store.commit()  # only then may the files it no longer needs go
    remove_unreferenced_shards(out_dir, set(report.names) | _added_shards(items))
    return out_dir


def _committed_index(out_dir: Path, fingerprint: str, backend: str = "faiss") -> VectorStore | None:
    """The index an earlier build or add committed in `out_dir`, if any; made with other weights
    it cannot be refreshed (its added items would not be comparable), nor by another backend."""
    if not (out_dir / "index.json").exists() and not (out_dir / POINTER).exists():
        return None
    found = backend_of(out_dir)
    if found != backend:
        raise IndexStoreError(f"the index in {out_dir} is a {found} index, not {backend}: build into a new --out "
                              f"folder (or pass the --store it was built with)")
    previous = open_store(out_dir)  # a corrupt one raises CorruptIndex: never silently dropped
    recorded = previous.info.get("weights_sha256")
    if recorded and recorded != fingerprint:
        raise IndexStoreError(f"the index in {out_dir} was built with another model (its weights differ); "
                              "build into a new --out folder (or delete this one)")
    return previous


def _is_added(item: dict) -> bool:
    ref = item.get("thumb") or [""]
    return str(ref[0]).startswith(f"embeddings/{ADDED_PREFIX}_")


def _added_shards(items: list[dict]) -> set[str]:
    return {shard_stem(Path(item["thumb"][0]).name) for item in items if _is_added(item)}


def _with_added_items(previous: VectorStore, vectors, items: list[dict]):
    """The rebuilt rows plus the committed index's live added items whose ids the data does not
    hold (their vectors come from the committed index, never from `added_*` shard files)."""
    import numpy as np

    ids = {item["id"] for item in items}
    kept = [item for item in previous.meta(previous.ids()) if _is_added(item) and item["id"] not in ids]
    if not kept:
        return vectors, items
    return np.concatenate([vectors, previous.vectors([item["id"] for item in kept])]), items + kept


def data_roots(data_spec: str, previous: list[str] = ()) -> list[str]:
    """The folders the operator's data specs name (resolved, none inside another; see
    `spec_roots`): the server sends an item's original file only from under one of them (or a
    folder given to `serve --data-root`), never from where a path inside the data points."""
    folders = set(spec_roots(data_spec)) | set(previous)
    roots = []
    for folder in sorted(folders, key=lambda f: (len(Path(f).parts), f)):
        if not any(Path(folder).is_relative_to(root) for root in roots):
            roots.append(folder)
    return sorted(roots)


def index_data_roots(info: dict) -> list[str]:
    """The folders an index's items may be sent from: as recorded, or for an index built before
    roots came from the specs (whose recorded roots followed the data's own paths), recomputed
    from the specs it was built and extended from."""
    if info.get("data_roots_from") == "specs":
        return list(info.get("data_roots") or [])
    roots: list[str] = []
    for spec in [info.get("data_spec")] + [added.get("data_spec") for added in info.get("added") or []]:
        if isinstance(spec, str) and spec:
            roots = data_roots(spec, roots)
    return roots


def unserved_files(items: list[dict], roots: list[str]) -> int:
    """How many items have an original file outside `roots`: searchable, shown by their
    thumbnail, but their file is not sent unless `serve --data-root` names its folder."""
    return sum(1 for item in items if item.get("path")
               and not any(Path(item["path"]).resolve().is_relative_to(root) for root in roots))


@dataclass
class AddReport:
    added: int = 0
    already_indexed: int = 0  # samples whose id the index already holds: left as they are
    still_deleted: int = 0  # samples whose id was deleted with `index delete`: deletions stand
    skipped: SkipCounter = field(default_factory=SkipCounter)  # unusable images, repeated ids
    total: int = 0  # live items afterwards
    unserved_files: int = 0  # items whose image file lies outside the data folders (not sent by `serve`)


def add_to_index(index_dir: str | Path, data_spec: str, *, split: str | None = None, model_dir: str | Path | None = None,
                 language: str = "en", shard_size: int = SHARD_SIZE, batch_size: int = 64,
                 progress: bool = True, model_backend: str = "torch", model_quantize: str | None = None) -> AddReport:
    """Embed the samples of `data_spec` whose ids the index does not hold yet, with the index's own
    model, store them as new shards (thumbnails included) and append them to the index. Ids deleted
    from the index stay deleted (as on a rebuild)."""
    import visembed
    from visembed.data import open_dataset

    index_dir = Path(index_dir)
    index = open_store(index_dir)
    model_dir = Path(model_dir or index.info.get("model_dir") or "")
    if not str(model_dir) or not model_dir.is_dir():
        raise IndexStoreError(f"the model folder {str(model_dir)!r} that made this index is not there; "
                              "pass the model folder explicitly (--model)")
    recorded = index.info.get("weights_sha256")
    if recorded and weights_sha256(model_dir) != recorded:
        raise IndexStoreError(f"the weights in {model_dir} are not the ones this index was built with; "
                              "new items would not be comparable: rebuild the index with this model")
    model = visembed.load(model_dir, backend=model_backend, quantize=model_quantize)
    made, recorded_kind = quantized(model).get("quantize"), index.info.get("quantize")
    if made != recorded_kind:
        raise IndexStoreError(f"this index holds {_vector_kind(recorded_kind)}; new items must be made the same way, "
                              f"not as {_vector_kind(made)}")
    if model.embed_dim != index.dim:
        raise IndexStoreError(f"model {model_dir} makes {model.embed_dim}-d vectors but the index holds {index.dim}-d ones")

    split = split or "all"
    dataset = open_dataset(data_spec, split, language=language, need="nothing")  # captions optional
    report = AddReport()
    # shards of an earlier `add` that was killed before it committed: never part of the index
    remove_unreferenced_shards(index_dir, _added_shards(index.meta(index.ids())), prefixes=(ADDED_PREFIX,))

    deleted = index.deleted_ids()

    def new_samples():  # a stream: a large source is never held in memory
        seen = set()
        for sample in dataset:
            sample_id = str(sample.id)
            if sample_id in index:
                report.already_indexed += 1
            elif sample_id in deleted:
                report.still_deleted += 1
            elif sample_id in seen:
                report.skipped.add("duplicate_id")
            else:
                seen.add(sample_id)
                yield sample

    vectors, items, skipped = embed_samples(model, new_samples(), index_dir, prefix=ADDED_PREFIX, shard_size=shard_size,
                                            batch_size=batch_size, progress=progress)
    report.skipped.update(skipped)
    if getattr(dataset, "skipped", None) is not None:
        report.skipped.update(dataset.skipped)  # rows the source itself left out
    if items:
        index.add([item["id"] for item in items], vectors, items)
        index.info["data_roots"] = data_roots(data_spec, index_data_roots(index.info))
        index.info["data_roots_from"] = "specs"
        index.info["unserved_files"] = unserved_files(index.meta(index.ids()), index.info["data_roots"])
    report.unserved_files = index.info.get("unserved_files") or 0
    report.added = len(items)
    index.info["skipped"] = _merged(index.info.get("skipped") or {}, report.skipped.as_dict())
    index.info.setdefault("added", []).append({"data_spec": data_spec, "split": split, "items": report.added})
    index.commit()  # new data files first, then index.json switches to them atomically
    report.total = len(index)
    return report


def _merged(a: dict, b: dict) -> dict:
    return {reason: a.get(reason, 0) + b.get(reason, 0) for reason in {**a, **b}}

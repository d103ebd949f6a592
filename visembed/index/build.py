"""`build_index`: model folder + data spec -> a searchable index folder (resumable);
`add_to_index`: new samples into an existing index, without a rebuild."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from visembed.data import SkipCounter
from visembed.index.embed import ADDED_PREFIX, SHARD_SIZE, embed_dataset, embed_samples, read_shards
from visembed.index.store import IndexSettings, IndexStoreError, VectorIndex


def weights_sha256(model_dir: Path) -> str:
    """The weights' content, not their file's mtime: `train --resume` of a finished run or a second
    `visembed demo` rewrites identical weights, and the shards made with them stay valid."""
    from visembed.checkpoint import weights_path

    digest = hashlib.sha256()
    with open(weights_path(model_dir), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_index(model_dir: str | Path, data_spec: str, out_dir: str | Path, *, split: str | None = None,
                progress: bool = True, settings: IndexSettings | None = None, language: str = "en",
                shard_size: int = SHARD_SIZE, batch_size: int = 64) -> Path:
    """Embed every image of `data_spec` (split "all" unless told otherwise) with the model in
    `model_dir` and write an index to `out_dir`. Rerunning after a crash resumes from the last
    finished shard; items added later with `add_to_index` are kept."""
    import visembed
    from visembed.data import open_dataset

    split = split or "all"
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if not model_dir.is_dir():
        raise IndexStoreError(f"no model folder at {model_dir}")
    model = visembed.load(model_dir)
    fingerprint = weights_sha256(model_dir)
    source = {"weights_sha256": fingerprint, "data_spec": data_spec, "split": split, "language": language}
    dataset = open_dataset(data_spec, split, language=language)
    report = embed_dataset(model, dataset, out_dir, source=source, shard_size=shard_size,
                           batch_size=batch_size, progress=progress)
    vectors, items, skipped = read_shards(out_dir)
    if getattr(dataset, "skipped", None) is not None:
        skipped.update(dataset.skipped)  # rows the source itself left out (missing files, empty captions)
    if not items:
        raise IndexStoreError(f"no usable images in {data_spec!r} ({skipped.summary()})")
    info = {"model_dir": str(model_dir), "weights_sha256": fingerprint, "data_spec": data_spec, "split": split,
            "language": language, "skipped": skipped.as_dict(), "reused_shards": report.reused_shards}
    VectorIndex.build(vectors, items, settings, info).save(out_dir)
    return out_dir


@dataclass
class AddReport:
    added: int = 0
    already_indexed: int = 0  # samples whose id the index already holds: left as they are
    skipped: SkipCounter = field(default_factory=SkipCounter)  # unusable images, repeated ids
    total: int = 0  # live items afterwards


def add_to_index(index_dir: str | Path, data_spec: str, *, split: str | None = None, model_dir: str | Path | None = None,
                 language: str = "en", shard_size: int = SHARD_SIZE, batch_size: int = 64,
                 progress: bool = True) -> AddReport:
    """Embed the samples of `data_spec` whose ids the index does not hold yet, with the index's own
    model, store them as new shards (thumbnails included) and append them to the index."""
    import visembed
    from visembed.data import open_dataset

    index_dir = Path(index_dir)
    index = VectorIndex.open(index_dir)
    model_dir = Path(model_dir or index.info.get("model_dir") or "")
    if not str(model_dir) or not model_dir.is_dir():
        raise IndexStoreError(f"the model folder {str(model_dir)!r} that made this index is not there; "
                              "pass the model folder explicitly (--model)")
    recorded = index.info.get("weights_sha256")
    if recorded and weights_sha256(model_dir) != recorded:
        raise IndexStoreError(f"the weights in {model_dir} are not the ones this index was built with; "
                              "new items would not be comparable: rebuild the index with this model")
    model = visembed.load(model_dir)
    if model.embed_dim != index.dim:
        raise IndexStoreError(f"model {model_dir} makes {model.embed_dim}-d vectors but the index holds {index.dim}-d ones")

    split = split or "all"
    dataset = open_dataset(data_spec, split, language=language)
    report = AddReport()

    def new_samples():  # a stream: a large source is never held in memory
        seen = set()
        for sample in dataset:
            sample_id = str(sample.id)
            if sample_id in index:
                report.already_indexed += 1
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
        index.add(vectors, items)
    report.added = len(items)
    index.info["skipped"] = _merged(index.info.get("skipped") or {}, report.skipped.as_dict())
    index.info.setdefault("added", []).append({"data_spec": data_spec, "split": split, "items": report.added})
    index.save(index_dir)  # new data files first, then index.json switches to them atomically
    report.total = len(index)
    return report


def _merged(a: dict, b: dict) -> dict:
    return {reason: a.get(reason, 0) + b.get(reason, 0) for reason in {**a, **b}}

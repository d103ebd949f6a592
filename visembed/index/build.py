"""`build_index`: model folder + data spec -> a searchable index folder (resumable)."""

from __future__ import annotations

from pathlib import Path

from visembed.index.embed import SHARD_SIZE, embed_dataset, read_shards
from visembed.index.store import IndexSettings, IndexStoreError, VectorIndex


def model_fingerprint(model_dir: Path) -> dict:
    """Enough to notice a retrained model in the same folder (resumed shards must match it)."""
    from visembed.checkpoint import weights_path

    stat = weights_path(model_dir).stat()
    return {"model_dir": str(model_dir), "weights_size": stat.st_size, "weights_mtime_ns": stat.st_mtime_ns}


def build_index(model_dir: str | Path, data_spec: str, out_dir: str | Path, *, split: str | None = None,
                progress: bool = True, settings: IndexSettings | None = None, language: str = "en",
                shard_size: int = SHARD_SIZE, batch_size: int = 64) -> Path:
    """Embed every image of `data_spec` with the model in `model_dir` and write an index to
    `out_dir`. Rerunning after a crash resumes from the last finished shard."""
    import visembed
    from visembed.data import open_dataset

    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if not model_dir.is_dir():
        raise IndexStoreError(f"no model folder at {model_dir}")
    model = visembed.load(model_dir)
    source = {**model_fingerprint(model_dir), "data_spec": data_spec, "split": split, "language": language}
    dataset = open_dataset(data_spec, **({"split": split} if split else {}), language=language)
    report = embed_dataset(model, dataset, out_dir, source=source, shard_size=shard_size,
                           batch_size=batch_size, progress=progress)
    vectors, items, skipped = read_shards(out_dir)
    if getattr(dataset, "skipped", None) is not None:
        skipped.update(dataset.skipped)  # rows the source itself left out (missing files, empty captions)
    if not items:
        raise IndexStoreError(f"no usable images in {data_spec!r} ({skipped.summary()})")
    info = {"model_dir": str(model_dir), "data_spec": data_spec, "split": split, "language": language,
            "skipped": skipped.as_dict(), "reused_shards": report.reused_shards}
    VectorIndex.build(vectors, items, settings, info).save(out_dir)
    return out_dir

"""Embed a whole dataset into shard files, resumably.

    INDEX_DIR/embeddings/source.json                which model and data the shards came from
    INDEX_DIR/embeddings/shard_00000-<fp>.thumbs    the shard's thumbnails, concatenated
    INDEX_DIR/embeddings/shard_00000-<fp>.json      {"items": [...], "skipped": {...}, "n_source": n, "fingerprint": fp}
    INDEX_DIR/embeddings/shard_00000-<fp>.npy       float32 (n_items, D), written last: it marks the shard done
    INDEX_DIR/embeddings/added_00000.*              items added later (`visembed index add`)

`<fp>` is the shard's *content fingerprint*: a hash of the weights' sha256 and of every source row
in it (id, captions, label, path, and the image's identity: for a file its resolved path, size and
mtime_ns, one `stat`; for in-memory images a hash of their bytes or pixels). A rerun reuses a
finished shard only when a file of the same number and fingerprint exists, so a manifest that
shrank, a caption that changed or an image rewritten in place are embedded again instead of served
stale. A `stat` is cheap and catches every ordinary edit; a file rewritten with the same size in
the same nanosecond would slip through, which is the price of not hashing every image on a rerun.

Each file is written atomically, so a crash loses at most the shard in progress.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visembed.atomic import atomic_write_bytes, atomic_write_json, atomic_write_npy
from visembed.data import SkipCounter, decoded
from visembed.index.backends.base import IndexStoreError

SHARD_SIZE = 1000
ADDED_PREFIX = "added"  # shards of items added after the build: never renumbered by a rebuild
THUMB_SIZE = 128


@dataclass
class EmbedReport:
    shards: int = 0
    reused_shards: int = 0  # finished by an earlier run, same fingerprint
    embedded: int = 0  # images embedded by this run
    skipped: SkipCounter = field(default_factory=SkipCounter)
    names: list[str] = field(default_factory=list)  # this dataset's shards, in order: all a build reads


def shard_name(number: int, fingerprint: str) -> str:
    return f"shard_{number:05d}-{fingerprint[:16]}"


def image_identity(image) -> list:
    """What a row's image is, cheaply: a file by path, size and mtime; bytes and pixels by hash."""
    if isinstance(image, (str, os.PathLike)):
        try:
            stat = os.stat(image)
        except OSError:
            return ["missing", str(image)]
        return ["file", str(Path(image).resolve()), stat.st_size, stat.st_mtime_ns]
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ["bytes", hashlib.sha256(image).hexdigest()]
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # a PIL image
        return ["pixels", image.mode, list(image.size), hashlib.sha256(image.tobytes()).hexdigest()]
    return ["unknown", type(image).__name__]


def shard_fingerprint(samples: list, identity: str) -> str:
    """sha256 over `identity` (the source: weights' sha256, data spec, ...) and every row's content
    (see the module docstring)."""
    digest = hashlib.sha256(json.dumps(["source", identity]).encode())
    for sample in samples:
        row = [str(sample.id), sample.caption, dict(sample.captions or {}), sample.label,
               str(sample.path) if sample.path else None, image_identity(sample.image)]
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def embed_dataset(model, dataset, out_dir: str | Path, *, source: dict, shard_size: int = SHARD_SIZE,
                  batch_size: int = 64, progress: bool = True, thumb_size: int = THUMB_SIZE,
                  rank: int = 0, world: int = 1) -> EmbedReport:
    """Embed every image of `dataset` into `out_dir/embeddings`; `source` identifies model and data
    so that shards from a different model are never mixed in. A finished shard is reused only when
    its content fingerprint (rows and weights) matches; `report.names` lists this dataset's shards.

    Across processes (`rank` of `world`), shard i is embedded by rank i mod world; every rank reads
    every row (the names need the fingerprints) but decodes and embeds only its own shards, so the
    names are the same on every rank and the files land in one folder."""
    from tqdm import tqdm

    emb_dir = Path(out_dir) / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    _check_source(emb_dir, {**source, "shard_size": shard_size, "thumb_size": thumb_size})
    identity = json.dumps(source, sort_keys=True, default=str)  # the weights' sha256 is in `source`
    report = EmbedReport()
    total = None if getattr(dataset, "streaming", False) or world > 1 else len(dataset)
    with tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True) as bar:
        for number, samples in _shards(dataset, shard_size):
            rows = samples()  # read (not decoded) even when the shard is done: the fingerprint needs them
            fingerprint = shard_fingerprint(rows, identity)
            name = shard_name(number, fingerprint)
            report.shards += 1
            report.names.append(name)
            if number % world != rank:
                continue  # another rank's shard
            done = _finished_shard(emb_dir, name, fingerprint)
            if done is not None:
                report.reused_shards += 1
                report.skipped.update(_counter(done["skipped"]))
                bar.update(done["n_source"])
                continue
            shard = _embed_shard(model, rows, emb_dir, name, batch_size, thumb_size, bar.update,
                                 fingerprint=fingerprint)
            report.embedded += shard["n_items"]
            report.skipped.update(shard["skipped"])
    return report


def _finished_shard(emb_dir: Path, name: str, fingerprint: str) -> dict | None:
    """The shard's json when both its files are there and it carries `fingerprint`, else None."""
    if not (emb_dir / f"{name}.npy").exists():
        return None
    try:
        done = json.loads((emb_dir / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and done.get("fingerprint") == fingerprint else None


def embed_samples(model, samples: Iterable, out_dir: str | Path, *, prefix: str = ADDED_PREFIX,
                  shard_size: int = SHARD_SIZE, batch_size: int = 64, progress: bool = True,
                  thumb_size: int = THUMB_SIZE) -> tuple[np.ndarray, list[dict], SkipCounter]:
    """Embed `samples` into new shards numbered after the existing `prefix_*` ones (a finished shard
    is never overwritten); returns their vectors (N, D), items and what was skipped."""
    from tqdm import tqdm

    emb_dir = Path(out_dir) / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    done = [int(p.stem.rpartition("_")[2]) for p in emb_dir.glob(f"{prefix}_*.npy") if p.stem.rpartition("_")[2].isdigit()]
    number = max(done, default=-1) + 1
    vectors, items, skipped = [], [], SkipCounter()
    stream = iter(samples)
    with tqdm(unit="img", desc="embedding", disable=not progress, dynamic_ncols=True) as bar:
        while chunk := list(itertools.islice(stream, shard_size)):
            shard = _embed_shard(model, chunk, emb_dir, f"{prefix}_{number:05d}", batch_size, thumb_size, bar.update)
            vectors.append(shard["vectors"])
            items += shard["items"]
            skipped.update(shard["skipped"])
            number += 1
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), np.float32)  # (N, D)
    return matrix, items, skipped


def _shards(dataset, shard_size: int) -> Iterator[tuple[int, Callable[[], list]]]:
    """(shard number, a function returning its samples). Map-style data is only read for shards
    still to do; a stream has to be read through, but finished shards are not decoded."""
    if getattr(dataset, "streaming", False):
        stream = iter(dataset)
        for number in itertools.count():
            chunk = list(itertools.islice(stream, shard_size))
            if not chunk:
                return
            yield number, (lambda chunk=chunk: chunk)
    else:
        n = len(dataset)
        for number in range(math.ceil(n / shard_size)):
            lo, hi = number * shard_size, min(n, (number + 1) * shard_size)
            yield number, (lambda lo=lo, hi=hi: [dataset[i] for i in range(lo, hi)])


def _embed_shard(model, samples: list, emb_dir: Path, name: str, batch_size: int, thumb_size: int,
                 advance: Callable[[int], object], fingerprint: str | None = None) -> dict:
    skipped = SkipCounter()
    items: list[dict] = []
    vectors: list[np.ndarray] = []
    thumbs = bytearray()
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = []  # decoded one batch at a time: a shard of large photos would not fit in memory
        for sample, image in decoded(batch, skipped):
            thumb = _thumbnail(image, thumb_size)
            items.append({
                "id": str(sample.id),
                "caption": sample.caption,
                "captions": dict(sample.captions or {}),
                "label": sample.label,
                "path": str(Path(sample.path).resolve()) if sample.path else None,
                "thumb": [f"embeddings/{name}.thumbs", len(thumbs), len(thumb)],
            })
            thumbs += thumb
            images.append(image)
        if images:
            vectors.append(model.encode_image(images, batch_size=batch_size))  # (b, D)
        advance(len(batch))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), np.float32)  # (n_items, D)
    matrix = matrix.astype(np.float32, copy=False)
    atomic_write_bytes(emb_dir / f"{name}.thumbs", bytes(thumbs))
    atomic_write_json(emb_dir / f"{name}.json", {"items": items, "skipped": skipped.as_dict(), "n_source": len(samples),
                                                 "fingerprint": fingerprint})
    atomic_write_npy(emb_dir / f"{name}.npy", matrix)
    return {"n_items": len(items), "skipped": skipped, "items": items, "vectors": matrix}


def _thumbnail(image, size: int) -> bytes:
    """Small originals stay lossless PNG; photos become JPEG, ten times smaller."""
    out = io.BytesIO()
    if max(image.size) <= size:
        image.save(out, format="PNG", optimize=True)
    else:
        thumb = image.copy()
        thumb.thumbnail((size, size))
        thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _counter(counts: dict) -> SkipCounter:
    counter = SkipCounter()
    for reason, n in counts.items():
        counter.add(reason, n)
    return counter


def _check_source(emb_dir: Path, source: dict) -> None:
    path = emb_dir / "source.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != json.loads(json.dumps(source)):
            raise IndexStoreError(
                f"{emb_dir} holds embeddings from another model or dataset ({previous}); "
                f"use a new --out folder or delete {emb_dir}")
    else:
        atomic_write_json(path, source)


def read_shards(out_dir: str | Path, names: Iterable[str]) -> tuple[np.ndarray, list[dict], SkipCounter]:
    """The named shards in order (a build passes `EmbedReport.names`: shards of rows no longer in
    the data, or of an `index add` that never committed, are not read): vectors (N, D), items, and
    what was skipped (repeated ids too)."""
    emb_dir = Path(out_dir) / "embeddings"
    vectors, items, skipped, seen = [], [], SkipCounter(), set()
    for npy in (emb_dir / f"{name}.npy" for name in names):
        shard = json.loads(npy.with_suffix(".json").read_text(encoding="utf-8"))
        matrix = np.load(npy, allow_pickle=False)  # (n_items, D)
        if len(matrix) != len(shard["items"]):
            raise IndexStoreError(f"{npy} has {len(matrix)} vectors for {len(shard['items'])} items; delete it and rerun")
        skipped.update(_counter(shard["skipped"]))
        keep = []
        for i, item in enumerate(shard["items"]):
            if item["id"] in seen:
                skipped.add("duplicate_id")
                continue
            seen.add(item["id"])
            keep.append(i)
            items.append(item)
        vectors.append(matrix[keep])
    dim = vectors[0].shape[1] if vectors else 0
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), items, skipped


def shard_stem(filename: str) -> str:
    """`shard_00001-ab12.thumbs` -> `shard_00001-ab12`; `.shard_00001-ab12.npy.x1y2.tmp` -> the same."""
    return filename.lstrip(".").split(".", 1)[0]


def remove_unreferenced_shards(out_dir: str | Path, keep: set[str], prefixes: tuple[str, ...] = ("shard", ADDED_PREFIX)) -> int:
    """Delete shard files (and leftover temporary files of a killed run) whose shard is not in
    `keep`: shards of rows that left the data, of other fingerprints, and of an `index add` that
    never committed. Call it only after index.json names everything it needs."""
    emb_dir = Path(out_dir) / "embeddings"
    removed = 0
    for path in emb_dir.glob("*") if emb_dir.is_dir() else ():
        stem = shard_stem(path.name)
        if stem.startswith(tuple(f"{p}_" for p in prefixes)) and stem not in keep and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_clip_retrieval(out_dir: str | Path, names: Iterable[str], target: str | Path) -> int:
    """clip-retrieval's layout from finished shards (`names`, in order, under `out_dir/embeddings`):
    `target/img_emb/img_emb_{i}.npy` (float16, as `clip-retrieval inference` writes them) and
    `target/metadata/metadata_{i}.parquet` (columns `image_path`, `caption`, `id`), one pair per
    shard with rows in the same order, so autofaiss and clip-retrieval's back end read them as their
    own. Returns the number of vectors written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visembed.atomic import atomic_write

    names = list(names)
    width = max(4, len(str(len(names))))
    target = Path(target)
    (target / "img_emb").mkdir(parents=True, exist_ok=True)
    (target / "metadata").mkdir(parents=True, exist_ok=True)
    total, written = 0, set()
    for number, name in enumerate(names):
        npy = Path(out_dir) / "embeddings" / f"{name}.npy"
        items = json.loads(npy.with_suffix(".json").read_text(encoding="utf-8"))["items"]
        matrix = np.load(npy, allow_pickle=False)  # (n_items, D) float32
        table = pa.table({"image_path": [item.get("path") for item in items],
                          "caption": [item.get("caption") for item in items],
                          "id": [item["id"] for item in items]})
        stem = str(number).zfill(width)
        atomic_write(target / "metadata" / f"metadata_{stem}.parquet", lambda tmp: pq.write_table(table, tmp))
        atomic_write_npy(target / "img_emb" / f"img_emb_{stem}.npy", matrix.astype(np.float16))
        written |= {f"img_emb_{stem}.npy", f"metadata_{stem}.parquet"}
        total += len(items)
    for stale in [*(target / "img_emb").glob("img_emb_*.npy"), *(target / "metadata").glob("metadata_*.parquet")]:
        if stale.name not in written:  # a part of an earlier, larger run: readers take every file there
            stale.unlink()
    return total

"""Any dataset -> pre-resized WebDataset shards in img2dataset's layout (`visembed shards`).

At scale the loader should not decode a 4,000-pixel photo to train on 224 of them: the shards hold
each image already resized (shorter side to `size`, never enlarged) and re-encoded as JPEG, so
decoding is a fraction of the cost and the files are what OpenCLIP and img2dataset users expect:

    OUT/00000.tar            000000000.jpg  000000000.txt  000000000.json  000000001.jpg ...
    OUT/00000.parquet        one row per input row of the shard (failures included): key, status, ...
    OUT/00000_stats.json     count, successes, failed_to_download, failed_to_resize, duration, status_dict

Keys are img2dataset's: shard number times 10^digits(shard_size) plus the row's place in its shard,
zero-padded, so a key names the input row. A row whose image is missing is `failed_to_download`, one
that does not decode `failed_to_resize` (img2dataset's statuses): it has a parquet row, no tar
member, and is counted by reason. Rows the source leaves out itself (a manifest row naming a missing
file) are counted in the report, without a key.

Input row `i` always goes to shard `i // shard_size`, and a shard's three files are written to
temporary names and moved into place, `_stats.json` last: a shard with its stats is finished, and a
rerun after a kill skips finished shards and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from visembed.atomic import atomic_write, atomic_write_json, remove_stale_temporaries

from .images import BadImage, SkipCounter, load_image
from .sample import Sample
from .spec import open_dataset

DOWNLOAD_REASONS = ("missing_file", "bad_path")  # img2dataset: the image could not be fetched


@dataclass
class ShardsReport:
    shards: int = 0  # shards in the folder when done
    written: int = 0  # shards written by this call (the others were finished before)
    samples: int = 0  # images written by this call
    skipped: SkipCounter = field(default_factory=SkipCounter)


def write_shards(spec: str, out: str | os.PathLike, *, size: int = 256, shard_size: int = 10_000,
                 quality: int = 95, split: str = "train", language: str = "en", progress: bool = True) -> ShardsReport:
    """Write the rows of data spec `spec` as shards under `out`; finished shards are kept (resume)."""
    if size < 1 or shard_size < 1 or not 1 <= quality <= 100:
        raise ValueError(f"size and shard_size must be 1 or more and quality within 1-100, not {size}, {shard_size}, "
                         f"{quality}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(spec, split, language=language, need="nothing")
    total = None if getattr(dataset, "streaming", False) else len(dataset)
    shard_digits = max(5, len(str(max(0, math.ceil((total or 1) / shard_size) - 1))))
    sample_digits = len(str(shard_size - 1))
    report = ShardsReport()
    bar = tqdm(total=total, desc="shards", unit="img", disable=not progress, dynamic_ncols=True)
    for shard, rows in _shard_rows(dataset, shard_size, total):
        name = f"{shard:0{shard_digits}d}"
        report.shards += 1
        if (out / f"{name}_stats.json").is_file():  # finished by an earlier run
            bar.update(len(rows))
            continue
        rows = list(rows)
        remove_stale_temporaries(out / f"{name}.tar")
        _write_shard(out, name, shard, rows, size, quality, shard_digits + sample_digits, sample_digits, report,
                     bar)
        report.written += 1
    bar.close()
    source_skips = getattr(dataset, "skipped", None)  # rows the source itself left out (a manifest's missing files)
    if source_skips is not None:
        report.skipped.update(source_skips)
    if report.shards == 0:
        raise ValueError(f"{spec}: no rows to write")
    return report


def _shard_rows(dataset, shard_size: int, total: int | None):
    """(shard number, its rows): a map-style dataset's rows are read only for shards not yet finished."""
    if total is not None:
        for shard in range(math.ceil(total / shard_size)):
            start = shard * shard_size
            count = min(shard_size, total - start)
            yield shard, _LazyRows(dataset, start, count)
        return
    rows: list[Sample] = []
    shard = 0
    for sample in dataset:  # a stream: rows of finished shards are read and dropped
        rows.append(sample)
        if len(rows) == shard_size:
            yield shard, rows
            rows, shard = [], shard + 1
    if rows:
        yield shard, rows


class _LazyRows:
    """Rows [start, start + count) of a map-style dataset, read only when iterated."""

    def __init__(self, dataset, start: int, count: int):
        self.dataset, self.start, self.count = dataset, start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return (self.dataset[i] for i in range(self.start, self.start + self.count))


def _write_shard(out: Path, name: str, shard: int, rows: list[Sample], size: int, quality: int, key_digits: int,
                 sample_digits: int, report: ShardsReport, bar) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    started = time.time()
    metas, status = [], SkipCounter()
    counts = {"successes": 0, "failed_to_download": 0, "failed_to_resize": 0}

    def write_tar(tmp: str) -> None:
        with open(tmp, "wb") as stream, TarWriter(stream) as tar:
            for i, sample in enumerate(rows):
                key = f"{shard * 10 ** sample_digits + i:0{key_digits}d}"
                meta = {"url": sample.path or (sample.image if isinstance(sample.image, str) else None),
                        "caption": sample.caption, "key": key, "status": "success", "error_message": None,
                        "width": None, "height": None, "original_width": None, "original_height": None,
                        "exif": None, "sha256": None, "id": sample.id, "label": sample.label}
                try:
                    image = load_image(sample.image)
                except BadImage as err:
                    meta["status"] = "failed_to_download" if err.reason in DOWNLOAD_REASONS else "failed_to_resize"
                    meta["error_message"] = err.reason
                    counts[meta["status"]] += 1
                    status.add(err.reason)
                    report.skipped.add(err.reason)
                else:
                    jpeg, resized = _resized_jpeg(image, size, quality)
                    meta.update(width=resized[0], height=resized[1], original_width=image.width,
                                original_height=image.height, sha256=hashlib.sha256(jpeg).hexdigest())
                    tar.write({"__key__": key, "jpg": jpeg, "txt": sample.caption or "",
                               "json": json.dumps(meta, indent=4, ensure_ascii=False)})
                    counts["successes"] += 1
                    status.add("success")
                    report.samples += 1
                metas.append(meta)
                bar.update(1)

    def write_parquet(tmp: str) -> None:
        columns = list(metas[0]) if metas else ["key", "status"]
        table = pa.Table.from_pylist(metas, schema=pa.schema([(c, _arrow_type(pa, c)) for c in columns]))
        pq.write_table(table, tmp)

    atomic_write(out / f"{name}.tar", write_tar)
    atomic_write(out / f"{name}.parquet", write_parquet)
    ended = time.time()
    atomic_write_json(out / f"{name}_stats.json", {  # last: the shard is finished
        "count": len(rows), **counts, "duration": ended - started, "start_time": started, "end_time": ended,
        "status_dict": status.as_dict()}, indent=4)


_INT_COLUMNS = ("width", "height", "original_width", "original_height")


def _arrow_type(pa, column: str):
    return pa.int64() if column in _INT_COLUMNS else pa.string()


def _resized_jpeg(image: Image.Image, size: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of `image` with its shorter side brought down to `size` (bicubic, as training resizes)."""
    width, height = image.size
    short = min(width, height)
    if short > size:
        scale = size / short
        shape = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(shape, Image.Resampling.BICUBIC, reducing_gap=None)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), image.size

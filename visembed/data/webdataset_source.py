"""WebDataset tar shards (img2dataset / OpenCLIP layout), streamed straight from the tar files.

`{key}.jpg|png|jpeg|webp` + `{key}.txt` (+ `{key}.json`) make one sample. Images stay encoded
bytes: `load_image` decodes them later, so a broken image is skipped and counted where it is used.
Samples without image, or without caption when the caller needs captions (`need="caption"`), are
skipped here and counted in `skipped`; otherwise a sample without `.txt` has an empty caption.
Local files only. A folder holding `*.tar` files (what `visembed shards` or img2dataset writes)
names all of them, in name order.
Shards carry no split: every split requested streams all of them. Training reads them through
`indexed()` (`shard_index.py`): the same samples in the same order, each read only where needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from .images import SkipCounter
from .sample import DataError, Sample
from .shard_index import IMAGE_KEYS, ShardIndex


class WebDatasetSource:
    """An iterable of Samples over shards; no `__len__` (`streaming = True`)."""

    streaming = True
    labels = None

    def __init__(self, pattern: str, split: str = "train", *, language: str = "en", need: str = "caption"):
        self.pattern, self.need = pattern, need
        if Path(pattern).is_dir():  # a folder of shards
            self.urls = sorted(str(p) for p in Path(pattern).glob("*.tar") if p.is_file())
            if not self.urls:
                raise DataError(f"{pattern}: a folder without .tar shards")
        else:
            self.urls = expand_urls(pattern)  # brace expansion: "{00000..00009}.tar" -> 10 names
        missing = [url for url in self.urls if not Path(url).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(f"{pattern}: {len(missing)} of {len(self.urls)} shards not found ({shown})")
        self.skipped = SkipCounter()

    def indexed(self) -> ShardIndex:
        """The same samples as a map-style dataset (read where they lie); skips count into `skipped`."""
        return ShardIndex(self.urls, need=self.need, skipped=self.skipped)

    def _broken_shard(self, error: Exception) -> bool:
        """webdataset's handler hook: count a corrupt tar (or member) and keep streaming."""
        self.skipped.add("broken_shard")
        return True

    def _open_shards(self) -> Iterator[dict]:
        for url in self.urls:
            with open(url, "rb") as stream:  # closed after each shard (webdataset's opener leaves it open)
                yield {"url": url, "stream": stream}

    def __iter__(self) -> Iterator[Sample]:
        files = tar_file_expander(self._open_shards(), handler=self._broken_shard)
        for record in group_by_keys(files, handler=self._broken_shard):
            sample = self._to_sample(record)
            if sample is not None:
                yield sample

    def _to_sample(self, record: dict) -> Sample | None:
        image = next((record[k] for k in IMAGE_KEYS if k in record), None)
        if image is None:
            self.skipped.add("missing_image")
            return None
        caption = record.get("txt", b"").decode("utf-8", errors="replace").strip()
        if not caption and self.need == "caption":
            self.skipped.add("empty_caption")
            return None
        meta = {"shard": record.get("__url__")}
        if "json" in record:
            try:
                meta["json"] = json.loads(record["json"])
            except ValueError:
                pass  # metadata is optional; a broken one does not cost the sample
        return Sample(id=record["__key__"], image=image, caption=caption, meta=meta)

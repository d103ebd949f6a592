"""WebDataset shards as a map-style dataset: sample `i` is read where it lies in its tar file.

Training wants two things a plain tar stream cannot give together: every rank and every loader
worker reading only the samples it trains on (no duplicates, no losses), and a step's samples
fixed by the step alone (exact resume, 2 processes = 1). Reading a shard's tar headers gives each
member's byte offset without reading its data (a seekable file skips the data), so the shards
become an indexed list: the loader's plan picks positions, and each process reads just those
members (positional reads, sizes checked before reading).

The order of the index is the order `WebDatasetSource` streams (shards in the order given, members
in tar order, grouped by webdataset's own key rule `base_plus_ext`), and the same samples are left
out (no image; a blank caption when captions are needed), so training on the index sees, step for
step, the samples that streaming the shards gave. Only `.txt` members are read while indexing
(a blank caption must not take a position), a few bytes a sample.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from typing import Iterator

import numpy as np
from webdataset.tariterators import base_plus_ext

from .images import DEFAULT_MAX_BYTES, SkipCounter
from .sample import Sample

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: "__key__"-style members are not data
MAX_TEXT_BYTES = 1 << 20  # a caption or a json beyond this is cut (hostile shards: sizes are checked before reading)


# one row per sample: its shard, and (offset, size) of its image, caption and metadata members
# (size -1: absent). numpy rows, not Python objects: forked workers share them without copying.
ROW = np.dtype([("shard", np.int32), ("image", np.int64, 2), ("txt", np.int64, 2), ("json", np.int64, 2)])


class ShardIndex:
    """A map-style dataset (`len`, `ds[i]`, iteration) over local WebDataset shards."""

    streaming = False
    labels = None

    def __init__(self, urls: list[str], *, need: str = "caption", skipped: SkipCounter | None = None):
        self.urls, self.need = list(urls), need
        self.skipped = skipped if skipped is not None else SkipCounter()
        rows, keys = [], []
        for shard, url in enumerate(self.urls):
            for key, row in self._index_shard(shard, url):
                rows.append(row)
                keys.append(key.encode("utf-8", errors="surrogateescape"))
        self.rows = np.array(rows, dtype=ROW)
        self.key_ends = np.cumsum([len(k) for k in keys], dtype=np.int64)
        self.key_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8)

    def _index_shard(self, shard: int, url: str) -> Iterator[tuple[str, tuple]]:
        groups: list[tuple[str, dict[str, tuple[int, int]]]] = []
        try:
            with tarfile.open(url, mode="r:") as tar:  # "r:": seekable, so member data is skipped, not read
                for info in tar:
                    if not info.isreg() or _WDS_META.match(info.name):
                        continue
                    prefix, suffix = base_plus_ext(info.name)
                    if prefix is None:
                        continue
                    if not groups or groups[-1][0] != prefix:
                        groups.append((prefix, {}))
                    members = groups[-1][1]
                    if suffix.lower() in members:  # webdataset refuses a duplicate; its handler counts it
                        self.skipped.add("broken_shard")
                        continue
                    members[suffix.lower()] = (info.offset_data, info.size)
                    tar.members = []  # the offsets are all we keep of a member
        except (tarfile.TarError, OSError, EOFError):  # a corrupt tar: what was indexed before the damage stays
            self.skipped.add("broken_shard")
        absent = (0, -1)
        with open(url, "rb") as f:
            for key, members in groups:
                image = next((members[k] for k in IMAGE_KEYS if k in members), None)
                if image is None:
                    self.skipped.add("missing_image")
                elif self.need == "caption" and not _read(f.fileno(), members.get("txt", absent)).decode(
                        "utf-8", errors="replace").strip():
                    self.skipped.add("empty_caption")
                else:
                    yield key, (shard, image, members.get("txt", absent), members.get("json", absent))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        start = int(self.key_ends[index - 1]) if index > 0 else 0
        key = self.key_bytes[start:int(self.key_ends[index])].tobytes().decode("utf-8", errors="surrogateescape")
        url = self.urls[int(row["shard"])]
        with open(url, "rb") as f:
            fd = f.fileno()
            # one byte over the limit is enough for load_image to call it too_large, without reading it all
            image = _read(fd, row["image"], DEFAULT_MAX_BYTES + 1)
            caption = _read(fd, row["txt"]).decode("utf-8", errors="replace").strip()
            meta: dict = {"shard": url}
            if row["json"][1] >= 0:
                try:
                    meta["json"] = json.loads(_read(fd, row["json"]))
                except ValueError:
                    pass  # metadata is optional; a broken one does not cost the sample
        return Sample(id=key, image=image, caption=caption, meta=meta)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def _read(fd: int, where, limit: int = MAX_TEXT_BYTES) -> bytes:
    """Up to `limit` bytes at (offset, size) of an open file (size -1: an absent member, b"")."""
    offset, size = int(where[0]), int(where[1])
    return os.pread(fd, min(size, limit), offset) if size > 0 else b""

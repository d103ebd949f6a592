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
from dataclasses import dataclass
from typing import Iterator

from webdataset.tariterators import base_plus_ext

from .images import DEFAULT_MAX_BYTES, SkipCounter
from .sample import Sample

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: "__key__"-style members are not data
MAX_TEXT_BYTES = 1 << 20  # a caption or a json beyond this is cut (hostile shards: sizes are checked before reading)


@dataclass(frozen=True)
class Entry:
    """One sample: its shard (an index into `urls`), key, and each member's (offset, size)."""

    shard: int
    key: str
    members: dict[str, tuple[int, int]]


class ShardIndex:
    """A map-style dataset (`len`, `ds[i]`, iteration) over local WebDataset shards."""

    streaming = False
    labels = None

    def __init__(self, urls: list[str], *, need: str = "caption", skipped: SkipCounter | None = None):
        self.urls, self.need = list(urls), need
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.entries: list[Entry] = []
        for shard, url in enumerate(self.urls):
            self.entries.extend(self._index_shard(shard, url))

    def _index_shard(self, shard: int, url: str) -> Iterator[Entry]:
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
        except (tarfile.TarError, OSError, EOFError):  # a corrupt tar: what was indexed before the damage stays
            self.skipped.add("broken_shard")
        with open(url, "rb") as f:
            for key, members in groups:
                entry = Entry(shard, key, members)
                if not any(k in members for k in IMAGE_KEYS):
                    self.skipped.add("missing_image")
                elif self.need == "caption" and not _read(f.fileno(), members.get("txt")).decode(
                        "utf-8", errors="replace").strip():
                    self.skipped.add("empty_caption")
                else:
                    yield entry

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        url = self.urls[entry.shard]
        with open(url, "rb") as f:
            fd = f.fileno()
            # one byte over the limit is enough for load_image to call it too_large, without reading it all
            image = _read(fd, next(entry.members[k] for k in IMAGE_KEYS if k in entry.members), DEFAULT_MAX_BYTES + 1)
            caption = _read(fd, entry.members.get("txt")).decode("utf-8", errors="replace").strip()
            meta: dict = {"shard": url}
            if "json" in entry.members:
                try:
                    meta["json"] = json.loads(_read(fd, entry.members["json"]))
                except ValueError:
                    pass  # metadata is optional; a broken one does not cost the sample
        return Sample(id=entry.key, image=image, caption=caption, meta=meta)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def _read(fd: int, where: tuple[int, int] | None, limit: int = MAX_TEXT_BYTES) -> bytes:
    """Up to `limit` bytes at (offset, size) of an open file, without moving its offset."""
    if where is None:
        return b""
    offset, size = where
    return os.pread(fd, min(size, limit), offset)

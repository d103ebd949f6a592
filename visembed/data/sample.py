"""One training example, and the small base class shared by the map-style sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from PIL import Image

from .images import SkipCounter

ImageSource = Union[str, bytes, Image.Image]


class DataError(ValueError):
    """A data spec or file that cannot be used at all (as opposed to one bad item, which is skipped)."""


@dataclass
class Sample:
    id: str  # stable across runs: used in indexes, URLs and checkpoints
    image: ImageSource  # a path, encoded bytes or a PIL image; decode with `load_image`
    caption: str  # in the requested language
    captions: dict[str, str] = field(default_factory=dict)  # per language, where the data has several
    label: str | None = None  # class name for zero-shot evaluation, where the data has one
    path: str | None = None  # a file a server may send back
    meta: dict = field(default_factory=dict)


class ListDataset:
    """A map-style dataset over a list of Samples built up front (manifests, folders)."""

    streaming = False

    def __init__(self, samples: list[Sample], labels: list[str] | None = None, skipped: SkipCounter | None = None):
        self.samples = samples
        self.labels = labels
        self.skipped = skipped or SkipCounter()  # rows left out while reading the source

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

"""Walk samples and their decoded pictures, skipping and counting what cannot be used.

Training batches, evaluation, embedding and indexing all need the same loop: decode each sample's
image, count a bad one by its `BadImage` reason and go on. It lives here once, so every caller
skips the same things and reports them under the same names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from PIL import Image

from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, BadImage, SkipCounter, load_image
from .sample import Sample


def decoded(
    samples: Iterable[Sample],
    skipped: SkipCounter,
    *,
    limit: int | None = None,
    need_caption: bool = False,
    need_label: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Iterator[tuple[Sample, Image.Image]]:
    """(sample, RGB image) for each usable sample; each unusable one adds its reason to `skipped`.

    `limit` stops after that many usable samples (the rest are not read). With `need_caption`, a
    sample with a blank caption is counted as `empty_caption` before its image is decoded; with
    `need_label`, one without a label as `missing_label`.
    """
    if limit is not None and limit <= 0:
        return
    kept = 0
    for sample in samples:
        if need_caption and not (sample.caption or "").strip():
            skipped.add("empty_caption")
            continue
        if need_label and not (sample.label or "").strip():
            skipped.add("missing_label")
            continue
        try:
            image = load_image(sample.image, max_pixels=max_pixels, max_bytes=max_bytes)
        except BadImage as err:
            skipped.add(err.reason)
            continue
        yield sample, image
        kept += 1
        if limit is not None and kept >= limit:
            return


def decoded_batches(
    samples: Iterable[Sample], skipped: SkipCounter, batch_size: int, **options
) -> Iterator[list[tuple[Sample, Image.Image]]]:
    """`decoded` in lists of up to `batch_size` pairs, so that only one batch of pictures is held in
    memory at a time; `options` as for `decoded`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    stream = decoded(samples, skipped, **options)
    while batch := list(itertools.islice(stream, batch_size)):
        yield batch


__all__ = ["decoded", "decoded_batches"]

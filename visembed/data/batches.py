"""From Samples to a training batch, and the epoch order that makes resumed runs exact."""

from __future__ import annotations

import numpy as np
import torch

from .decode import decoded
from .images import DEFAULT_MAX_PIXELS, SkipCounter, to_tensor
from .sample import Sample
from .spec import NEEDS


def collate(
    samples: list[Sample], image_size: int, counter: SkipCounter, max_pixels: int = DEFAULT_MAX_PIXELS,
    need: str = "caption",
) -> tuple[torch.Tensor, list[Sample]]:
    """Decode and resize each sample; bad images, and samples without what is `need`ed ("caption",
    "label" or "nothing"), are skipped and counted.

    Returns pixels uint8 (B, 3, S, S) with B <= len(samples) and the B samples kept, in the same order.
    """
    if need not in NEEDS:
        raise ValueError(f"collate needs a caption, a label or nothing of a sample, not {need!r}")
    pixels, kept = [], []
    for sample, image in decoded(samples, counter, need_caption=need == "caption", need_label=need == "label",
                                 max_pixels=max_pixels):
        pixels.append(to_tensor(image, image_size))  # (3, S, S)
        kept.append(sample)
    if not pixels:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), []
    return torch.stack(pixels), kept  # (B, 3, S, S)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) for one epoch: a pure function of (seed, epoch), so a run resumed
    mid-epoch walks the same order as one that never stopped."""
    return np.random.default_rng([seed, epoch]).permutation(n)

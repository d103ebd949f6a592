"""Filling a feature cache before the first step: every training image through the frozen part of a
model once, reusing what an earlier run with the same weights saved (`$VISEMBED_CACHE/features/`).
The pixels go the way the loader sends them (`to_tensor`, / 255, no augmentation), so each step
finds its images by content."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn


def warm_cache(cache, name: str, dataset, image_size: int, run: Callable[[torch.Tensor], object], *,
               device: torch.device, progress: bool, main: bool) -> None:
    """`run(pixels)` on every image of `dataset` (it fills `cache`); the cache is read from and
    saved to `features/<name>.safetensors` under the cache folder."""
    from tqdm import tqdm

    from visembed.data import SkipCounter, decoded_batches, to_tensor
    from visembed.paths import cache_root

    if getattr(dataset, "streaming", False):
        return  # no known end to warm up to: the cache fills as the steps go
    path = cache_root() / "features" / f"{name}.safetensors"
    started, loaded = time.perf_counter(), cache.load(path)
    before = cache.misses
    with torch.no_grad(), tqdm(total=len(dataset), desc="image features", unit="img", disable=not progress,
                                dynamic_ncols=True) as bar:
        for batch in decoded_batches(dataset, SkipCounter(), 64):
            run(torch.stack([to_tensor(image, image_size) for _, image in batch]).to(device).float() / 255)
            bar.update(len(batch))
    computed = cache.misses - before
    if main:
        if computed:
            cache.save(path)
        print(f"image features: {len(cache):,} cached ({loaded:,} read from {path}, {computed:,} computed) "
              f"in {time.perf_counter() - started:.0f} s")


def weights_digest(salt: str, modules: Iterable[nn.Module]) -> str:
    """A short digest of `salt` and every tensor (names, bytes) of `modules`: what cached features
    depend on besides the pixels."""
    digest = hashlib.sha256(salt.encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]

"""The outputs of a locked (frozen) tower part, kept per distinct input image.

A locked tower maps the same pixels to the same features every time, so with augmentation off
each training image needs one pass through it per run instead of one per epoch: on a CPU, where
the pretrained tower's forward costs far more than the small head trained on top of it, epochs
become nearly free (LiT's recipe). Inputs are recognised by a digest of their bytes, so nothing
upstream needs to carry ids. The cache is bounded (least recently used first out, `lru.py`) and can be saved
to and read from a safetensors file (`save`, `load`), keyed by what the features depend on (see
`visembed.train.tasks.contrastive`), so a second run on the same images skips the tower entirely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from visembed.models.lru import LRU

DIGEST_BYTES = 16


def digest(row: torch.Tensor) -> bytes:
    """A row's content key: its dtype, shape and bytes."""
    row = row.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(f"{row.dtype}{tuple(row.shape)}".encode())
    h.update(row.numpy().tobytes() if row.dtype != torch.bfloat16 else row.view(torch.int16).numpy().tobytes())
    return h.digest()


class FeatureCache:
    def __init__(self, limit: int):
        self.limit = limit
        self._store = LRU(limit)  # digest -> features
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn(x) (no gradient: `fn` must be locked), the rows seen before taken from the cache.
        x: (B, ...) -> (B, ...) on x's device."""
        keys = [digest(row) for row in x]
        first: dict[bytes, int] = {}  # each distinct key -> its first row
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        todo = self._store.missing(keys)
        if todo:
            rows = torch.as_tensor([first[key] for key in todo], device=x.device)
            with torch.no_grad():
                computed = fn(x.index_select(0, rows)).float().cpu()
            for key, features in zip(todo, computed):
                self._store.put(key, features.clone())
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return torch.stack(self._store.use(keys)).to(x.device)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from visembed.atomic import atomic_write

        if not self._store:
            return
        digests = b"".join(self._store.keys())
        keys = torch.from_numpy(np.frombuffer(digests, dtype=np.uint8).reshape(-1, DIGEST_BYTES).copy())
        values = torch.stack(list(self._store.values()))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"keys": keys, "values": values}, tmp))

    def load(self, path: str | Path) -> int:
        """Add the entries of a file written by `save`; returns how many (0 when it is unreadable)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
            keys, values = data["keys"], data["values"]
        except (OSError, KeyError, SafetensorError):
            return 0
        for key, value in zip(keys.numpy(), values):
            self._store.put(key.tobytes(), value)
        return len(keys)

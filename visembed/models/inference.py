"""Inference on a dual encoder: images and texts in, float32 numpy vectors (L2-normalised) out."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class Model:
    """A trained dual encoder in eval mode. Outputs are float32 numpy arrays, L2-normalised."""

    def __init__(self, module: torch.nn.Module, config, device: str | torch.device | None = None):
        """Wrap a DualEncoder (e.g. the one being trained, for periodic eval); see `load`."""
        self.module, self.config = module, config
        self.device = torch.device(device) if device is not None else next(module.parameters()).device

    @classmethod
    def from_folder(cls, folder, device: str | torch.device | None = None) -> "Model":
        """Load a run or model folder written by `visembed train`, on the best device unless told."""
        from visembed.distributed import best_device
        from visembed.models import load_model_folder

        device = torch.device(device) if device is not None else best_device()
        return cls(*load_model_folder(folder, device), device)

    @property
    def image_size(self) -> int:
        return self.config.model.vision.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.model.embed_dim

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def pixels(self, images: Iterable) -> torch.Tensor:
        """Images (PIL, path or bytes) -> float (N, 3, S, S) in [0, 1]; a bad image raises BadImage."""
        from visembed.data import load_image, to_tensor

        return torch.stack([to_tensor(load_image(img), self.image_size) for img in images]).float() / 255.0

    @torch.no_grad()
    def encode_image(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError("encode_image takes a list of images (PIL images, paths or bytes), not one image")
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.pixels(images[start : start + batch_size]).to(self.device)
            with self._autocast():
                out.append(F.normalize(self.module.encode_image(pixels).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        out = []
        for start in range(0, len(texts), batch_size):
            with self._autocast():
                out.append(F.normalize(self.module.encode_text(list(texts[start : start + batch_size])).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

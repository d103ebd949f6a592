"""The Python API: `visembed.load(folder)` -> a `Model` that turns images and texts into vectors."""

from __future__ import annotations

from pathlib import Path

import torch

from visembed.distributed import best_device
from visembed.models import load_model_folder
from visembed.models.inference import Model


def load(folder: str | Path, device: str | torch.device | None = None) -> Model:
    """Load a run or model folder written by `visembed train`, on the best device unless told."""
    device = torch.device(device) if device is not None else best_device()
    module, config = load_model_folder(folder, device)
    return Model(module, config, device)


__all__ = ["Model", "load"]

"""The Python API: `visembed.load(folder)` -> a `Model` that turns images and texts into vectors."""

from __future__ import annotations

from pathlib import Path

import torch

from visembed.models.inference import Model


def load(folder: str | Path, device: str | torch.device | None = None) -> Model:
    """Load a run or model folder written by `visembed train`, on the best device unless told."""
    return Model.from_folder(folder, device)


__all__ = ["Model", "load"]

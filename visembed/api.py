"""The Python API: `visembed.load(folder)` -> a `Model` that turns images and texts into vectors.

This is the one way a folder becomes a usable model: commands, evaluation, the demo, the index and
the service all load through `visembed.load`, so they read folders, and fail on bad ones, alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visembed.models.inference import Model


def load(folder: str | Path, device: str | torch.device | None = None) -> Model:
    """Load a run or model folder written by `visembed train` (or `hf:PATH`, a transformers CLIPModel
    folder, or `openclip:PATH`, converted once; see `visembed.models.sources`), on the best device
    unless told."""
    from visembed.models.sources import resolve_model

    return Model.from_folder(resolve_model(folder), device)


__all__ = ["Model", "load"]

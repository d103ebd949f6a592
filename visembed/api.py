"""The Python API: `visembed.load(folder)` -> a `Model` that turns images and texts into vectors.

This is the one way a spec becomes a usable model: commands, the demo, the index and the service
all load through `visembed.load`, so they read folders, and fail on bad ones, alike. It sits above
interop/ (it resolves `hf:PATH` / `openclip:PATH` through the import cache); evaluation, below it,
loads plain folders with `Model.from_folder`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visembed.models.inference import Model


def load(folder: str | Path, device: str | torch.device | None = None, *, backend: str = "torch",
         quantize: str | None = None):
    """Load a run or model folder written by `visembed train` (or `hf:PATH`, a transformers CLIPModel
    folder, or `openclip:PATH`, converted once; see `visembed.interop.cache`), on the best device
    unless told. A classifier folder (`visembed classify fit`) gives a `Classifier` (`.classes`,
    `.predict(images, k=5)`, and the encoders of its dual encoder).

    `backend`: "torch", "onnx" (the encoders run as exported ONNX graphs in onnxruntime on the CPU,
    exported once and cached) or "auto" (onnx where it can, torch elsewhere); `quantize="int8"`
    quantises the ONNX graphs. See `visembed.interop.onnx_runtime`."""
    from visembed.classify.folder import Classifier, is_classifier_folder
    from visembed.interop.cache import resolve_model

    if not str(folder).startswith(("hf:", "openclip:")) and is_classifier_folder(folder):
        return Classifier.from_folder(folder, device)  # a classifier folder: `.classes`, `.predict(images, k)`
    folder = resolve_model(folder)
    if backend == "torch" and quantize is None:
        return Model.from_folder(folder, device)
    from visembed.interop.onnx_runtime import with_backend

    if backend in ("onnx", "auto") and device is None:
        device = "cpu"  # the ONNX graphs run on the CPU
    return with_backend(Model.from_folder(folder, device), folder, backend, quantize)


__all__ = ["Model", "load"]

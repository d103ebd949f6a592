"""Running a model's encoders in onnxruntime on the CPU: the same vectors, faster.

`visembed.load(folder, backend="onnx")` exports the model's image and text graphs once (see
`onnx.py`: each graph is checked against torch at export, |difference| <= 1e-4) into
`$VISEMBED_CACHE/onnx/<weights sha256>/`, and `encode_image` / `encode_text` then run them with
onnxruntime; everything else (the torch module, a captioner's generation) stays as loaded. On the
2-core machine this project is measured on the graphs ran 2.1-2.6x faster than eager torch
(`benchmarks/inference_backends.py` measures it for each kind of tower).

`quantize="int8"` adds onnxruntime's dynamic quantisation (weights int8 per output channel,
activations quantised per batch at run time) of the graphs' matrix products, cached beside them.
Convolutions stay float: measured on the demo's EfficientNet-Lite0, quantising them too made the
image graph slower in onnxruntime (ConvInteger) and cut text->image R@10 from 0.538 to 0.297; the
matrix products alone keep it (0.543). It changes the vectors, so its recall is measured in the
same benchmark, not assumed; it pays off on transformer towers (ViT, MiniLM), not on ConvNets.

A captioner's image side (the frozen encoder's embedding and cells, the LM's prefix) runs the same
way: one more graph, `captioner_image_features.onnx`, exported into the same cache folder on first
use and checked against torch; generation itself stays in torch.

`backend="auto"` takes onnx on a CPU when onnxruntime is installed and the export succeeds (its
check included), and torch otherwise, saying why on stderr once; on a GPU it is torch.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from visembed.interop.onnx import (CAPTIONER_FEATURES_GRAPH, CJK_TEXT_GRAPH, CJK_TOKENIZER_FILE, IMAGE_GRAPH,
                                   TEXT_GRAPH, TOKENIZER_FILE, export_captioner_features, export_onnx)
from visembed.models.inference import CaptionerModel, Model

BACKENDS = ("torch", "onnx", "auto")
QUANTIZE = (None, "int8")
QUANTIZED_OPS = ["MatMul", "Gemm"]
GRAPH_FORMAT = "2"  # bump when the exported graphs change, so old caches are not reused (2: 7-bit int8 weights)


def with_backend(model: Model, folder: Path, backend: str = "torch", quantize: str | None = None) -> Model:
    """`model` itself (torch), or an `OnnxModel` over it; see the module docstring for "auto"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be int8 or none, not {quantize!r}")
    if backend == "torch":
        if quantize:
            raise ValueError("--quantize int8 needs the onnx backend (--backend onnx)")
        return model
    if backend == "auto":
        reason = _why_not_onnx(model)
        if reason is None:
            try:
                return OnnxModel(model, folder, quantize)
            except (RuntimeError, ValueError) as err:  # an export that did not check out, an unknown tower
                reason = str(err).splitlines()[0]
        print(f"note: using the torch backend ({reason})", file=sys.stderr, flush=True)
        return model
    if model.device.type != "cpu":
        raise ValueError(f"the onnx backend runs on the CPU; this model is on {model.device} (use --backend torch)")
    return OnnxModel(model, folder, quantize)


def _why_not_onnx(model: Model) -> str | None:
    if model.device.type != "cpu":
        return f"the model is on {model.device}"
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed; pip install 'visembed[onnx]' for the faster CPU backend"
    return None


class OnnxModel(Model):
    """A `Model` whose encoders run in onnxruntime; `torch_model` keeps the module for everything else."""

    def __init__(self, torch_model: Model, folder: Path, quantize: str | None = None):
        super().__init__(torch_model.module, torch_model.config, torch_model.device)
        self.torch_model, self.quantize = torch_model, quantize
        graphs = graph_folder(Path(folder), quantize)
        self.graphs = graphs
        self._image = _session(graphs / IMAGE_GRAPH)
        self._text = _TextGraph(graphs / TEXT_GRAPH, graphs / TOKENIZER_FILE)
        self._text_cjk = (_TextGraph(graphs / CJK_TEXT_GRAPH, graphs / CJK_TOKENIZER_FILE)
                          if (graphs / CJK_TEXT_GRAPH).is_file() else None)
        if isinstance(torch_model, CaptionerModel):  # its captions read the image side through onnxruntime too
            features = _session(captioner_graph(Path(folder), graphs))
            torch_model.run_image_side_with(lambda pixels: features.run(None, {"pixels": pixels})[0])

    def __getattr__(self, name):  # a captioner's caption/reply/chat: the torch model's own
        if name == "torch_model":
            raise AttributeError(name)
        return getattr(self.torch_model, name)

    def encode_image(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError("encode_image takes a list of images (PIL images, paths or bytes), not one image")
        out = [self._image.run(None, {"pixels": self.pixels(images[start : start + batch_size]).numpy()})[0]
               for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        from visembed.models.text_hf import has_cjk

        texts = list(texts)
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        routes = [self._text_cjk is not None and has_cjk(text) for text in texts]
        for graph, wanted in ((self._text, False), (self._text_cjk, True)):
            rows = [i for i, cjk in enumerate(routes) if cjk == wanted]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                out[chunk] = graph.encode([texts[i] for i in chunk])
        return out


class _TextGraph:
    def __init__(self, graph: Path, tokenizer: Path):
        from tokenizers import Tokenizer

        self.session, self.tokenizer = _session(graph), Tokenizer.from_file(str(tokenizer))

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _session(path: Path):
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same share of the machine as torch takes
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_folder(folder: Path, quantize: str | None = None) -> Path:
    """The cached export of `folder`'s weights (made now if missing), quantised when asked."""
    from visembed.atomic import new_dir
    from visembed.checkpoint import weights_path
    from visembed.paths import cache_root

    digest = hashlib.sha256(GRAPH_FORMAT.encode())
    with open(weights_path(folder), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    base = cache_root() / "onnx" / digest.hexdigest()[:32]
    if not (base / IMAGE_GRAPH).is_file():
        with new_dir(base, replace=True) as tmp:
            export_onnx(folder, tmp)
    if quantize is None:
        return base
    quantized = base.parent / f"{base.name}-{quantize}"
    if not (quantized / IMAGE_GRAPH).is_file():
        with new_dir(quantized, replace=True) as tmp:
            _quantize_folder(base, tmp)
    return quantized


def captioner_graph(folder: Path, graphs: Path) -> Path:
    """A captioner's image-features graph beside its cached encoder graphs (exported once, checked
    against torch; the int8 cache quantises it too)."""
    from visembed.atomic import atomic_write

    path = graphs / CAPTIONER_FEATURES_GRAPH
    if path.is_file():
        return path
    if graphs.name.endswith("-int8"):
        float_graph = captioner_graph(folder, graphs.with_name(graphs.name[: -len("-int8")]))
        atomic_write(path, lambda tmp: _quantize_graph(float_graph, Path(tmp)))
    else:
        import tempfile

        with tempfile.TemporaryDirectory(dir=graphs.parent) as tmp:
            export_captioner_features(folder, tmp)
            os.replace(Path(tmp) / CAPTIONER_FEATURES_GRAPH, path)
    return path


def _quantize_folder(source: Path, out: Path) -> None:
    import shutil

    for item in source.iterdir():
        if item.suffix == ".onnx":
            _quantize_graph(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)


def _quantize_graph(source: Path, out: Path) -> None:
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime logs advice (and dumps graph pieces) through the root logger while quantising
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        logging.disable(logging.WARNING)
        try:
            # 7-bit weights (reduce_range): on CPUs without VNNI (AVX2 only) onnxruntime multiplies
            # uint8 activations by int8 weights with VPMADDUBSW, whose int16 sums saturate with 8-bit
            # weights (a ViT's vectors drifted to cosine 0.94 of float; 0.9997 with 7 bits, as fast)
            quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True, op_types_to_quantize=QUANTIZED_OPS)
        finally:
            logging.disable(logging.NOTSET)
    for leftover in out.parent.glob("*-opt.onnx"):  # onnxruntime's pre-processing copy, where it leaves one
        os.remove(leftover)

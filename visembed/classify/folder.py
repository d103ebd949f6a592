"""The classifier folder: what `visembed classify fit` writes and `visembed.load(DIR)` reads.

    classifier.json     {"format": "visembed-classifier", "version": 1, "method", "features",
                         "classes": [...], "model": the dual encoder folder (a path relative to this
                         folder, e.g. "model" for a fine-tuned copy, or absolute), "head": scalars,
                         "fit": how it was fitted (data, shots, seed, notes)}
    head.safetensors    the head's arrays (`methods.Head`: zero-shot class vectors, linear weights,
                        standardisation, Tip-Adapter keys and values); never pickled
    README.md           model card: method, classes, figures measured at fit time
    model/              (fine-tuned classifiers) the dual encoder the head reads
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from visembed.classify.features import image_features
from visembed.classify.methods import Head

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
FORMAT = "visembed-classifier"
VERSION = 1
ARRAYS = ("zs_weight", "weight", "bias", "mean", "scale", "keys", "values")
SCALARS = ("n_classes", "features", "zs_scale", "alpha", "beta", "block_norm")
MAX_CLASSES = 100_000
MAX_CONFIG_BYTES = 16 << 20


class ClassifierFolderError(ValueError):
    """A classifier folder that cannot be read (missing, damaged, or from a newer visembed)."""


def is_classifier_folder(folder: str | Path) -> bool:
    return (Path(folder) / CLASSIFIER_FILE).is_file()


def save_classifier(out: Path, head: Head, classes: list[str], model_ref: str, *, method: str,
                    fit_info: dict, card: str) -> None:
    """Write the classifier's files into `out` (a folder being filled, e.g. from `atomic.new_dir`)."""
    from safetensors.numpy import save_file

    from visembed.atomic import atomic_write, atomic_write_json, atomic_write_text

    arrays = {name: np.ascontiguousarray(getattr(head, name), np.float32) for name in ARRAYS
              if getattr(head, name) is not None}
    atomic_write(out / HEAD_FILE, lambda tmp: save_file(arrays, tmp))
    config = {"format": FORMAT, "version": VERSION, "method": method, "features": head.features,
              "classes": list(classes), "model": model_ref,
              "head": {name: getattr(head, name) for name in SCALARS}, "head_info": _plain(head.info),
              "fit": _plain(fit_info)}
    atomic_write_json(out / CLASSIFIER_FILE, config)
    atomic_write_text(out / "README.md", card)


def _plain(obj):
    """JSON-safe copy (numpy scalars to Python, dict keys to strings)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def read_config(folder: Path) -> dict:
    path = folder / CLASSIFIER_FILE
    if not path.is_file():
        raise ClassifierFolderError(f"{folder} is not a classifier folder (no {CLASSIFIER_FILE}; "
                                    "make one with `visembed classify fit`)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ClassifierFolderError(f"{path} is too large to be a classifier config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClassifierFolderError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ClassifierFolderError(f"{path} is not a visembed classifier config")
    if config.get("version") != VERSION:
        raise ClassifierFolderError(f"{path}: classifier format version {config.get('version')!r} is not "
                                    f"readable by this visembed (reads {VERSION})")
    classes = config.get("classes")
    if not (isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)):
        raise ClassifierFolderError(f"{path}: 'classes' must be a list of 2 or more class names")
    head = config.get("head")
    if not isinstance(head, dict) or head.get("n_classes") != len(classes) or not isinstance(config.get("model"), str):
        raise ClassifierFolderError(f"{path}: damaged ('head' and 'model' missing or not matching the classes)")
    return config


def read_head(folder: Path, config: dict) -> Head:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    scalars = config["head"]
    try:
        arrays = load_file(str(folder / HEAD_FILE))
    except (OSError, SafetensorError) as exc:
        raise ClassifierFolderError(f"{folder / HEAD_FILE}: cannot read the head ({exc})") from None
    unknown = set(arrays) - set(ARRAYS)
    if unknown:
        raise ClassifierFolderError(f"{folder / HEAD_FILE}: unexpected arrays {sorted(unknown)}")
    try:
        head = Head(int(scalars["n_classes"]), features=str(scalars["features"]), zs_scale=float(scalars["zs_scale"]),
                    alpha=float(scalars["alpha"]), beta=float(scalars["beta"]), info=config.get("head_info") or {},
                    block_norm=bool(scalars.get("block_norm", False)),  # folders written before it: standardised
                    **{name: arrays[name].astype(np.float32) for name in arrays})
    except (KeyError, TypeError, ValueError) as exc:
        raise ClassifierFolderError(f"{folder / CLASSIFIER_FILE}: damaged head settings ({exc})") from None
    _check_shapes(head, folder)
    return head


def _check_shapes(head: Head, folder: Path) -> None:
    c = head.n_classes
    problems = []
    if head.zs_weight is not None and head.zs_weight.shape[0] != c:
        problems.append("zs_weight")
    if head.weight is not None and (head.bias is None or head.weight.shape[0] != c or head.bias.shape != (c,)):
        problems.append("weight/bias")
    if head.weight is not None and head.mean is not None and head.mean.shape != (head.weight.shape[1],):
        problems.append("mean")
    if head.weight is not None and head.block_norm and head.mean is None:
        problems.append("block_norm without mean")
    if head.keys is not None and (head.values is None or head.values.shape != (len(head.keys), c)):
        problems.append("keys/values")
    if head.weight is None and head.zs_weight is None:
        problems.append("no linear part and no zero-shot part")
    if problems:
        raise ClassifierFolderError(f"{folder / HEAD_FILE}: arrays do not fit {c} classes ({', '.join(problems)})")


def model_folder(folder: Path, config: dict) -> Path:
    """The dual encoder folder a classifier reads (relative to the classifier folder, or absolute)."""
    ref = Path(config["model"])
    return ref if ref.is_absolute() else folder / ref


class Classifier:
    """A loaded classifier: `.classes`, `.predict(images, k)`, `.probabilities(images)`; it is also
    the dual encoder it reads (`.model`: encode_image / encode_text)."""

    def __init__(self, model, head: Head, classes: list[str], config: dict, folder: Path | None = None):
        self.model, self.head, self.classes, self.config, self.folder = model, head, list(classes), config, folder

    @classmethod
    def from_folder(cls, folder: str | Path, device=None) -> "Classifier":
        from visembed.models.inference import Model

        folder = Path(folder)
        config = read_config(folder)
        head = read_head(folder, config)
        source = model_folder(folder, config)
        if not source.is_dir():
            raise ClassifierFolderError(f"{folder}: its dual encoder {source} is missing (the classifier "
                                        "refers to it; move them together or fit again)")
        model = Model.from_folder(source, device)
        width = {"embedding": model.embed_dim, "pooled": model.module.vision.width}
        if head.zs_weight is not None and head.zs_weight.shape[1] != width["embedding"]:
            raise ClassifierFolderError(f"{folder}: the head does not fit the model {source} (embedding width)")
        return cls(model, head, config["classes"], config, folder)

    @property
    def method(self) -> str:
        return self.config.get("method", "")

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def encode_image(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        return self.model.encode_image(images, batch_size)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return self.model.encode_text(texts, batch_size)

    def probabilities(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities for images (PIL, paths or bytes); a bad image raises BadImage."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError("probabilities takes a list of images (PIL images, paths or bytes), not one image")
        return self.head.probabilities(image_features(self.model, images, batch_size))

    def predict(self, images: Sequence, k: int = 5, batch_size: int = 64) -> list[list[dict]]:
        """For each image its top-k classes, best first: [{"label", "probability"}, ...]."""
        if k < 1:
            raise ValueError(f"k must be 1 or more, got {k}")
        probs = self.probabilities(images, batch_size)
        k = min(k, len(self.classes))
        out = []
        for row in probs:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": self.classes[i], "probability": float(row[i])} for i in top])
        return out

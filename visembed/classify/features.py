"""Image features for classifiers, computed once per (model, data, split) and cached on disk.

Every cached-feature method (zero-shot, probes, kNN, Tip-Adapter) reads the same two arrays per
image, so a few-shot curve of 6 methods x 6 shot counts x 3 seeds embeds each image once:

    embedding   the model's image embedding (embed_dim, L2-normalised): what search and zero-shot use
    pooled      the image tower's pooled features before the projection head (tower width, raw):
                richer for a linear probe (ImageNet features of a frozen EfficientNet, say)

Stable API (other features build on it):

    fs = dataset_features(model, "builtin:emoji?label=subgroup", "train", model_dir=DIR)  # cached
    fs.labels, fs.ids, fs.embedding, fs.pooled, fs.select("pooled"), fs.subset(indices)
    feats = image_features(model, [pil_or_path, ...])   # {"embedding": (N, D), "pooled": (N, W)}

The cache lives under `$VISEMBED_CACHE/classify-features/`, keyed by the model folder's weights
(path, size, modification time), the data spec, the split and `FEATURE_VERSION`; files are plain
`.npz` arrays read with `allow_pickle=False`. A split may join several with "+" ("val+test").
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visembed.data import DataError, SkipCounter, decoded_batches, open_dataset

FEATURE_VERSION = 1  # bump when what is stored changes
FEATURE_KINDS = ("embedding", "pooled", "both")
BATCH = 128


@dataclass
class FeatureSet:
    """Features of the usable labelled images of one dataset split, in dataset order."""

    ids: list[str]
    labels: list[str]
    embedding: np.ndarray  # (N, D) float32, L2-normalised
    pooled: np.ndarray  # (N, W) float32
    classes: list[str]  # the dataset's class names (may include classes no image here has)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, kind: str) -> np.ndarray:
        """The features a head reads: "embedding", "pooled" or "both" (concatenated)."""
        if kind == "embedding":
            return self.embedding
        if kind == "pooled":
            return self.pooled
        if kind == "both":
            return np.concatenate([self.embedding, self.pooled], axis=1)
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, not {kind!r}")

    def subset(self, indices) -> "FeatureSet":
        idx = np.asarray(indices, dtype=np.int64)
        return FeatureSet([self.ids[i] for i in idx], [self.labels[i] for i in idx], self.embedding[idx],
                          self.pooled[idx], self.classes, self.skipped)


def select_features(feats: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """`FeatureSet.select` for the dict `image_features` returns."""
    if kind == "both":
        return np.concatenate([feats["embedding"], feats["pooled"]], axis=1)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, not {kind!r}")
    return feats[kind]


@torch.no_grad()
def pixel_features(module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (B, 3, S, S) in [0, 1] -> (embedding (B, D) L2-normalised, pooled (B, W)) of a dual encoder."""
    pooled = module.vision(module.normalize_pixels(pixels))  # (B, W)
    embedding = F.normalize(module.visual_projection(pooled).float(), dim=-1)  # (B, D)
    return embedding, pooled.float()


def image_features(model, images: Sequence, batch_size: int = BATCH) -> dict[str, np.ndarray]:
    """{"embedding", "pooled"} float32 arrays for decoded images (PIL, paths or bytes; a bad one
    raises `BadImage`). `model` is what `visembed.load` returns for a dual encoder."""
    embeddings, pooled = [], []
    for start in range(0, len(images), batch_size):
        pixels = model.pixels(images[start : start + batch_size]).to(model.device)
        e, p = pixel_features(model.module, pixels)  # float32: features are cached and compared across runs
        embeddings.append(e.cpu().numpy())
        pooled.append(p.cpu().numpy())
    width = model.module.vision.width
    return {
        "embedding": np.concatenate(embeddings) if embeddings else np.zeros((0, model.embed_dim), np.float32),
        "pooled": np.concatenate(pooled) if pooled else np.zeros((0, width), np.float32),
    }


def _model_key(model_dir) -> str:
    """Identifies the weights: the folder's weight file (path, size, modification time)."""
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        return ""
    st = weights.stat()
    return f"{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_path(model_dir, spec: str, split: str, options: dict) -> Path | None:
    from visembed.paths import cache_root

    key = _model_key(model_dir) if model_dir else ""
    if not key:
        return None
    text = json.dumps([FEATURE_VERSION, key, spec, split, sorted(options.items())])
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return cache_root() / "classify-features" / f"{digest}.npz"


def _load_cached(path: Path) -> FeatureSet | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return FeatureSet(list(z["ids"]), list(z["labels"]), z["embedding"], z["pooled"], meta["classes"],
                              meta["skipped"])
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is made again


def _save_cached(path: Path, fs: FeatureSet) -> None:
    from visembed.atomic import atomic_write_bytes

    buf = io.BytesIO()
    meta = json.dumps({"classes": fs.classes, "skipped": fs.skipped})
    np.savez(buf, ids=np.array(fs.ids, dtype=str), labels=np.array(fs.labels, dtype=str), embedding=fs.embedding,
             pooled=fs.pooled, meta=np.array(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def dataset_features(model, spec: str, split: str = "train", *, model_dir=None, progress: bool = True,
                     **data_options) -> FeatureSet:
    """Features of every labelled, decodable image of `split` of `spec` (splits joined by "+" are
    concatenated); images without a label and undecodable ones are skipped and counted in
    `.skipped`. `model_dir`: the folder `model` was loaded from; given, the features are cached
    (keyed by its weights). `data_options` go to `open_dataset` (e.g. `label_column=`)."""
    path = cache_path(model_dir, spec, split, data_options)
    if path is not None and path.is_file():
        found = _load_cached(path)
        if found is not None:
            return found
    parts = [s for s in split.split("+") if s]
    ids, labels, emb, pooled, classes = [], [], [], [], None
    skipped = SkipCounter()
    for part in parts:
        ds = open_dataset(spec, part, **data_options)
        if getattr(ds, "streaming", False):
            raise DataError(f"{spec}: classifiers need a map-style dataset (not streamed shards)")
        classes = classes or list(getattr(ds, "labels", None) or [])
        from tqdm import tqdm

        with tqdm(total=len(ds), desc=f"features {part}", unit="img", disable=not progress) as bar:
            for batch in decoded_batches(ds, skipped, BATCH, need_label=True):
                feats = image_features(model, [image for _, image in batch])
                ids += [s.id for s, _ in batch]
                labels += [str(s.label) for s, _ in batch]
                emb.append(feats["embedding"])
                pooled.append(feats["pooled"])
                bar.update(len(batch))
        if getattr(ds, "skipped", None) is not None:
            skipped.update(ds.skipped)
    if not ids:
        raise DataError(f"no labelled, decodable images in split {split!r} of {spec} (skipped: {skipped.as_dict()})")
    classes = classes or sorted(set(labels))
    fs = FeatureSet(ids, labels, np.concatenate(emb), np.concatenate(pooled), classes, skipped.as_dict())
    if path is not None:
        _save_cached(path, fs)
    return fs

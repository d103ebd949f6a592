"""Image features for classifiers, computed once per (model, data, split) and cached on disk.

Every cached-feature method (zero-shot, probes, kNN, Tip-Adapter) reads the same arrays per
image, so a few-shot curve of 6 methods x 6 shot counts x 3 seeds embeds each image once:

    embedding   the model's image embedding (embed_dim, L2-normalised): what search and zero-shot use
    pooled      the image tower's pooled features before the projection head (tower width, raw):
                richer for a linear probe (ImageNet features of a frozen EfficientNet, say)
    layout      the picture itself at 8 x 8 px (192 values): colour and layout, which towers trained
                for semantics pool away and which carry much of some tasks (icons, emoji)
    middle      the tower's middle stage, averaged over its cells (EfficientNet-Lite0: block 7, 80
    late        values) and the stage before the last (block 14, 192): mid-level parts and textures
                between the layout and the pooled features (`VisionTower.forward_stages`)

A head reads one kind or several joined by "+" ("pooled+layout"); "both" is "embedding+pooled".

Stable API (other features build on it):

    fs = dataset_features(model, "builtin:emoji?label=subgroup", "train", model_dir=DIR)  # cached
    fs.labels, fs.ids, fs.embedding, fs.pooled, fs.layout, fs.middle, fs.late, fs.select("pooled"), fs.subset(indices)
    feats = image_features(model, [pil_or_path, ...])   # {"embedding": (N, D), "pooled": (N, W), "layout", ...}

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

FEATURE_VERSION = 3  # bump when what is stored changes
BASE_KINDS = ("embedding", "pooled", "layout", "middle", "late")
FEATURE_KINDS = ("embedding", "pooled", "layout", "middle", "late", "both", "pooled+layout", "embedding+pooled+layout",
                 "embedding+pooled+layout+middle+late")
LAYOUT_SIZE = 8  # px: the `layout` features are the image averaged down to this size
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
    layout: np.ndarray | None = None  # (N, 3 * LAYOUT_SIZE**2) float32, pixels in [0, 1]
    middle: np.ndarray | None = None  # (N, stage_widths[0]) float32
    late: np.ndarray | None = None  # (N, stage_widths[1]) float32

    def __len__(self) -> int:
        return len(self.ids)

    def arrays(self) -> dict[str, np.ndarray]:
        """{"embedding", "pooled", "layout", "middle", "late"}: what `Head.logits` and `select_features` read."""
        return {"embedding": self.embedding, "pooled": self.pooled, "layout": self.layout, "middle": self.middle,
                "late": self.late}

    def select(self, kind: str) -> np.ndarray:
        """The features a head reads: one kind, or several joined by "+" (concatenated); "both" is
        "embedding+pooled"."""
        return select_features(self.arrays(), kind)

    def subset(self, indices) -> "FeatureSet":
        idx = np.asarray(indices, dtype=np.int64)
        rows = {k: None if getattr(self, k) is None else getattr(self, k)[idx] for k in ("layout", "middle", "late")}
        return FeatureSet([self.ids[i] for i in idx], [self.labels[i] for i in idx], self.embedding[idx],
                          self.pooled[idx], self.classes, self.skipped, **rows)


def feature_parts(kind: str) -> list[str]:
    """"pooled+layout" -> ["pooled", "layout"]; a ValueError names the kinds for anything else."""
    parts = ["embedding", "pooled"] if kind == "both" else kind.split("+")
    if not parts or any(p not in BASE_KINDS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)} (kinds joined by '+'), not {kind!r}")
    return parts


def select_features(feats: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """`FeatureSet.select` for the dict `image_features` returns."""
    parts = feature_parts(kind)
    return feats[parts[0]] if len(parts) == 1 else np.concatenate([feats[p] for p in parts], axis=1)


def pixel_features(module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """pixels (B, 3, S, S) in [0, 1] -> {"embedding" (B, D) L2-normalised, "pooled" (B, W), "layout"
    (B, 3 * LAYOUT_SIZE**2), "middle", "late"} of a dual encoder (differentiable: the exported
    classifier runs it)."""
    pooled, middle, late = (t.float() for t in module.vision.forward_stages(module.normalize_pixels(pixels)))
    embedding = F.normalize(module.visual_projection(pooled).float(), dim=-1)  # (B, D); pooled: (B, W)
    layout = F.adaptive_avg_pool2d(pixels.float(), LAYOUT_SIZE).flatten(1)  # (B, 3 * 8 * 8)
    return {"embedding": embedding, "pooled": pooled, "layout": layout, "middle": middle, "late": late}


@torch.no_grad()
def image_features(model, images: Sequence, batch_size: int = BATCH) -> dict[str, np.ndarray]:
    """{"embedding", "pooled", "layout", "middle", "late"} float32 arrays for decoded images (PIL, paths or bytes; a
    bad one raises `BadImage`). `model` is what `visembed.load` returns for a dual encoder."""
    chunks: dict[str, list[np.ndarray]] = {kind: [] for kind in BASE_KINDS}
    for start in range(0, len(images), batch_size):
        pixels = model.pixels(images[start : start + batch_size]).to(model.device)
        found = pixel_features(model.module, pixels)  # float32: features are cached and compared across runs
        for kind in BASE_KINDS:
            chunks[kind].append(found[kind].cpu().numpy())
    middle, late = model.module.vision.stage_widths
    widths = {"embedding": model.embed_dim, "pooled": model.module.vision.width, "layout": 3 * LAYOUT_SIZE**2,
              "middle": middle, "late": late}
    return {kind: np.concatenate(chunks[kind]) if chunks[kind] else np.zeros((0, widths[kind]), np.float32)
            for kind in BASE_KINDS}


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
                              meta["skipped"], z["layout"], z["middle"], z["late"])
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is made again


def _save_cached(path: Path, fs: FeatureSet) -> None:
    from visembed.atomic import atomic_write_bytes

    buf = io.BytesIO()
    meta = json.dumps({"classes": fs.classes, "skipped": fs.skipped})
    np.savez(buf, ids=np.array(fs.ids, dtype=str), labels=np.array(fs.labels, dtype=str), embedding=fs.embedding,
             pooled=fs.pooled, layout=fs.layout, middle=fs.middle, late=fs.late, meta=np.array(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def dataset_features(model, spec: str, split: str = "train", *, model_dir=None, progress: bool = True,
                     labelled: bool = True, **data_options) -> FeatureSet:
    """Features of every labelled, decodable image of `split` of `spec` (splits joined by "+" are
    concatenated); images without a label and undecodable ones are skipped and counted in
    `.skipped`. `labelled=False`: every decodable image, its label "" where it has none.
    `model_dir`: the folder `model` was loaded from; given, the features are cached (keyed by its
    weights). `data_options` go to `open_dataset` (e.g. `label_column=`)."""
    path = cache_path(model_dir, spec, split, data_options if labelled else {**data_options, "unlabelled": True})
    if path is not None and path.is_file():
        found = _load_cached(path)
        if found is not None:
            return found
    parts = [s for s in split.split("+") if s]
    ids, labels, classes = [], [], None
    chunks: dict[str, list[np.ndarray]] = {kind: [] for kind in BASE_KINDS}
    skipped = SkipCounter()
    for part in parts:
        ds = open_dataset(spec, part, need="label" if labelled else "nothing", **data_options)
        if getattr(ds, "streaming", False):
            raise DataError(f"{spec}: classifiers need a map-style dataset (not streamed shards)")
        classes = classes or list(getattr(ds, "labels", None) or [])
        from tqdm import tqdm

        with tqdm(total=len(ds), desc=f"features {part}", unit="img", disable=not progress) as bar:
            for batch in decoded_batches(ds, skipped, BATCH, need_label=labelled):
                feats = image_features(model, [image for _, image in batch])
                ids += [s.id for s, _ in batch]
                labels += ["" if s.label is None else str(s.label) for s, _ in batch]
                for kind in BASE_KINDS:
                    chunks[kind].append(feats[kind])
                bar.update(len(batch))
        if getattr(ds, "skipped", None) is not None:
            skipped.update(ds.skipped)
    if not ids:
        raise DataError(f"no {'labelled, ' if labelled else ''}decodable images in split {split!r} of {spec} "
                        f"(skipped: {skipped.as_dict()})")
    classes = classes or sorted(set(labels) - {""})
    arrays = {kind: np.concatenate(chunks[kind]) for kind in BASE_KINDS}
    fs = FeatureSet(ids, labels, arrays["embedding"], arrays["pooled"], classes, skipped.as_dict(), arrays["layout"],
                    arrays["middle"], arrays["late"])
    if path is not None:
        _save_cached(path, fs)
    return fs

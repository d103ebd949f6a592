"""One entry point from (method, shots' features, labels) to a `Head`: what `classify fit`, the
few-shot curve and the benchmark call, so that all three fit a method the same way."""

from __future__ import annotations

import numpy as np

from visembed.classify import methods as M
from visembed.classify.features import FeatureSet

FEATURE_METHODS = ("zeroshot", "zs-pseudo", "probe", "semi", "zs-probe", "tip", "tip-f")  # on cached features
UNLABELLED_METHODS = ("zeroshot", "zs-pseudo")  # read no label: the class names (and, zs-pseudo, the images)
POOL_METHODS = ("zs-pseudo", "semi")  # read the split's images without their labels (semi: beside the shots')
ZERO_SHOT_AT_0 = ("zeroshot", "zs-probe", "tip", "tip-f")  # with no shot, these are zero-shot itself
METHODS = (*FEATURE_METHODS, "finetune")  # finetune: the training loop (visembed.train.tasks.classification)
# What each method's linear part reads by default, chosen by measurement (docs/classify.md)
DEFAULT_FEATURES = {"probe": "embedding+pooled+layout+middle+late", "zs-probe": "embedding+pooled+layout+middle+late",
                    "zs-pseudo": "embedding+pooled+layout+middle+late", "semi": "embedding+pooled+layout+middle+late",
                    "knn": "pooled",
                    "zeroshot": "embedding", "tip": "embedding", "tip-f": "embedding", "finetune": "embedding"}


def needs_text(method: str) -> bool:
    """Whether the method reads the class names' text vectors."""
    return method in ("zeroshot", "zs-pseudo", "semi", "zs-probe", "tip", "tip-f", "finetune")


def fit_head(method: str, shots: FeatureSet | None, y: np.ndarray, n_classes: int, *,
             class_weights: np.ndarray | None = None, features: str | None = None, seed: int = 0,
             zs_scale: float = M.ZS_SCALE, normalize: str = M.PROBE_NORMALIZE,
             pool: FeatureSet | None = None) -> M.Head:
    """Fit `method` on the shots (`y`: their class indices). `class_weights` (C, D): the class text
    vectors (`templates.class_vectors`), needed by the methods that start from zero-shot.
    `normalize`: how the probe treats its features (`methods.fit_probe`). `pool`: unlabelled images
    (zs-pseudo reads them instead of shots, semi beside them; their labels are not read)."""
    if method not in FEATURE_METHODS:
        raise ValueError(f"method must be one of {', '.join(FEATURE_METHODS)}, not {method!r}")
    features = features or DEFAULT_FEATURES[method]
    if needs_text(method) and class_weights is None:
        raise ValueError(f"method {method} needs the class names' text vectors")
    if method == "zs-pseudo":
        if pool is None:
            raise ValueError("method zs-pseudo needs unlabelled images (the data's images; their labels are not read)")
        _check_features(pool, features, method)
        return M.fit_zs_pseudo(pool.select(features), pool.embedding, class_weights, features=features,
                               widths=M.block_widths(pool.arrays(), features), seed=seed, zs_scale=zs_scale,
                               normalize=normalize)
    if method == "zeroshot" or shots is None or len(y) == 0:
        if method not in ZERO_SHOT_AT_0:
            raise ValueError(f"method {method} needs labelled shots (--shots 1 or more)")
        head = M.zeroshot_head(class_weights)
        head.zs_scale = zs_scale
        return head
    if method == "semi":
        if pool is None:
            raise ValueError("method semi needs the data's unlabelled images beside the shots")
        _check_features(shots, features, method)
        return M.fit_semi(shots.select(features), y, pool.select(features), pool.embedding, class_weights,
                          features=features, widths=M.block_widths(shots.arrays(), features), seed=seed,
                          zs_scale=zs_scale)
    if method in ("probe", "zs-probe"):
        _check_features(shots, features, method)
    if method == "probe":
        return M.fit_probe(shots.select(features), y, n_classes, features=features, seed=seed, normalize=normalize,
                           widths=M.block_widths(shots.arrays(), features))
    if method == "zs-probe":
        return M.fit_zs_probe(shots.select(features), shots.embedding, y, class_weights, features=features,
                              seed=seed, zs_scale=zs_scale)
    if method == "tip":
        return M.tip_head(shots.embedding, y, class_weights, alpha=None, beta=None, zs_scale=zs_scale, seed=seed)
    return M.fit_tip_f(shots.embedding, y, class_weights, alpha=None, beta=None, seed=seed, zs_scale=zs_scale)


def _check_features(fs: FeatureSet, features: str, method: str) -> None:
    if sum(M.block_widths(fs.arrays(), features)) == 0:
        raise ValueError(f"{method}: features {features!r} are empty for this model's image tower (it has no "
                         "stages); read embedding, pooled or layout")

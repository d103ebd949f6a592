"""Evaluation of a model whose text tower was not trained (`config.trains_text_tower` False: an
image-only task such as `simclr`): what its image embedding is worth is measured with labels, by a
linear probe and nearest neighbours, never by text retrieval (its text tower is noise).

The probe and the kNN are the classifiers' (`visembed.classify`: `fit_probe`, CLIP's protocol with
C chosen on held-back shots; `knn_predict`, DINO's weighted 20-NN vote), on the image embedding.
"""

from __future__ import annotations

import numpy as np

from visembed.classify import dataset_features, fit_probe, knn_predict
from visembed.data import DataError


def fitted_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                  seed: int = 0, C: float | None = None) -> dict[str, float]:
    """Top-1 of a linear probe (`C`: None chooses it on held-back training images) and of a kNN vote
    fitted on (train_x, train_y), on the test images; labels are strings, a test class the training
    images lack counts as a miss."""
    classes = sorted(set(train_y.tolist()) | set(test_y.tolist()))
    index = {name: i for i, name in enumerate(classes)}
    y, ty = np.array([index[v] for v in train_y]), np.array([index[v] for v in test_y])
    probe = fit_probe(train_x, y, len(classes), seed=seed, C=C)
    predicted = probe.logits({"embedding": test_x}).argmax(1)
    nearest = knn_predict(train_x, y, test_x, len(classes))
    return {"probe_top1": float((predicted == ty).mean()), "knn_top1": float((nearest == ty).mean())}


def few_shot_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                    shots: int, seed: int = 0, C: float | None = None) -> dict[str, float]:
    """`fitted_scores` on `shots` training images per class (classes with fewer keep all they have),
    drawn with `seed`, tested on the test images of those classes."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(train_y == c))[:shots] for c in np.unique(train_y)])
    known = np.isin(test_y, train_y[chosen])
    if not known.any():
        raise DataError("no test image belongs to a class of the training shots")
    return fitted_scores(train_x[chosen], train_y[chosen], test_x[known], test_y[known], seed=seed, C=C)


def evaluate_image_only(model, spec: str, split: str = "test", *, limit: int | None = None,
                        progress: bool = True, model_dir=None) -> dict:
    """What `visembed eval` reports for an image-only model: a linear probe and kNN fitted on the
    labelled `train` split of `spec` (at most `limit` images of each split), top-1 on `split`."""
    if split == "train":
        raise DataError("an image-only model is evaluated on a split other than train (the probe and kNN "
                        "learn from train): pass --split val or --split test")
    train = dataset_features(model, spec, "train", model_dir=model_dir, progress=progress)
    test = dataset_features(model, spec, split, model_dir=model_dir, progress=progress)
    if limit:
        train, test = train.subset(np.arange(min(limit, len(train)))), test.subset(np.arange(min(limit, len(test))))
    scores = fitted_scores(train.embedding, np.array(train.labels), test.embedding, np.array(test.labels))
    skipped = dict(train.skipped)
    for reason, n in test.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    return {"split": split, "data": spec, **scores, "train_images": len(train), "test_images": len(test),
            "skipped": skipped}

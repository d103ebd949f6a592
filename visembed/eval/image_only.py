"""Evaluation of a model whose text tower was not trained (`config.trains_text_tower` False: an
image-only task such as `simclr`): what its image embedding is worth is measured with labels,
by nearest neighbours and a linear probe, never by text retrieval (its text tower is noise).

`knn_top1_on` is the cheap trend the training loop logs (leave-one-out on one split);
`evaluate_image_only` what `visembed eval` reports.
"""

from __future__ import annotations

import numpy as np

from visembed.data import DataError, SkipCounter, open_dataset


def labelled_embeddings(model, spec: str, split: str, *, limit: int | None = None, progress: bool = False):
    """(image vectors float32 (N, D), labels (N,) as str, skipped) of the samples of `split` that
    have a label and decode; a split without labels is a DataError."""
    from visembed.eval.run import embed_images

    ds = open_dataset(spec, split, need="label")
    skipped = SkipCounter()
    samples = (sample for sample in ds if sample.label is not None)
    total = None if getattr(ds, "streaming", False) else len(ds)
    kept, vectors = embed_images(model, samples, skipped, limit=limit, progress=progress, total=total,
                                 desc=f"{split} images")
    if not kept:
        raise DataError(f"no labelled, usable images in split {split!r} of {spec}: kNN and probe accuracy need "
                        "labels (builtin:emoji has them; class folders give them)")
    return vectors, np.array([sample.label for sample in kept]), skipped


def knn_top1_on(model, spec: str, split: str, *, limit: int | None = None) -> dict[str, float]:
    """Leave-one-out nearest-neighbour top-1 (cosine) within one labelled split."""
    from sklearn.neighbors import NearestNeighbors

    vectors, labels, _ = labelled_embeddings(model, spec, split, limit=limit)
    if len(vectors) < 2:
        raise DataError(f"split {split!r} of {spec} has fewer than 2 labelled images")
    _, index = NearestNeighbors(n_neighbors=2).fit(vectors).kneighbors(vectors)  # (N, 2): itself, then its neighbour
    nearest = np.where(index[:, 0] == np.arange(len(vectors)), index[:, 1], index[:, 0])
    return {"knn_loo_top1": float((labels[nearest] == labels).mean())}


def fitted_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Top-1 of a linear probe (logistic regression on standardised features) and of the nearest
    training image (cosine), both fitted on (train_x, train_y), on the test images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1)).fit(train_x, train_y)
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(train_x, train_y)
    return {"probe_top1": float((probe.predict(test_x) == test_y).mean()),
            "knn_top1": float((knn.predict(test_x) == test_y).mean())}


def few_shot_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                    shots: int, seed: int = 0) -> dict[str, float]:
    """`fitted_scores` on `shots` training images per class (classes with fewer keep all they have),
    drawn with `seed`, tested on the test images of those classes."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(train_y == c))[:shots] for c in np.unique(train_y)])
    known = np.isin(test_y, train_y[chosen])
    if not known.any():
        raise DataError("no test image belongs to a class of the training shots")
    return fitted_scores(train_x[chosen], train_y[chosen], test_x[known], test_y[known])


def evaluate_image_only(model, spec: str, split: str = "test", *, limit: int | None = None,
                        progress: bool = True) -> dict:
    """What `visembed eval` reports for an image-only model: a linear probe and kNN fitted on the
    labelled `train` split of `spec`, top-1 on `split` (classes the train split lacks count as
    misses), on the image embedding."""
    if split == "train":
        raise DataError("an image-only model is evaluated on a split other than train (the probe and kNN "
                        "learn from train): pass --split val or --split test")
    train_x, train_y, train_skipped = labelled_embeddings(model, spec, "train", limit=limit, progress=progress)
    test_x, test_y, skipped = labelled_embeddings(model, spec, split, limit=limit, progress=progress)
    skipped.update(train_skipped)
    scores = fitted_scores(train_x, train_y, test_x, test_y)
    return {"split": split, "data": spec, **scores, "train_images": len(train_x), "test_images": len(test_x),
            "skipped": skipped.as_dict()}

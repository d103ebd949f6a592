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

    ds = open_dataset(spec, split)
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

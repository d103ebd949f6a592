"""Zero-shot classification: each class is the mean of its prompt embeddings (CLIP's ensembling).

Ties rank pessimistically, as in `retrieval`: the true class is placed after every other class that
scores the same, so a collapsed or broken model scores chance or worse, never perfect. NaN/inf in
the embeddings raises.
"""

from __future__ import annotations

import numpy as np

from visembed.eval.retrieval import check_finite, pessimistic_ranks

DEFAULT_TEMPLATES = ("{}", "a picture of {}", "an emoji of {}")


def class_embeddings(encode_text, classnames: list[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> np.ndarray:
    """(C, D) L2-normalised class vectors from `encode_text(list[str]) -> (N, D)`."""
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_text(prompts).reshape(len(classnames), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zeroshot_accuracy(image_emb: np.ndarray, labels: list[str], class_emb: np.ndarray, classnames: list[str],
                      prefix: str = "") -> dict[str, float]:
    """Top-1/top-5 accuracy and mean per-class recall of predicting `labels` among `classnames`."""
    check_finite("image embeddings", image_emb)
    check_finite("class embeddings", class_emb)
    index = {c: i for i, c in enumerate(classnames)}
    y = np.array([index[label] for label in labels])
    scores = image_emb @ class_emb.T  # (N, C)
    check_finite("similarity scores", scores)
    ranks = pessimistic_ranks(scores, y[:, None] == np.arange(len(classnames))[None, :])  # (N,)
    top1, top5 = ranks == 1, ranks <= 5
    per_class = [top1[y == c].mean() for c in np.unique(y)]
    return {f"{prefix}zeroshot_top1": float(top1.mean()), f"{prefix}zeroshot_top5": float(top5.mean()),
            f"{prefix}zeroshot_mean_per_class_recall": float(np.mean(per_class)),
            f"{prefix}zeroshot_num_classes": len(classnames)}

"""Zero-shot classification: each class is the mean of its prompt embeddings (CLIP's ensembling)."""

from __future__ import annotations

import numpy as np

DEFAULT_TEMPLATES = ("{}", "a picture of {}", "an emoji of {}")


def class_embeddings(encode_text, classnames: list[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> np.ndarray:
    """(C, D) L2-normalised class vectors from `encode_text(list[str]) -> (N, D)`."""
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_text(prompts).reshape(len(classnames), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zeroshot_accuracy(image_emb: np.ndarray, labels: list[str], class_emb: np.ndarray, classnames: list[str],
                      prefix: str = "") -> dict[str, float]:
    """Top-1/top-5 accuracy and mean per-class recall of predicting `labels` among `classnames`."""
    index = {c: i for i, c in enumerate(classnames)}
    y = np.array([index[label] for label in labels])
    scores = image_emb @ class_emb.T  # (N, C)
    order = np.argsort(-scores, axis=1)
    top1 = order[:, 0] == y
    top5 = (order[:, :5] == y[:, None]).any(axis=1)
    per_class = [top1[y == c].mean() for c in np.unique(y)]
    return {f"{prefix}zeroshot_top1": float(top1.mean()), f"{prefix}zeroshot_top5": float(top5.mean()),
            f"{prefix}zeroshot_mean_per_class_recall": float(np.mean(per_class)),
            f"{prefix}zeroshot_num_classes": len(classnames)}

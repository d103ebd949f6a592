"""Classification metrics on class scores: top-1, top-5, mean per-class recall, per-class recall,
and the confusion matrix (drawn with matplotlib on request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def classification_metrics(scores: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """scores (N, C), y (N,) class indices. Ties rank pessimistically (the true class after every
    class scoring the same), so a constant classifier scores chance or worse, never perfect."""
    if not np.isfinite(scores).all():
        raise ValueError("class scores contain NaN or inf")
    y = np.asarray(y, np.int64)
    true = scores[np.arange(len(y)), y][:, None]
    rank = (scores >= true).sum(axis=1)  # 1 = top
    top1, top5 = rank == 1, rank <= min(5, scores.shape[1])
    present = np.unique(y)
    per_class = {classes[c]: float(top1[y == c].mean()) for c in present}
    return {"top1": float(top1.mean()), "top5": float(top5.mean()),
            "mean_per_class_recall": float(np.mean(list(per_class.values()))) if per_class else 0.0,
            "num_images": int(len(y)), "num_classes": len(classes), "per_class_recall": per_class}


def confusion_matrix(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted."""
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return out


def plot_confusion(matrix: np.ndarray, classes: list[str], out: str | Path) -> Path:
    """A confusion matrix picture (rows normalised to recall) written to `out` (.png, .svg, .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    norm = matrix / np.maximum(rows, 1)
    side = min(24.0, 3 + 0.18 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    if len(classes) <= 120:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""Few-shot protocol: labels to class indices, seeded shot draws, the checks that turn bad labelled
data into one clear sentence."""

from __future__ import annotations

import numpy as np

from visembed.data import DataError


def class_index(labels: list[str], classes: list[str]) -> np.ndarray:
    """(N,) index of each label in `classes`, -1 for a label the list does not know."""
    where = {c: i for i, c in enumerate(classes)}
    return np.array([where.get(label, -1) for label in labels], np.int64)


def check_classes(classes: list[str], y: np.ndarray, what: str) -> None:
    """A DataError for labelled data a classifier cannot be fitted on: fewer than two classes, or
    classes without a single usable image."""
    if len(classes) < 2:
        raise DataError(f"{what}: a classifier needs at least two classes, found {len(classes)} ({', '.join(classes)})")
    counts = np.bincount(y[y >= 0], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{what}: class(es) {shown} have no usable image; drop them or add images")


def draw_shots(y: np.ndarray, n_classes: int, shots: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(indices of `shots` images per class drawn with `seed`, notes). A class with fewer images
    gives all it has, and a note says so; `shots` 0 draws nothing (zero-shot)."""
    if shots < 0:
        raise ValueError(f"--shots must be 0 or more, got {shots}")
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    if shots == 0:
        return np.zeros(0, np.int64), []
    for c in range(n_classes):
        pool = np.flatnonzero(y == c)
        take = min(shots, len(pool))
        if take < shots:
            short.append(f"{c}:{len(pool)}")
        chosen += list(rng.choice(pool, take, replace=False)) if take else []
    notes = []
    if short:
        notes.append(f"{len(short)} class(es) have fewer than {shots} images; used what there is")
    return np.array(sorted(chosen), np.int64), notes

"""Few-shot curves: top-1 of each method at each shot count, mean ± std over seeds, on cached
features (every image embedded once), drawn with matplotlib and returned as JSON-ready numbers.

Protocol: shots are drawn (seeded) from `train_split`; the test images are all of `test_split`
(never a shot: different splits); the classes are those with images in both. Zero-shot (0 shots)
is one number, the same for every seed; methods that start from it (zs-probe, tip, tip-f) share
it at 0 shots. `zs-pseudo` is a 0-shot point of its own: it reads the images of `train_split`
without their labels; `semi` reads them beside its shots (from 1 shot: with none it is zs-pseudo). `knn` (DINO's weighted kNN on the method's features) is a reference line.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from visembed.classify.features import FeatureSet, dataset_features
from visembed.classify.fit import DEFAULT_FEATURES, POOL_METHODS, ZERO_SHOT_AT_0, fit_head, needs_text
from visembed.classify.methods import PROBE_NORMALIZE, knn_scores
from visembed.classify.metrics import classification_metrics
from visembed.classify.run import model_scale, say
from visembed.classify.shots import check_classes, class_index, draw_shots
from visembed.classify.templates import class_vectors
from visembed.data import DataError

CURVE_METHODS = ("zeroshot", "zs-pseudo", "probe", "semi", "zs-probe", "tip", "tip-f", "knn")


def curve_data(model, model_dir, spec: str, *, train_split: str = "train", test_split: str = "test",
               progress: bool = True, **data_options) -> tuple[FeatureSet, np.ndarray, FeatureSet, np.ndarray, list[str]]:
    """(train features, their class indices, test features, theirs, classes) restricted to the
    classes with images in both splits."""
    train = dataset_features(model, spec, train_split, model_dir=model_dir, progress=progress, **data_options)
    test = dataset_features(model, spec, test_split, model_dir=model_dir, progress=progress, **data_options)
    both = set(train.labels) & set(test.labels)
    order = [c for c in train.classes if c in both] + sorted(both - set(train.classes))
    classes = order
    if len(classes) < 2:
        raise DataError(f"{spec}: {train_split} and {test_split} share {len(classes)} class(es); a curve needs two or more")
    y_train, y_test = class_index(train.labels, classes), class_index(test.labels, classes)
    keep_train, keep_test = np.flatnonzero(y_train >= 0), np.flatnonzero(y_test >= 0)
    check_classes(classes, y_train, f"{spec} ({train_split})")
    return (train.subset(keep_train), y_train[keep_train], test.subset(keep_test), y_test[keep_test], classes)


def few_shot_curve(model, model_dir, spec: str, *, shots=(0, 1, 2, 4, 8, 16), seeds: int = 3,
                   methods=CURVE_METHODS, features: dict[str, str] | None = None,
                   templates: tuple[str, ...] | None = None, train_split: str = "train", test_split: str = "test",
                   probe_normalize: str = PROBE_NORMALIZE, progress: bool = True, **data_options) -> dict:
    """{"classes", "test_images", "methods": {method: {shots: {"mean", "std", "runs"}}}, "seconds"}."""
    unknown = [m for m in methods if m not in CURVE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; curve methods: {', '.join(CURVE_METHODS)}")
    features = {**DEFAULT_FEATURES, **(features or {})}
    train, y_train, test, y_test, classes = curve_data(model, model_dir, spec, train_split=train_split,
                                                       test_split=test_split, progress=progress, **data_options)
    test_arrays = {k: v for k, v in test.arrays().items() if v is not None}
    scale = model_scale(model)
    class_weights = class_vectors(model.encode_text, classes, templates) if any(needs_text(m) for m in methods) else None
    started = time.perf_counter()
    out: dict = {"data": spec, "train_split": train_split, "test_split": test_split, "classes": len(classes),
                 "test_images": int(len(y_test)), "seeds": seeds, "features": {m: features[m] for m in methods},
                 "probe_normalize": probe_normalize, "methods": {}, "fit_seconds": {}}
    zero = None
    if class_weights is not None:
        zs_head = fit_head("zeroshot", None, y_train[:0], len(classes), class_weights=class_weights, zs_scale=scale)
        zero = classification_metrics(zs_head.logits(test_arrays), y_test, classes)["top1"]
    from tqdm import tqdm

    jobs = [(m, k, s) for m in methods for k in shots for s in range(seeds)]
    for method, k, seed in tqdm(jobs, desc="few-shot curve", unit="fit", disable=not progress):
        runs = out["methods"].setdefault(method, {}).setdefault(str(k), {"runs": []})["runs"]
        if k == 0 and method != "zs-pseudo":  # zero-shot, and the methods that start from it, at its one point
            if method in ZERO_SHOT_AT_0 and zero is not None and seed == 0:
                runs.append(zero)
            continue
        if k and method in ("zeroshot", "zs-pseudo"):  # 0-shot methods (zs-pseudo: `train` as its unlabelled pool)
            continue
        idx = draw_shots(y_train, len(classes), k, seed)[0] if k else np.zeros(0, np.int64)
        t = time.perf_counter()
        if method == "knn":
            kind = features["knn"]
            scores = knn_scores(train.subset(idx).select(kind), y_train[idx], test.select(kind), len(classes))
        else:
            head = fit_head(method, train.subset(idx), y_train[idx], len(classes), class_weights=class_weights,
                            features=features[method], seed=seed, zs_scale=scale, normalize=probe_normalize,
                            pool=train if method in POOL_METHODS else None)
            scores = head.logits(test_arrays)
        out["fit_seconds"].setdefault(method, []).append(round(time.perf_counter() - t, 3))
        runs.append(classification_metrics(scores, y_test, classes)["top1"])
    for method, per_shot in out["methods"].items():
        for k in list(per_shot):
            runs = per_shot[k]["runs"]
            if not runs:
                del per_shot[k]
                continue
            per_shot[k].update(mean=float(np.mean(runs)), std=float(np.std(runs)))
    out["zeroshot_top1"] = zero
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def plot_curve(result: dict, out: str | Path, title: str | None = None) -> Path:
    """One line per method (mean ± std band over seeds), zero-shot as a dashed line; `out` .png/.svg/.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_shots = sorted({int(k) for per in result["methods"].values() for k in per})
    position = {k: i for i, k in enumerate(all_shots)}  # evenly spaced: 0, 1, 2, 4, 8, 16
    for method, per_shot in result["methods"].items():
        if method == "zeroshot":
            continue
        ks = sorted(int(k) for k in per_shot)
        mean = np.array([per_shot[str(k)]["mean"] for k in ks])
        std = np.array([per_shot[str(k)]["std"] for k in ks])
        xs = [position[k] for k in ks]
        ax.plot(xs, mean, marker="o", label=method)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    if result.get("zeroshot_top1") is not None:
        ax.axhline(result["zeroshot_top1"], color="grey", linestyle="--", label="zero-shot")
    ax.set_xticks(range(len(all_shots)), [str(k) for k in all_shots])
    ax.set_xlabel("labelled images per class (shots)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title or f"{result['data']}: {result['classes']} classes, {result['test_images']} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""The classifier workflows the command line and the benchmark share: fit a classifier folder,
evaluate one, and draw few-shot curves, all on cached features (fine-tuning: `finetune_classifier`
in `visembed.train.tasks.classification`, which ends in the same folder format)."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np

from visembed.classify.features import FeatureSet, dataset_features
from visembed.classify.fit import DEFAULT_FEATURES, FEATURE_METHODS, POOL_METHODS, UNLABELLED_METHODS, fit_head, needs_text
from visembed.classify.folder import Classifier, save_classifier
from visembed.classify.metrics import classification_metrics, confusion_matrix, plot_confusion
from visembed.classify.shots import check_classes, class_index, draw_shots
from visembed.classify.templates import class_vectors
from visembed.data import DataError


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_scale(model) -> float:
    """The dual encoder's learnt logit scale (its temperature): zero-shot logits at the scale
    training calibrated them to."""
    return float(model.module.logit_scale.detach().exp().clamp(max=100.0))


def training_classes(fs: FeatureSet, what: str) -> list[str]:
    """The classes a classifier is fitted over: those the data lists (or its labels) that have images;
    listed classes without any are left out with a note."""
    present = set(fs.labels) - {""}  # "": an image without a label (read by the methods with a pool)
    listed = [c for c in fs.classes if c in present] + sorted(present - set(fs.classes))
    empty = [c for c in fs.classes if c not in present]
    if empty:
        say(f"note: {len(empty)} class(es) of {what} have no usable image and are left out "
            f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''})")
    return listed


def fit_classifier(model, model_dir: Path, spec: str | None, out: Path, *, method: str = "probe", shots: int = 16,
                   seed: int = 0, features: str | None = None, templates: tuple[str, ...] | None = None,
                   split: str = "train", eval_split: str | None = "test", classes: list[str] | None = None,
                   progress: bool = True, **data_options) -> dict:
    """Fit `method` on `shots` images per class of `split` of `spec` and write the classifier folder
    `out` (referring to the model folder `model_dir`). `classes`: the class names, for the methods
    that read no label (zeroshot, zs-pseudo): the data's images then need none. Returns what was
    done (and the figures on `eval_split` where the data has labelled images of those classes). Zero-shot
    from `classes` reads no image: `spec` may then be None (nothing is measured)."""
    from visembed.atomic import new_dir

    if method not in FEATURE_METHODS:
        raise ValueError(f"--method must be one of {', '.join(FEATURE_METHODS)}, finetune; got {method!r}")
    labelled = method not in UNLABELLED_METHODS
    if classes is not None:
        check_named_classes(method)
    features = features or DEFAULT_FEATURES[method]
    # zero-shot from named classes reads no image of `split`: embedding them would be work thrown away;
    # semi's pool is every image of the split, labelled or not (only its shots' labels are read)
    fs = (dataset_features(model, spec, split, model_dir=model_dir, progress=progress,
                           labelled=classes is None and method != "semi", **data_options)
          if classes is None or method == "zs-pseudo" else None)
    if classes is None:
        classes = training_classes(fs, f"{spec} ({split})")
        check_classes(classes, class_index(fs.labels, classes), f"{spec} ({split})")
    y = class_index(fs.labels, classes) if fs is not None else np.zeros(0, np.int64)
    shots_drawn, notes = (draw_shots(y, len(classes), shots, seed) if labelled else (np.zeros(0, np.int64), []))
    for note in notes:
        say(f"note: {note}")
    class_weights = class_vectors(model.encode_text, classes, templates) if needs_text(method) else None
    started = time.perf_counter()
    head = fit_head(method, fs.subset(shots_drawn) if len(shots_drawn) else None, y[shots_drawn], len(classes),
                    class_weights=class_weights, features=features, seed=seed, zs_scale=model_scale(model),
                    pool=fs if method in POOL_METHODS else None)
    fit_seconds = time.perf_counter() - started
    info = {"data": spec, "split": split, "shots": shots if labelled else 0, "seed": seed,
            "images_used": len(fs) if method == "zs-pseudo" else int(len(shots_drawn)),
            "fit_seconds": round(fit_seconds, 3), "notes": notes,
            "templates": list(templates) if templates else "default", "skipped": fs.skipped if fs is not None else {}}
    if method == "semi":
        info["unlabelled_images"] = len(fs)  # the split's images, labelled or not, shots included; no other label read
    figures = None
    if eval_split and spec is not None:
        try:
            test = dataset_features(model, spec, eval_split, model_dir=model_dir, progress=progress, **data_options)
        except DataError:
            test = None  # the data has no such split: no figures in the card
        if test is not None and not set(test.labels).isdisjoint(classes):
            figures = evaluate_head(head, test, classes)
            figures["split"] = eval_split
            info["eval"] = {k: v for k, v in figures.items() if k != "per_class_recall"}
    with new_dir(out, replace=False) as tmp:
        save_classifier(tmp, head, classes, str(Path(model_dir).resolve()), method=method, fit_info=info,
                        card=model_card(method, head.features, classes, info, model_dir))
    return {"out": str(out), "method": method, "features": head.features, "classes": len(classes), **info}


def check_named_classes(method: str) -> None:
    """Class names given without labelled images (`--classes`) go with the methods that read no label."""
    if method not in UNLABELLED_METHODS:
        raise ValueError(f"--classes goes with {' and '.join(UNLABELLED_METHODS)}, which read no label; {method} "
                         "learns from labelled images: give labelled data instead")


def evaluate_head(head, fs: FeatureSet, classes: list[str]) -> dict:
    """Metrics of a head on a FeatureSet; images whose label the head does not know are left out
    and counted (`unknown_label`)."""
    y = class_index(fs.labels, classes)
    known = y >= 0
    if not known.any():
        raise DataError(f"none of the {len(y)} labelled images has a class this classifier knows "
                        f"(its classes: {', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''})")
    scores = head.logits({k: v[known] for k, v in fs.arrays().items() if v is not None})
    metrics = classification_metrics(scores, y[known], classes)
    metrics["skipped"] = {**fs.skipped, **({"unknown_label": int((~known).sum())} if (~known).any() else {})}
    return metrics


def evaluate_classifier(classifier: Classifier, spec: str, split: str = "test", *, confusion: Path | None = None,
                        progress: bool = True, **data_options) -> dict:
    """`classify eval`: top1, top5, mean per-class recall, per-class recall on `split` of `spec`."""
    fs = dataset_features(classifier.model, spec, split, model_dir=classifier_model_dir(classifier),
                          progress=progress, **data_options)
    metrics = evaluate_head(classifier.head, fs, classifier.classes)
    if confusion is not None:
        y = class_index(fs.labels, classifier.classes)
        known = y >= 0
        pred = classifier.head.logits({k: v[known] for k, v in fs.arrays().items() if v is not None}).argmax(1)
        plot_confusion(confusion_matrix(pred, y[known], len(classifier.classes)), classifier.classes, confusion)
        metrics["confusion"] = str(confusion)
    return {"data": spec, "split": split, "method": classifier.method, **metrics}


def classifier_model_dir(classifier: Classifier) -> Path | None:
    from visembed.classify.folder import model_folder

    return model_folder(classifier.folder, classifier.config) if classifier.folder else None


def _data_line(method: str, info: dict) -> str:
    if info["data"] is None:
        return "- data: none (class names only; no image read)"
    return (f"- data: `{info['data']}` split `{info['split']}`, "
            + (f"{info['images_used']} unlabelled images (no label read), seed {info['seed']}" if method == "zs-pseudo"
               else f"{info['shots']} shot(s) per class, seed {info['seed']} ({info['images_used']} images)"
               + (f", beside the split's {info['unlabelled_images']} images, no other label read"
                  if "unlabelled_images" in info else "")))


def model_card(method: str, features: str, classes: list[str], info: dict, model_dir) -> str:
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    lines = [f"# visembed classifier ({method})", "",
             f"- method: `{method}`; features read by the head: `{features}`",
             f"- model: `{model_dir}`", _data_line(method, info),
             f"- classes ({len(classes)}): {shown}", f"- fitted in {info['fit_seconds']} s "
             f"(python {platform.python_version()}, {platform.machine()})"]
    for note in info.get("notes", []):
        lines.append(f"- note: {note}")
    if "eval" in info:
        e = info["eval"]
        lines += ["", f"## Measured on split `{e['split']}` ({e['num_images']} images)", "",
                  "| top-1 | top-5 | mean per-class recall |", "|---|---|---|",
                  f"| {e['top1']:.3f} | {e['top5']:.3f} | {e['mean_per_class_recall']:.3f} |"]
    lines += ["", "Load with `visembed.load(DIR)` (`.classes`, `.predict(images, k=5)`); "
              "`visembed classify predict DIR IMAGE...`.", ""]
    return "\n".join(lines)

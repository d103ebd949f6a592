"""Evaluate a model on a dataset split: retrieval in every caption language, zero-shot where labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from visembed.eval.retrieval import retrieval_metrics
from visembed.eval.zeroshot import DEFAULT_TEMPLATES, class_embeddings, zeroshot_accuracy


def _load_split(spec: str, split: str, language: str, limit: int | None, image_size: int):
    """Images (already reduced to the model's input square, so a folder of 12 MP photos stays
    small in memory) with their captions per language and labels; bad items skipped and counted."""
    from PIL import Image

    from visembed.data import BadImage, SkipCounter, load_image, open_dataset, to_tensor

    ds = open_dataset(spec, split, language=language)
    skipped = SkipCounter()
    images, captions, labels = [], {}, []
    for sample in ds:
        if limit is not None and len(images) >= limit:
            break
        try:
            image = load_image(sample.image)
        except BadImage as err:
            skipped.add(err.reason)
            continue
        if not sample.caption.strip():
            skipped.add("empty_caption")
            continue
        images.append(Image.fromarray(to_tensor(image, image_size).permute(1, 2, 0).numpy()))
        per_language = dict(sample.captions or {})
        per_language.setdefault(language, sample.caption)
        for lang, text in per_language.items():
            captions.setdefault(lang, []).append(text)
        labels.append(sample.label)
    return ds, images, captions, labels, skipped


def evaluate(model, spec: str, split: str = "test", *, language: str = "en", templates=DEFAULT_TEMPLATES,
             limit: int | None = None, progress: bool = True) -> dict:
    """Metrics for `model` (a `visembed.models.inference.Model`, what `visembed.load` returns) on `split` of `spec`.

    Retrieval metrics for `language` carry the plain names (`text_to_image_R@1`, ...); other
    languages the data has are reported with their code in front (`zh_text_to_image_R@1`).
    """
    language = "en" if language == "both" else language  # the plain names are English on bilingual data
    ds, images, captions, labels, skipped = _load_split(spec, split, language, limit, model.image_size)
    if not images:
        raise ValueError(f"no usable images in split {split!r} of {spec} (skipped: {skipped.as_dict()})")
    image_emb = np.concatenate([model.encode_image(images[i : i + 256])
                                for i in tqdm(range(0, len(images), 256), desc="eval images", disable=not progress)])
    metrics: dict = {"split": split, "data": spec}
    for lang, texts in captions.items():
        if len(texts) != len(images):
            continue  # a language only some items have
        distinct = list(dict.fromkeys(texts))
        prefix = "" if lang == language else f"{lang}_"
        metrics.update(retrieval_metrics(image_emb, texts, model.encode_text(distinct), prefix=prefix))
    classnames = getattr(ds, "labels", None)
    if classnames and all(label is not None for label in labels):
        class_emb = class_embeddings(model.encode_text, list(classnames), tuple(templates))
        metrics.update(zeroshot_accuracy(image_emb, labels, class_emb, list(classnames)))
    metrics["skipped"] = skipped.as_dict()
    return metrics


def evaluate_folder(folder: str | Path, spec: str, split: str = "test", **kwargs) -> dict:
    """Load a model folder, evaluate, and save `eval_<split>.json` beside the weights."""
    from visembed.models.inference import Model

    model = Model.from_folder(folder)
    metrics = evaluate(model, spec, split, **kwargs)
    (Path(folder) / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics

"""Evaluate a model on a dataset split: retrieval in every caption language, zero-shot where labelled.

`embed_images` (decode, skip and count, encode one batch at a time) is also what `visembed embed`
and the demo run over a dataset: one loop, so every caller skips the same things.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from visembed.atomic import atomic_write_json
from visembed.config import trains_text_tower
from visembed.data import DataError, Sample, SkipCounter, decoded_batches, open_dataset
from visembed.eval.retrieval import retrieval_metrics
from visembed.eval.zeroshot import DEFAULT_TEMPLATES, class_embeddings, zeroshot_accuracy

EMBED_BATCH = 256  # images decoded and encoded together: pictures are held one batch at a time


def embed_images(model, samples: Iterable[Sample], skipped: SkipCounter, *, batch_size: int = EMBED_BATCH,
                 limit: int | None = None, need_caption: bool = False, progress: bool = False,
                 total: int | None = None, desc: str = "embedding images") -> tuple[list[Sample], np.ndarray]:
    """(samples kept, their image vectors float32 (N, D)) for the usable samples, in order; the others
    are counted in `skipped`. `model` is what `visembed.load` returns; `limit`, `need_caption` as for
    `visembed.data.decoded`."""
    from tqdm import tqdm

    kept: list[Sample] = []
    vectors: list[np.ndarray] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in decoded_batches(samples, skipped, batch_size, limit=limit, need_caption=need_caption):
            kept += [sample for sample, _ in batch]
            vectors.append(model.encode_image([image for _, image in batch], batch_size=batch_size))  # (b, D)
            bar.update(len(batch))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), np.float32)  # (N, D)
    return kept, matrix


def evaluate(model, spec: str, split: str = "test", *, language: str = "en", templates=DEFAULT_TEMPLATES,
             limit: int | None = None, progress: bool = True) -> dict:
    """Metrics for `model` (what `visembed.load` returns) on `split` of `spec`.

    Retrieval metrics for `language` carry the plain names (`text_to_image_R@1`, ...); other
    languages the data has are reported with their code in front (`zh_text_to_image_R@1`).
    `skipped` counts what was left out, by the data source (rows) and by decoding (images).
    """
    language = "en" if language == "both" else language  # the plain names are English on bilingual data
    ds = open_dataset(spec, split, language=language)
    skipped = SkipCounter()
    total = None if getattr(ds, "streaming", False) else len(ds)
    samples, image_emb = embed_images(model, ds, skipped, limit=limit, need_caption=True, progress=progress,
                                      total=total, desc="eval images")
    if getattr(ds, "skipped", None) is not None:
        skipped.update(ds.skipped)  # rows the source left out (read after iterating: streams count as they go)
    if not samples:
        raise DataError(f"no usable images in split {split!r} of {spec} (skipped: {skipped.as_dict()})")

    captions: dict[str, list[str]] = {}
    for sample in samples:
        per_language = dict(sample.captions or {})
        per_language.setdefault(language, sample.caption)
        for lang, text in per_language.items():
            captions.setdefault(lang, []).append(text)
    metrics: dict = {"split": split, "data": spec}
    for lang, texts in captions.items():
        if len(texts) != len(samples):
            continue  # a language only some items have
        distinct = list(dict.fromkeys(texts))
        prefix = "" if lang == language else f"{lang}_"
        metrics.update(retrieval_metrics(image_emb, texts, model.encode_text(distinct), prefix=prefix))
    labels = [sample.label for sample in samples]
    classnames = getattr(ds, "labels", None)
    if classnames and all(label is not None for label in labels):
        class_emb = class_embeddings(model.encode_text, list(classnames), tuple(templates))
        metrics.update(zeroshot_accuracy(image_emb, labels, class_emb, list(classnames)))
    metrics["skipped"] = skipped.as_dict()
    return metrics


def evaluate_folder(folder: str | Path, spec: str, split: str = "test", *, model=None, **kwargs) -> dict:
    """Load a model folder (or take `model`, that folder already loaded: `visembed.load(folder,
    backend=...)`, as `visembed eval --backend` does), evaluate, and save `eval_<split>.json` beside
    the weights (atomically)."""
    from visembed.models.inference import Model

    if model is None:
        model = Model.from_folder(Path(folder))  # a plain folder: `hf:` specs are resolved above eval (commands, api)
    if hasattr(model, "caption"):  # a captioner: its generated alt text, beside the nearest-neighbour baseline
        from visembed.eval.captioning import evaluate_captioner

        metrics = evaluate_captioner(model, spec, split, limit=kwargs.get("limit"),
                                     progress=kwargs.get("progress", True))
    elif not trains_text_tower(model.config):  # image-only pretraining: labels, not text, measure it
        from visembed.eval.image_only import evaluate_image_only

        metrics = evaluate_image_only(model, spec, split, limit=kwargs.get("limit"), progress=kwargs.get("progress", True),
                                      model_dir=folder)
    else:
        metrics = evaluate(model, spec, split, **kwargs)
    atomic_write_json(Path(folder) / f"eval_{split}.json", metrics)
    return metrics

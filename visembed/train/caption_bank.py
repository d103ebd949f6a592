"""A caption bank: every distinct training caption, so that each image is contrasted against all
of them and not only against the ~100 captions of its batch.

With a frozen text tower (LiT) a caption's features never change, so the whole training set's
captions are encoded once. Each step then only projects them and adds, with weight
`train.contrastive.caption_bank_weight`, a softmax of each image over the bank to the batch loss (forward and
backward for 3,400 captions: ~30 ms on 2 cores, ~4 % of a `demo` step). On small data that is
where the hard negatives are: an emoji's skin-tone siblings and near-synonyms rarely share a
batch of 128 drawn from ~3,400 images. Measured in `benchmarks/emoji_quality.py`: held-out R@1
0.326 -> 0.386 (mean of 3 seeds).
Captions that a trainable tower reads (Chinese ones, with a CJK student) stay out of the bank.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from visembed.data import DataError

MAX_CAPTIONS = 200_000  # a (K, width) matrix projected every step: beyond this, a step costs too much
ENCODE_BATCH = 256


class CaptionBank:
    """Captions and their frozen text-tower outputs `features` (K, text width)."""

    def __init__(self, captions: list[str], features: torch.Tensor):
        self.captions, self.features = captions, features
        self._index = {caption: i for i, caption in enumerate(captions)}

    def __len__(self) -> int:
        return len(self.captions)

    def labels(self, texts: list[str]) -> torch.Tensor:
        """Each text's row in the bank, -1 where it has none -> long (B,) on the features' device."""
        return torch.tensor([self._index.get(t, -1) for t in texts], dtype=torch.long, device=self.features.device)


def build_caption_bank(model, dataset, progress: bool = True) -> CaptionBank:
    """Encode the distinct captions of a map-style `dataset` with `model`'s frozen text tower."""
    if not model.text.frozen:
        raise ValueError("train.contrastive.caption_bank_weight needs a frozen text tower (model.text.kind=hf with "
                         "model.text.freeze=true): a trainable tower would have to re-encode every caption each step")
    if getattr(dataset, "streaming", False):
        raise DataError("train.contrastive.caption_bank_weight needs data with a known length (a manifest, folder or builtin), "
                        "not streamed shards")
    captions: dict[str, None] = {}
    for sample in dataset:
        if sample.caption and model.text.is_frozen_for(sample.caption):
            captions[sample.caption] = None
            if len(captions) > MAX_CAPTIONS:
                raise DataError(f"the caption bank would hold more than {MAX_CAPTIONS:,} distinct captions; "
                                "train without it (train.contrastive.caption_bank_weight=0)")
    texts = list(captions)
    if not texts:
        raise DataError("the caption bank is empty: no training caption goes through the frozen text tower")
    parts = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), ENCODE_BATCH), desc="caption bank", disable=not progress,
                          dynamic_ncols=True):
            parts.append(model.text.encode(texts[start : start + ENCODE_BATCH]))
    return CaptionBank(texts, torch.cat(parts))

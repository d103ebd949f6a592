"""A byte-level BPE tokenizer trained on the training captions (HF `tokenizers`), for the text
transformer towers beside it.

Byte-level means any text, Chinese included, encodes without unknown tokens. Text is NFKC-normalised
and lower-cased, as CLIP does. Ids: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2. Every encoded caption is
`<bos> ... <eos>` and always keeps its `<eos>` when truncated: the text tower pools the features at
the `<eos>` position (`lengths - 1`), as CLIP does.

An imported tokenizer (OpenAI CLIP's BPE, from OpenCLIP or transformers checkpoints) loads too: its
special tokens are found by name (`SPECIAL_TOKEN_CONVENTIONS`), its normalisation (lower-casing
included) is in its tokenizer.json, and the context length is the text tower's config. Padding and
truncation stored in a tokenizer.json are switched off: `encode_batch` does both itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from visembed.atomic import atomic_write

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
FILE_NAME = "tokenizer.json"
# (pad, bos, eos) token names, tried in order; a pad of None pads with id 0. visembed's own BPE has
# them at ids 0, 1, 2; OpenAI CLIP's BPE at the end of its vocabulary (49406, 49407 in CLIP's
# 49,408), named as transformers' CLIPTokenizer or as open_clip 3.x names them, and is padded with
# id 0 as OpenCLIP pads (a causal tower pooled at <eos> never sees the padding).
SPECIAL_TOKEN_CONVENTIONS = (
    (PAD, BOS, EOS),
    (None, "<|startoftext|>", "<|endoftext|>"),
    (None, "<start_of_text>", "<end_of_text>"),
)


class BPETokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`
        tokenizer.no_padding()  # encode_batch pads and truncates itself
        tokenizer.no_truncation()
        self.pad_id, self.bos_id, self.eos_id = _special_ids(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """A `tokenizer.json` file, or a folder holding one (a model folder)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        """Save to a file, or into a folder as `tokenizer.json`; returns the file."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, self.tokenizer.save)

    def encode_batch(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, T) long, `<bos> tokens <eos>` padded with 0; lengths (B,) long, eos at lengths - 1."""
        if context_length < 2:
            raise ValueError("context_length must leave room for <bos> and <eos>")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)  # (B, T)
        lengths = torch.empty(len(texts), dtype=torch.long)  # (B,)
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            tokens = [self.bos_id, *encoding.ids[: context_length - 2], self.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            lengths[row] = len(tokens)
        return ids, lengths

    def decode(self, ids) -> str:
        """Token ids (special ones and padding dropped) -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) ids by the first of SPECIAL_TOKEN_CONVENTIONS whose bos and eos the vocabulary has."""
    for pad, bos, eos in SPECIAL_TOKEN_CONVENTIONS:
        bos_id, eos_id = tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
        if bos_id is None or eos_id is None:
            continue
        ids = (0 if pad is None else tokenizer.token_to_id(pad), bos_id, eos_id)
        if pad == PAD and ids != (0, 1, 2):
            raise ValueError("tokenizer must have <pad>=0, <bos>=1, <eos>=2")
        return ids
    raise ValueError("tokenizer has no known begin/end tokens: "
                     + "; ".join(f"{bos} and {eos}" for _, bos, eos in SPECIAL_TOKEN_CONVENTIONS))


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | Path | None = None) -> BPETokenizer:
    """Learn a byte-level BPE vocabulary of (at most) `vocab_size` from `texts`; save it if `out_path`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],  # first, so they get ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    result = BPETokenizer(tokenizer)
    if out_path is not None:
        result.save(out_path)
    return result

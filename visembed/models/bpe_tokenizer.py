"""A byte-level BPE tokenizer trained on the training captions (HF `tokenizers`), for the text
transformer towers beside it.

Byte-level means any text, Chinese included, encodes without unknown tokens. Text is NFKC-normalised
and lower-cased, as CLIP does. Ids: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2. Every encoded caption is
`<bos> ... <eos>` and always keeps its `<eos>` when truncated: the text tower pools the features at
the `<eos>` position (`lengths - 1`), as CLIP does.

A `tokenizer.json` that carries its own post-processor (one imported from a transformers CLIP
folder, or exported by `visembed export`) is used as it is: the post-processor adds the begin and
end tokens (or only an end token, as SigLIP's), after truncation to leave room for them, exactly as
a transformers fast tokenizer called with `truncation=True, max_length=context_length` does. Such
a file's padding settings, where it has them, name the pad token (SigLIP pads with `</s>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from visembed.atomic import atomic_write

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
FILE_NAME = "tokenizer.json"


class BPETokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`
        self._padding = tokenizer.padding  # kept for `save` (the pad token of an imported file)
        tokenizer.no_padding()  # (an imported file may store either; encode_batch pads and truncates itself)
        tokenizer.no_truncation()
        if tokenizer.post_processor is not None:  # its own begin/end tokens (e.g. CLIP's, SigLIP's)
            self.specials = tokenizer.post_processor.num_special_tokens_to_add(False)
            ends = tokenizer.encode("", add_special_tokens=True).ids
            if len(ends) not in (1, 2) or len(ends) != self.specials:
                raise ValueError(f"the tokenizer's post-processor must add one begin and one end token, or one end "
                                 f"token, it adds {ends}")
            self.bos_id, self.eos_id = ends if len(ends) == 2 else (None, ends[0])
            pad = tokenizer.token_to_id(PAD)
            if self._padding is not None:
                self.pad_id = self._padding["pad_id"]
            else:
                self.pad_id = pad if pad is not None else self.eos_id  # CLIP pads with its end token
            return
        self.specials = 0
        self.pad_id = tokenizer.token_to_id(PAD)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)
        if (self.pad_id, self.bos_id, self.eos_id) != (0, 1, 2):
            raise ValueError("tokenizer must have <pad>=0, <bos>=1, <eos>=2")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """A `tokenizer.json` file, or a folder holding one (a model folder)."""
        from tokenizers import Tokenizer

        from visembed.checkpoint import ModelFolderError, read_json

        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if path.exists():
            read_json(path)  # strict first (size, depth, duplicate keys): a model folder may come from anyone
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
            if not path.exists():
                raise
            raise ModelFolderError(f"{path} is not a tokenizers file ({str(err).splitlines()[0][:160]})") from None

    def save(self, path: str | Path) -> Path:
        """Save to a file, or into a folder as `tokenizer.json`; returns the file."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._padding is None:
            return atomic_write(path, self.tokenizer.save)
        self.tokenizer.enable_padding(**self._padding)  # written with the file, never used to encode
        try:
            return atomic_write(path, self.tokenizer.save)
        finally:
            self.tokenizer.no_padding()

    def encode_batch(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, T) long, `<bos> tokens <eos>` padded with 0; lengths (B,) long, eos at lengths - 1."""
        if context_length < 2:
            raise ValueError("context_length must leave room for <bos> and <eos>")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)  # (B, T)
        lengths = torch.empty(len(texts), dtype=torch.long)  # (B,)
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if self.specials:
                encoding.truncate(context_length - self.specials)
                tokens = self.tokenizer.post_process(encoding).ids
            else:
                tokens = [self.bos_id, *encoding.ids[: context_length - 2], self.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            lengths[row] = len(tokens)
        return ids, lengths

    def decode(self, ids) -> str:
        """Token ids (special ones and padding dropped) -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True)


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

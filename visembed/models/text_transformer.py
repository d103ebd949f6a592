"""CLIP-style text transformer over a byte-level BPE vocabulary trained on the captions.

Causal attention and pooling at the end-of-text token, as in CLIP: padding after the EOS token can
never influence the pooled feature. SigLIP's variant (`model.text.pool = "last"`, `causal = false`):
bidirectional attention over the text padded to `context_length` with the tokenizer's pad token,
pooled at the last position (padding included, as SigLIP was trained), optionally with padded keys
masked (`mask_padding`, what transformers computes when given its processor's attention mask). The tower contract (shared by every text tower):
`tokenize(texts) -> (ids, mask)` on the CPU, `forward(ids, mask) -> (B, width)`;
`batch_tokens(texts) -> {"input_ids", "attention_mask"}`, what training reads (built where the
data is loaded), `encode_tokens(**tokens) -> (B, width)`, and `encode(texts)`, the two composed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import TransformerTextConfig
from visembed.models.bpe_tokenizer import FILE_NAME as TOKENIZER_FILE
from visembed.models.bpe_tokenizer import BPETokenizer
from visembed.models.layers import Encoder
from visembed.models.towers import TextTowerBase


class TextTransformer(TextTowerBase):
    """`cfg`: the text tower's config, or a CJK student's (`StudentConfig.tower_config()`)."""

    def __init__(self, cfg: TransformerTextConfig, tokenizer_dir: str | Path | None):
        super().__init__()
        if tokenizer_dir is None or not (Path(tokenizer_dir) / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(
                f"a BPE text tower needs {TOKENIZER_FILE} in {tokenizer_dir}; train one with "
                "visembed.models.bpe_tokenizer.train_bpe_tokenizer (the trainer does this for you)"
            )
        self.tokenizer = BPETokenizer.load(Path(tokenizer_dir) / TOKENIZER_FILE)
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer in {tokenizer_dir} has {self.tokenizer.vocab_size} tokens but the tower's "
                             f"vocabulary holds {cfg.vocab_size}")
        self.context_length = cfg.context_length
        self.width = cfg.width
        self.pool_kind = cfg.pool
        self.causal = cfg.causal
        self.mask_padding = cfg.mask_padding
        eps = cfg.layer_norm_eps
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.encoder = Encoder(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.activation, eps)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=eps)

    def save_assets(self, out_dir: Path) -> None:
        self.tokenizer.save(out_dir / TOKENIZER_FILE)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, T = context_length) long `<bos> tokens <eos>` (or the tokenizer's own special tokens)
        padded with the pad token, mask (B, T) bool of real tokens."""
        ids, lengths = self.tokenizer.encode_batch(texts, self.context_length)
        mask = torch.arange(ids.shape[1]) < lengths[:, None]  # (B, T)
        return ids, mask

    def forward_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> every position's features (B, T, width), after the final layer norm."""
        x, attn_mask = self._inputs(ids, mask)
        return self.final_layer_norm(self.encoder(x, attn_mask=attn_mask, causal=self.causal))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features at each text's `<eos>`, its last real token (pool "eos"), or at the last position of
        the padded sequence (pool "last") -> (B, width): `forward_features` at those positions, with the
        last block computing nothing else (`Block.forward`'s `rows`)."""
        x, attn_mask = self._inputs(ids, mask)
        if self.pool_kind == "last":
            rows = torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
        else:
            rows = mask.to(x.device).sum(dim=1) - 1  # (B,) each text's <eos>
        return self.final_layer_norm(self.encoder(x, attn_mask=attn_mask, causal=self.causal, rows=rows)[:, 0])

    def _inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> the embedded tokens (B, T, width) and the attention mask (B, 1, 1, T) of keys to read, or None."""
        ids = ids.to(self.token_embedding.weight.device)
        x = self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]  # (B, T, width)
        attn_mask = mask.to(x.device).bool()[:, None, None, :] if self.mask_padding else None  # (B, 1, 1, T): keys to read
        return x, attn_mask

    def batch_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`tokenize`, with the padding after the longest text cut where nothing reads it (causal
        attention, pooled at <eos>): the same features for a fraction of the work (a Chinese name is
        ~4 of the student's 24 tokens) -> {"input_ids", "attention_mask"}."""
        ids, mask = self.tokenize(texts)
        if self.pool_kind == "eos" and self.causal:
            longest = int(mask.sum(dim=1).max())
            ids, mask = ids[:, :longest], mask[:, :longest]
        return {"input_ids": ids, "attention_mask": mask}

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What `batch_tokens` made -> (B, width)."""
        return self(input_ids, attention_mask)

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.encode_tokens(**self.batch_tokens(texts))

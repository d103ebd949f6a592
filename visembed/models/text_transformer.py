"""CLIP-style text transformer over a byte-level BPE vocabulary trained on the captions.

Causal attention and pooling at the end-of-text token, as in CLIP: padding after the EOS token can
never influence the pooled feature, so no padding mask is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import TextConfig
from visembed.models.layers import Encoder

TOKENIZER_FILE = "tokenizer.json"


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, tokenizer_dir: str | Path | None):
        super().__init__()
        from visembed.data.tokenizer import BPETokenizer

        if tokenizer_dir is None or not (Path(tokenizer_dir) / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(
                f"a BPE text tower needs {TOKENIZER_FILE} in {tokenizer_dir}; train one with "
                "visembed.data.tokenizer.train_bpe_tokenizer (the trainer does this for you)"
            )
        self.tokenizer = BPETokenizer.load(Path(tokenizer_dir) / TOKENIZER_FILE)
        self.context_length = cfg.context_length
        self.width = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.encoder = Encoder(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.final_layer_norm = nn.LayerNorm(cfg.width)

    def save_assets(self, out_dir: Path) -> None:
        self.tokenizer.save(out_dir / TOKENIZER_FILE)

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, lengths = self.tokenizer.encode_batch(texts, self.context_length)  # (B, T), (B,)
        ids = ids.to(self.token_embedding.weight.device)
        x = self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]  # (B, T, width)
        x = self.final_layer_norm(self.encoder(x, causal=True))
        eos = torch.as_tensor(lengths, device=x.device) - 1
        return x[torch.arange(x.shape[0], device=x.device), eos]  # (B, width)

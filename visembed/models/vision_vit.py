"""Vision Transformer: patches (+ a class token) -> pre-LN blocks -> a pooled feature.

Two ways to read and pool, chosen by `model.vision.pool`: "class" is CLIP's (a class token first,
a LayerNorm before the blocks, the class token pooled through `post_layernorm`); "map" is SigLIP's
(no class token, `post_layernorm` on every token, then attention pooling with a learned probe:
transformers' `SiglipMultiheadAttentionPoolingHead`, with the same weight names).

Tower contract (`models/towers.py`, shared by every vision tower): `forward_features(pixels) -> (B, N, width)`
tokens (the class token first where there is one, then the patches, before the final layer norm),
`pool(tokens) -> (B, width)`, and `forward = pool(forward_features(...))`; one layer group.
Pixels arrive normalised with the tower's mean and std.
"""

from __future__ import annotations

import torch
from torch import nn

from visembed.config import ViTConfig
from visembed.models.layers import MLP, Encoder
from visembed.models.towers import VisionTowerBase, stage_taps


class AttentionPoolingHead(nn.Module):
    """Multi-head attention pooling (SigLIP's MAP head): a learned probe attends over the tokens
    (`nn.MultiheadAttention`, as transformers), then x + mlp(layernorm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(tokens.shape[0], -1, -1)  # (B, 1, width)
        x = self.attention(probe, tokens, tokens, need_weights=False)[0]  # (B, 1, width)
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]  # (B, width)


class VisionTransformer(VisionTowerBase):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.width = cfg.width
        self.pool_kind = cfg.pool
        eps = cfg.layer_norm_eps
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        if cfg.pool == "class":
            self.class_embedding = nn.Parameter(torch.randn(cfg.width) * cfg.width**-0.5)
        self.position_embedding = nn.Embedding(self.num_patches + (cfg.pool == "class"), cfg.width)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        # (sic) the name transformers uses
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=eps) if cfg.pre_norm else nn.Identity()
        self.encoder = Encoder(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.activation, eps)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=eps)
        self.stage_widths = (cfg.width, cfg.width)
        if cfg.pool == "map":
            self.head = AttentionPoolingHead(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.activation, eps)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """pixels -> the tokens entering the first block."""
        x = self.patch_embedding(x)  # (B, width, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, patches, width)
        if self.pool_kind == "class":
            cls = self.class_embedding.expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + patches, width)
        x = x + self.position_embedding.weight
        return self.pre_layrnorm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._tokens(x))  # (B, [1 +] patches, width)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_kind == "map":
            return self.head(self.post_layernorm(tokens))  # (B, width)
        return self.post_layernorm(tokens[:, 0])  # the class token, (B, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled, middle, late): see `VisionTowerBase.forward_stages`; a stage is a block, its output
        averaged over every token (blocks `stage_taps(depth)`: 5 and 10 of ViT-B's 12)."""
        pooled, taps = self._run(x, stage_taps(len(self.encoder.layers)))
        return pooled, taps[0], taps[-1]

    def _run(self, x: torch.Tensor, taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixels -> (pooled (B, width), the outputs of blocks `taps` averaged over tokens). With a class
        token, the last block computes that token alone (`Block.forward`'s `rows`): what `pool` reads,
        the same numbers as `pool(forward_features(x))` for a fraction of the last block's work (not
        where `forward_stages` reads the last block: a one-block tower; so forward_stages and forward
        always take the same path)."""
        x, outs = self._tokens(x), []
        last = len(self.encoder.layers) - 1
        only_class = self.pool_kind == "class" and last not in stage_taps(last + 1)
        for i, layer in enumerate(self.encoder.layers):
            rows = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if only_class and i == last else None
            x = layer(x, rows=rows)
            if i in taps:
                outs.append(x.mean(dim=1))
        return self.pool(x), outs

"""CLIP-style Vision Transformer: patches + class token -> pre-LN blocks -> class token.

Tower contract (shared by every vision tower): `forward_features(pixels) -> (B, N, width)` tokens
(here the class token first, then the patches, before the final layer norm, as transformers'
`last_hidden_state`), `pool(tokens) -> (B, width)`, and `forward = pool(forward_features(...))`.
Pixels arrive normalised with the tower's mean and std.
"""

from __future__ import annotations

import torch
from torch import nn

from visembed.config import VisionConfig
from visembed.models.layers import Encoder


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.width = cfg.width
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(cfg.width) * cfg.width**-0.5)
        self.position_embedding = nn.Embedding(self.num_patches + 1, cfg.width)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.pre_layrnorm = nn.LayerNorm(cfg.width)  # (sic) the name transformers uses
        self.encoder = Encoder(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.activation)
        self.post_layernorm = nn.LayerNorm(cfg.width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x)  # (B, width, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, patches, width)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding.weight  # (B, 1 + patches, width)
        return self.encoder(self.pre_layrnorm(x))  # (B, 1 + patches, width)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(tokens[:, 0])  # the class token, (B, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

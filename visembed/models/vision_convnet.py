"""A small residual ConvNet image tower.

On a CPU budget and small data it learns faster than a ViT of similar cost (convolutions bring the
locality prior a ViT has to learn), which is why the `demo` preset uses it. Tower contract as in `vision_vit.py`: its tokens are the
cells of the last feature map, pooled by their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import ConvNetConfig
from visembed.models.towers import VisionTowerBase, stage_taps


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm2.weight)  # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


def _down(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


class ConvNet(VisionTowerBase):
    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        channels = cfg.channels
        self.width = channels[-1]
        self.stem = _down(3, channels[0], stride=2)  # (B, c0, S/2, S/2)
        stages = []
        for i, c in enumerate(channels):
            down = nn.Identity() if i == 0 else _down(channels[i - 1], c, stride=2)
            stages.append(nn.Sequential(down, *(ResidualBlock(c) for _ in range(cfg.blocks_per_stage))))
        self.stages = nn.Sequential(*stages)  # (B, c_last, S/2^len, S/2^len)
        self.norm = nn.LayerNorm(self.width)
        self._taps = stage_taps(len(channels))
        self.stage_widths = tuple(channels[i] for i in self._taps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, width, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h * w, width): one token per cell

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # the mean over the cells' contiguous axis, the same sum in the same order as a mean over (h, w)
        return self.norm(tokens.transpose(1, 2).mean(dim=-1))  # (B, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled, middle, late): see `VisionTowerBase.forward_stages` (stages `stage_taps(len(channels))`)."""
        x, taps = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                taps.append(x.mean(dim=(2, 3)))
        return self.pool(x.flatten(2).transpose(1, 2)), taps[0], taps[-1]

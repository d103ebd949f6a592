"""The tower surface, written down once, and the registry that builds a tower from its config.

Every image tower and every text tower offers the same methods, so that the optimiser, the model
loader, the caption bank and the captioner never ask a tower what it can do (timm's habit):

    VisionTower   forward_features(pixels) -> (B, N, width) cells before pooling; pool(cells) -> (B, width);
                  forward(pixels) == pool(forward_features(pixels)) (up to float rounding: a tower may
                  compute only what it pools, as a ViT's last block does); width; layer_groups();
                  forward_stages(pixels) -> (forward(pixels), middle, late) and stage_widths: two earlier
                  feature maps average-pooled (the middle stage's and the one before the last: what a
                  few-shot probe reads beside the pooled features);
                  no_weight_decay(); save_assets(dir); feature_cache / with_feature_cache(limit)
    TextTower     tokenize(texts) -> (ids, mask); forward(ids, mask) -> (B, width); encode(texts);
                  width; frozen / is_frozen_for(text); layer_groups(); no_weight_decay(); save_assets(dir)

`VisionTowerBase` and `TextTowerBase` (nn.Module) give the defaults: the whole tower as one layer
group, nothing exempt from weight decay beyond the optimiser's rule (vectors and scalars), no
assets, no feature cache, not frozen. A tower overrides what it has.

Kinds come from `visembed.config.VISION_KINDS` / `TEXT_KINDS` (kind -> config class and
"module:Class"): the tower module is imported when a tower of its kind is built, never before. A new
tower adds itself with one call, `register_vision_tower(kind, ConfigClass, TowerClass)`, before a
config naming its kind is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from visembed.config import (TEXT_KINDS, VISION_KINDS, ModelConfig, TextConfig, TowerKind, VisionConfig,
                             register_text_tower, register_vision_tower, registered)


@runtime_checkable
class VisionTower(Protocol):
    width: int
    feature_cache: object | None

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def pool(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def forward_stages(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def layer_groups(self) -> list[nn.Module]: ...
    def no_weight_decay(self) -> set[str]: ...
    def save_assets(self, out_dir: Path) -> None: ...
    def with_feature_cache(self, limit: int) -> VisionTower: ...


@runtime_checkable
class TextTower(Protocol):
    width: int
    frozen: bool

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...
    def batch_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]: ...
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor: ...
    def encode(self, texts: list[str]) -> torch.Tensor: ...
    def is_frozen_for(self, text: str) -> bool: ...
    def layer_groups(self) -> list[nn.Module]: ...
    def no_weight_decay(self) -> set[str]: ...
    def save_assets(self, out_dir: Path) -> None: ...


class _TowerDefaults(nn.Module):
    width: int  # the features' size (set by each tower)

    def layer_groups(self) -> list[nn.Module]:
        """The tower's parts input side first, for layer-wise learning-rate decay: one group, the whole tower."""
        return [self]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the tower) kept out of weight decay besides every vector and scalar."""
        return set()

    def save_assets(self, out_dir: Path) -> None:
        """Files the tower needs besides its weights (a tokenizer, an encoder's config): none."""


class VisionTowerBase(_TowerDefaults):
    """The defaults of `VisionTower`; a tower defines `forward_features` and `pool`."""

    feature_cache = None  # a FeatureCache of the locked part's outputs, where the tower has a locked part
    stage_widths: tuple[int, int] = (0, 0)  # widths of forward_stages' middle and late features

    @classmethod
    def from_config(cls, cfg: VisionConfig, *, pretrained: bool) -> VisionTowerBase:
        """The tower `cfg` describes; `pretrained=False` skips reading pretrained weights (a folder brings its own)."""
        return cls(cfg)

    def with_feature_cache(self, limit: int) -> VisionTowerBase:
        """Cache the locked part's outputs per distinct image (at most `limit`; 0: off). Nothing is locked: no cache."""
        return self

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(pixels))

    def forward_stages(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(forward(pixels) exactly, middle (B, stage_widths[0]), late (B, stage_widths[1])): the
        outputs of the middle stage and of the stage before the last (`stage_taps`), each averaged over
        its cells. Every built-in tower has them; this default (a tower without stages) gives both
        zero wide, and `stage_widths` (0, 0)."""
        pooled = self(pixels)
        return pooled, pooled[:, :0], pooled[:, :0]


def stage_taps(n_stages: int) -> tuple[int, int]:
    """(middle, late): the indices of the stages `forward_stages` reads among `n_stages`, input side
    first: the middle one and the one before the last (the same stage when there are fewer than 3)."""
    return (n_stages - 1) // 2, max(n_stages - 2, 0)


class TextTowerBase(_TowerDefaults):
    """The defaults of `TextTower`; a tower defines `tokenize`, `forward` and `encode`."""

    frozen = False  # whether no part of the tower trains

    @classmethod
    def from_config(cls, cfg: TextConfig, *, asset_dir: str | Path | None) -> TextTowerBase:
        """The tower `cfg` describes; `asset_dir` holds its assets (tokenizer.json, text_encoder/)."""
        return cls(cfg, asset_dir)

    def is_frozen_for(self, text: str) -> bool:
        """Whether `text` always gets the same features (it goes through a frozen part)."""
        return self.frozen


def tower_class(entry: TowerKind) -> type:
    """The tower class of a registry entry, imported from its "module:Class" where needed."""
    return registered(entry.builder)


def build_vision(cfg: ModelConfig, pretrained: bool = True) -> VisionTower:
    """The image tower of `cfg.vision.kind`; `pretrained=False` skips reading pretrained weights."""
    return tower_class(VISION_KINDS[cfg.vision.kind]).from_config(cfg.vision, pretrained=pretrained)


def build_text(cfg: ModelConfig, tokenizer_dir: str | Path | None) -> TextTower:
    """The text tower of `cfg.text.kind`, its assets (tokenizer) read from `tokenizer_dir`."""
    return tower_class(TEXT_KINDS[cfg.text.kind]).from_config(cfg.text, asset_dir=tokenizer_dir)


__all__ = ["TextTower", "TextTowerBase", "VisionTower", "VisionTowerBase", "build_text", "build_vision",
           "register_text_tower", "register_vision_tower"]

"""The dual encoder: an image tower and a text tower projected into one shared space.

The towers take tensors (their surface: `towers.py`); this class composes them into the string API
the rest of visembed uses (`encode_text(list[str])`), into the tensor API training uses
(`forward(pixels, input_ids, attention_mask)`, the tokens made by `text_tokens(texts)` in the data
loader), and hands out the image tower's cells (`image_tokens`) to models built on top of it (the
captioner).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import ModelConfig
from visembed.models.towers import TextTower, VisionTower


class DualEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vision: VisionTower, text: TextTower):
        super().__init__()
        self.cfg = cfg
        self.vision = vision
        self.text = text
        if cfg.vision.head == "mlp":  # vision.head_hidden wide, as LLaVA's projector
            self.visual_projection = nn.Sequential(nn.Linear(vision.width, cfg.vision.head_hidden), nn.GELU(),
                                                   nn.Linear(cfg.vision.head_hidden, cfg.embed_dim))
        elif cfg.vision.head == "none":  # the pooled features are the embedding (SigLIP)
            self.visual_projection = nn.Identity()
        else:
            self.visual_projection = nn.Linear(vision.width, cfg.embed_dim, bias=False)
        # SigLIP's text head has a bias (text towers other than the BPE transformer have no such option)
        self.text_projection = nn.Linear(text.width, cfg.embed_dim, bias=cfg.text.projection_bias)
        if cfg.vision.head == "linear":  # (initialised in this order: the same draws as before the mlp head existed)
            nn.init.normal_(self.visual_projection.weight, std=vision.width**-0.5)
        nn.init.normal_(self.text_projection.weight, std=text.width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))  # stored as a log, as CLIP
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias))) if cfg.loss == "siglip" else None
        self.register_buffer("pixel_mean", torch.tensor(cfg.vision.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.vision.std).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float (B, 3, S, S) in [0, 1] -> (B, embed_dim), not normalised."""
        return self.visual_projection(self.vision(self.normalize_pixels(pixels)))

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [0, 1] -> what the vision tower reads (its mean and std applied)."""
        return (pixels - self.pixel_mean) / self.pixel_std

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> the image tower's cells before pooling (B, N, image_token_width)."""
        return self.vision.forward_features(self.normalize_pixels(pixels))

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cells from `image_tokens` -> (B, embed_dim), not normalised: pooled and projected."""
        return self.visual_projection(self.vision.pool(tokens))

    @property
    def image_token_width(self) -> int:
        return self.vision.width

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts: list of B strings -> (B, embed_dim), not normalised (tokenize + the tower, composed)."""
        return self.text_projection(self.text.encode(texts))

    def text_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """What `forward` reads of `texts` (besides pixels): {"input_ids", "attention_mask"} and what
        else the text tower asks for (made on the CPU, where the data is loaded)."""
        return self.text.batch_tokens(texts)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        bank: torch.Tensor | None = None, **text_tokens: torch.Tensor,
    ) -> dict[str, torch.Tensor | None]:
        """pixels (B, 3, S, S) in [0, 1] and `text_tokens(texts)` of B texts -> normalised features of
        both and the temperature. `bank`: text-tower outputs (K, text width) of a caption bank
        (`visembed.train.caption_bank`), projected here so that the projection learns from them."""
        image = self.encode_image(pixels)  # (image first: the order random draws were taken in)
        text = self.text_projection(self.text.encode_tokens(input_ids, attention_mask, **text_tokens))
        out = {
            "image_features": F.normalize(image, dim=-1),
            "text_features": F.normalize(text, dim=-1),
            "logit_scale": self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp(),
            "logit_bias": self.logit_bias,
        }
        if bank is not None:
            out["bank_features"] = F.normalize(self.text_projection(bank), dim=-1)
        return out

    def save_assets(self, out_dir: str | Path) -> None:
        """Files the towers need besides weights (tokenizer, HF encoder config)."""
        self.text.save_assets(Path(out_dir))
        self.vision.save_assets(Path(out_dir))

    def layer_groups(self) -> list[nn.Module]:
        """What layer-wise learning-rate decay scales (input side first): the image tower's layer groups."""
        return self.vision.layer_groups()

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay besides every vector and scalar: the towers' own and
        the temperature."""
        return ({f"vision.{name}" for name in self.vision.no_weight_decay()}
                | {f"text.{name}" for name in self.text.no_weight_decay()} | {"logit_scale", "logit_bias"})

    def without_feature_cache(self) -> "DualEncoder":
        """No cached tower features (a loaded model: inference never sees an image twice)."""
        self.vision.with_feature_cache(0)
        return self

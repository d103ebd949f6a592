"""Model library: towers, dual encoder, and `build_model` from a config (class chosen by explicit fields)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import ModelConfig, RunConfig
from visembed.models.dual_encoder import DualEncoder

VISION_KINDS = ("vit", "convnet")
TEXT_KINDS = ("transformer", "hf")
LOSS_KINDS = ("clip", "siglip")


def needs_bpe_tokenizer(cfg: ModelConfig) -> bool:
    """Whether a BPE tokenizer must be trained on the captions before the model is built."""
    return cfg.text.kind == "transformer" or (cfg.text.kind == "hf" and cfg.text.cjk_student)


def build_vision(cfg: ModelConfig) -> nn.Module:
    if cfg.vision.kind == "vit":
        from visembed.models.vision_vit import VisionTransformer

        return VisionTransformer(cfg.vision)
    if cfg.vision.kind == "convnet":
        from visembed.models.vision_convnet import ConvNet

        return ConvNet(cfg.vision)
    raise ValueError(f"model.vision.kind must be one of {VISION_KINDS}, got {cfg.vision.kind!r}")


def build_text(cfg: ModelConfig, tokenizer_dir: str | Path | None) -> nn.Module:
    if cfg.text.kind == "transformer":
        from visembed.models.text_transformer import TextTransformer

        return TextTransformer(cfg.text, tokenizer_dir)
    if cfg.text.kind == "hf":
        from visembed.models.text_hf import HFTextEncoder

        return HFTextEncoder(cfg.text, tokenizer_dir)
    raise ValueError(f"model.text.kind must be one of {TEXT_KINDS}, got {cfg.text.kind!r}")


def build_model(cfg: ModelConfig, tokenizer_dir: str | Path | None = None) -> DualEncoder:
    """Build a fresh dual encoder. `tokenizer_dir` holds tower assets (tokenizer.json, text_encoder/)."""
    if cfg.loss not in LOSS_KINDS:
        raise ValueError(f"model.loss must be one of {LOSS_KINDS}, got {cfg.loss!r}")
    return DualEncoder(cfg, build_vision(cfg), build_text(cfg, tokenizer_dir))


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DualEncoder, RunConfig]:
    """(model in eval mode on `device`, RunConfig) from a model or run folder."""
    from visembed.checkpoint import load_weights, read_config, weights_path

    cfg = read_config(folder)
    model = build_model(cfg.model, tokenizer_dir=folder)
    load_weights(model, weights_path(folder))
    return model.to(device).eval(), cfg


__all__ = ["DualEncoder", "build_model", "load_model_folder", "needs_bpe_tokenizer"]

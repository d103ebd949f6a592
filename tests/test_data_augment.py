import dataclasses

import torch
from PIL import Image

from visembed.config import AugmentConfig
from visembed.data import augment_preview, build_eval_transform, build_train_augment, open_dataset
from visembed.data.augment import TrainAugment, remove_outlines


def batch():
    ds = open_dataset("builtin:shapes?n=10&size=32")
    from visembed.data import to_tensor

    return torch.stack([to_tensor(s.image, 32) for s in ds]).float() / 255  # (8, 3, 32, 32)


def test_augment_changes_pixels_keeps_shape_and_range():
    x = batch()
    y = build_train_augment(AugmentConfig(style_prob=0.5, blur_prob=0.5, grayscale_prob=0.5))(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0 <= y.min() and y.max() <= 1
    assert (y - x).abs().mean() > 0.01


def test_augment_is_reproducible_under_torch_manual_seed():
    x = batch()
    augment = build_train_augment(AugmentConfig(style_prob=0.5, blur_prob=0.5, grayscale_prob=0.5))
    torch.manual_seed(7)
    first = augment(x)
    torch.manual_seed(7)
    second = augment(x)
    third = augment(x)
    assert torch.equal(first, second) and not torch.equal(second, third)


def test_flip_is_off_by_default_and_disabled_means_identity():
    cfg = AugmentConfig()
    assert cfg.flip is False
    assert not any("Flip" in type(m).__name__ for m in TrainAugment(cfg)._pipeline(32).modules())
    with_flip = TrainAugment(dataclasses.replace(cfg, flip=True))._pipeline(32)
    assert any("Flip" in type(m).__name__ for m in with_flip.modules())
    x = batch()
    assert torch.equal(build_train_augment(dataclasses.replace(cfg, enabled=False))(x), x)
    assert torch.equal(build_eval_transform()(x), x)


def test_outline_removal_erases_thin_dark_lines():
    x = torch.ones(1, 3, 16, 16)
    x[:, :, 8, :] = 0  # a one-pixel black line across white
    assert remove_outlines(x).min() == 1


def test_augment_preview_writes_a_grid(tmp_path):
    ds = open_dataset("builtin:shapes?n=40&size=32")
    out = tmp_path / "preview.png"
    augment_preview(ds, AugmentConfig(style_prob=0.5), out, n=3, size=32, variants=4, zoom_factor=2)
    with Image.open(out) as image:
        assert image.size == ((1 + 4) * 64, 3 * (64 + 14))

"""Contrastive losses against a naive per-pair computation in plain Python floats."""

import math

import pytest
import torch
import torch.nn.functional as F

from visembed.losses import ContrastiveLoss


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def naive_clip(image, text, scale):
    img, txt = image.tolist(), text.tolist()
    n = len(img)
    total = 0.0
    for i in range(n):  # image i must pick text i among all texts, and text i image i
        row = [scale * _dot(img[i], txt[j]) for j in range(n)]
        col = [scale * _dot(img[j], txt[i]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def naive_siglip(image, text, scale, bias):
    img, txt = image.tolist(), text.tolist()
    n = len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * _dot(img[i], txt[j]) + bias
            label = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-label * z))  # -log sigmoid(label * z)
    return total / n


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_matches_naive_loop(scale):
    image, text = _features()
    got = ContrastiveLoss("clip")(image, text, torch.tensor(scale, dtype=torch.float64))["contrastive_loss"]
    assert got.item() == pytest.approx(naive_clip(image, text, scale), rel=1e-6)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_matches_naive_loop(scale, bias):
    image, text = _features(seed=1)
    got = ContrastiveLoss("siglip")(
        image, text, torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    )["contrastive_loss"]
    assert got.item() == pytest.approx(naive_siglip(image, text, scale, bias), rel=1e-6)


def naive_caption_bank(image, bank, labels, scale):
    img, captions = image.tolist(), bank.tolist()
    total = 0.0
    for i, label in enumerate(labels):  # image i must pick caption `label` among every caption of the bank
        if label < 0:
            continue  # its caption is not in the bank: nothing to pick, but it counts in the mean
        row = [scale * _dot(img[i], c) for c in captions]
        total += -row[label] + math.log(sum(math.exp(v) for v in row))
    return total / len(img)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_caption_bank_term_matches_naive_loop_and_adds_to_the_batch_loss(kind):
    image, text = _features(seed=4)
    bank = F.normalize(torch.randn(9, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64), dim=-1)
    labels = [3, 0, -1, 8, 3, 5]  # two images share a caption; one caption is not in the bank
    scale, bias = torch.tensor(14.3, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    batch_only = ContrastiveLoss(kind)(image, text, scale, bias)["contrastive_loss"]
    with_bank = ContrastiveLoss(kind, bank_weight=0.5)(image, text, scale, bias, bank=bank,
                                                       bank_labels=torch.tensor(labels))["contrastive_loss"]
    expected = batch_only.item() + 0.5 * naive_caption_bank(image, bank, labels, 14.3)
    assert with_bank.item() == pytest.approx(expected, rel=1e-6)
    assert with_bank.item() > batch_only.item()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_matched_pairs_give_lower_loss_and_gradients_flow(kind):
    image, text = _features(seed=2)
    image = image.float().requires_grad_()
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)
    loss_fn = ContrastiveLoss(kind)
    aligned = loss_fn(image, image.detach(), scale, bias)["contrastive_loss"]
    shuffled = loss_fn(image, image.detach().roll(1, dims=0), scale, bias)["contrastive_loss"]
    assert aligned < shuffled
    aligned.backward()
    assert image.grad.abs().sum() > 0 and scale.grad is not None


def test_unknown_kind_and_missing_bias_are_clear_errors():
    with pytest.raises(ValueError, match="unknown contrastive loss"):
        ContrastiveLoss("triplet")
    image, text = _features()
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("siglip")(image, text, torch.tensor(10.0), None)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_logits_stay_fp32_under_bf16_autocast(kind):
    image, text = (x.float() for x in _features(n=32, d=64, seed=3))
    args = (image, text, torch.tensor(50.0), torch.tensor(-5.0))
    expected = ContrastiveLoss(kind)(*args)["contrastive_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ContrastiveLoss(kind)(*args)["contrastive_loss"]
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)

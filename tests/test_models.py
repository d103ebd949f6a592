"""One smoke test over every preset (timm's habit), plus the properties the towers promise."""

import math

import pytest
import torch

from visembed.config import apply_overrides, load_preset, preset_names
from visembed.models import build_model, needs_bpe_tokenizer

CAPTIONS = ["a small red circle", "一只狗", "dog face", "a blue square left of a green triangle"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CAPTIONS * 20 + ["狗脸", "苹果", "火箭"] * 10, 600, folder / "tokenizer.json")
    return folder


def _small(name):
    """The preset's architecture kinds, shrunk so that every preset builds and runs in a test."""
    cfg = load_preset(name)
    small = ["model.embed_dim=24"]
    if cfg.model.vision.kind == "vit":
        small += ["model.vision.width=32", "model.vision.depth=1", "model.vision.heads=2", "model.vision.image_size=32",
                  "model.vision.patch_size=8"]
    if cfg.model.vision.kind == "convnet":
        small += ["model.vision.channels=[8,16]"]
    if cfg.model.text.kind == "transformer":
        small += ["model.text.vocab_size=600", "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
                  "model.text.context_length=16"]
    return apply_overrides(cfg, small)


@pytest.mark.parametrize("name", preset_names())
def test_preset_builds_and_runs_forward_backward(name, tokenizer_dir):
    cfg = _small(name)
    model = build_model(cfg.model, tokenizer_dir=tokenizer_dir if needs_bpe_tokenizer(cfg.model) else None)
    size = cfg.model.vision.image_size
    out = model(torch.rand(4, 3, size, size), **model.text_tokens(CAPTIONS))
    assert out["image_features"].shape == out["text_features"].shape == (4, 24)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (out["logit_bias"] is not None) == (cfg.model.loss == "siglip")
    loss = (out["image_features"] @ out["text_features"].T).sum() * out["logit_scale"]
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in model.vision.parameters() if p.requires_grad)  # a locked tower has none
    assert sum(p.grad.abs().sum() for p in trainable if p.grad is not None) > 0


def test_logit_scale_is_clamped_like_clip(tokenizer_dir):
    cfg = _small("tiny")
    model = build_model(cfg.model, tokenizer_dir)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model(torch.rand(1, 3, 32, 32), **model.text_tokens(["x"]))["logit_scale"].item(), 100.0, rel_tol=1e-5)


def test_text_pooling_ignores_padding(tokenizer_dir):
    """EOS pooling under a causal mask: a caption's feature must not depend on what it is batched with."""
    model = build_model(_small("tiny").model, tokenizer_dir).eval()
    alone = model.encode_text(["dog face"])
    batched = model.encode_text(["dog face", "a blue square left of a green triangle"])[:1]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_vit_names_match_transformers_clip(tokenizer_dir):
    names = set(build_model(_small("tiny").model, tokenizer_dir).state_dict())
    for expected in ["vision.patch_embedding.weight", "vision.class_embedding", "vision.position_embedding.weight",
                     "vision.pre_layrnorm.weight", "vision.post_layernorm.bias",
                     "vision.encoder.layers.0.self_attn.q_proj.weight", "vision.encoder.layers.0.mlp.fc1.weight",
                     "text.token_embedding.weight", "text.encoder.layers.0.layer_norm1.weight",
                     "text.final_layer_norm.weight", "visual_projection.weight", "text_projection.weight", "logit_scale"]:
        assert expected in names
    assert "visual_projection.bias" not in names and "vision.patch_embedding.bias" not in names


def test_frozen_hf_tower_routes_chinese_to_student(tokenizer_dir):
    cfg = _small("demo-scratch")
    model = build_model(cfg.model, tokenizer_dir)
    assert not any(p.requires_grad for p in model.text.encoder.parameters())  # locked tower
    out = model(torch.rand(2, 3, 64, 64), **model.text_tokens(["dog face", "狗脸"]))
    out["text_features"].sum().backward()
    assert model.text.student.token_embedding.weight.grad is not None  # Chinese went through the student
    assert model.text.encoder.embeddings.word_embeddings.weight.grad is None


def test_frozen_hf_tower_is_deterministic_in_train_mode(tokenizer_dir):
    """The locked tower's features are cached: they must not carry dropout noise."""
    model = build_model(_small("demo-scratch").model, tokenizer_dir).train()
    assert not model.text.encoder.training
    first = model.text(*model.text.tokenize(["dog face", "red apple"]))
    assert torch.equal(first, model.text(*model.text.tokenize(["dog face", "red apple"])))


def test_caption_bank_holds_the_distinct_captions_the_frozen_tower_reads(tokenizer_dir):
    from visembed.data import DataError, ListDataset, Sample
    from visembed.train.caption_bank import build_caption_bank

    model = build_model(_small("demo-scratch").model, tokenizer_dir)  # frozen MiniLM with a CJK student
    captions = ["dog face", "狗脸", "dog face", "red apple"]  # the student reads 狗脸: it changes every step
    data = ListDataset([Sample(id=str(i), image="x.png", caption=c) for i, c in enumerate(captions)])
    bank = build_caption_bank(model, data, progress=False)
    assert bank.captions == ["dog face", "red apple"]
    torch.testing.assert_close(bank.features, model.text.encode(["dog face", "red apple"]))
    assert bank.labels(["red apple", "狗脸", "dog face"]).tolist() == [1, -1, 0]

    with pytest.raises(ValueError, match="frozen text tower"):
        build_caption_bank(build_model(_small("tiny").model, tokenizer_dir), data, progress=False)
    data.streaming = True
    with pytest.raises(DataError, match="known length"):
        build_caption_bank(model, data, progress=False)


@pytest.mark.parametrize("kind, tokens", [("vit", 1 + (32 // 8) ** 2), ("convnet", (32 // 4) ** 2)])
def test_vision_towers_hand_out_tokens_and_pool_them(kind, tokens):
    """forward_features -> (B, N, width): the class token and patches of a ViT, the last feature
    map's cells of a ConvNet; forward is pool(forward_features)."""
    from visembed.models import build_vision

    cfg = apply_overrides(load_preset("tiny"), [f"model.vision.kind={kind}", "model.vision.image_size=32"]
                          + (["model.vision.channels=[8,16]"] if kind == "convnet" else [])).model
    tower = build_vision(cfg).eval()
    pixels = torch.rand(2, 3, 32, 32)
    features = tower.forward_features(pixels)
    assert features.shape == (2, tokens, tower.width)
    torch.testing.assert_close(tower.pool(features), tower(pixels))
    assert tower(pixels).shape == (2, tower.width)


@pytest.mark.parametrize("preset", ["tiny", "demo-scratch"])
def test_text_towers_tokenize_then_forward_as_encode_text_does(preset, tokenizer_dir):
    """The tensor contract: tokenize(texts) -> (ids, mask) and forward(ids, mask) compose into the
    string API (English texts: the hf tower's student reads only CJK text)."""
    model = build_model(_small(preset).model, tokenizer_dir).eval()
    texts = ["dog face", "a blue square left of a green triangle"]
    ids, mask = model.text.tokenize(texts)
    assert ids.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 2
    assert mask.sum(dim=1).tolist()[0] < mask.shape[1]  # the shorter text is padded
    with torch.no_grad():
        composed = model.text_projection(model.text(ids, mask))
        torch.testing.assert_close(composed, model.encode_text(texts))


@pytest.mark.parametrize("pool, causal", [("eos", True), ("last", False)])
def test_text_encode_cuts_padding_only_where_nothing_reads_it(pool, causal, tokenizer_dir):
    """CLIP-style towers (causal, pooled at <eos>) run on the batch's longest text, not the whole
    context (names are a third of it); SigLIP-style ones (pooled at the last position) need it all."""
    cfg = apply_overrides(_small("tiny"), [f"model.text.pool={pool}", f"model.text.causal={str(causal).lower()}"])
    tower = build_model(cfg.model, tokenizer_dir).eval().text
    texts = ["dog face", "a small red circle"]
    seen = []
    tower.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    ids, mask = tower.tokenize(texts)
    with torch.no_grad():
        full = tower(ids, mask)
        cut = tower.encode(texts)
    longest = int(mask.sum(dim=1).max())
    assert longest < ids.shape[1]
    assert seen[-1] == (longest if pool == "eos" else ids.shape[1])
    torch.testing.assert_close(cut, full)


def test_frozen_tower_cache_is_bounded_least_recently_used_first(tokenizer_dir):
    model = build_model(_small("demo-scratch").model, tokenizer_dir).eval()
    model.text._cache.limit = 3
    with torch.no_grad():
        first = model.encode_text(["red apple"])
        model.encode_text(["dog face", "cat face"])
        model.encode_text(["red apple"])  # used again: now the most recent
        model.encode_text(["green pear"])  # over the limit: "dog face", the least recent, leaves
        assert list(model.text._cache.keys()) == ["cat face", "red apple", "green pear"]
        assert torch.equal(model.encode_text(["red apple"]), first)


def _last_block_rows(encoder, run):
    """How many tokens per sequence the last block's MLP computed while `run()` ran."""
    seen = []
    hook = encoder.layers[-1].mlp.fc1.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape[1]))
    try:
        out = run()
    finally:
        hook.remove()
    return out, seen


@pytest.mark.parametrize("pool, causal, mask_padding", [("eos", True, False), ("eos", False, False),
                                                        ("last", False, True), ("last", False, False)])
def test_text_forward_computes_only_the_pooled_token_in_the_last_block(pool, causal, mask_padding, tokenizer_dir):
    """`forward` is `forward_features` read at the pooled position (each text's <eos>, or the last
    position), with the last block computing that token alone: texts of different lengths, with and
    without causal attention and masked padding, give the numbers of the full computation."""
    from visembed.config import TransformerTextConfig
    from visembed.models.text_transformer import TextTransformer

    torch.manual_seed(0)
    tower = TextTransformer(TransformerTextConfig(vocab_size=600, context_length=16, width=32, depth=3, heads=2,
                                                  pool=pool, causal=causal, mask_padding=mask_padding),
                            tokenizer_dir).eval()
    ids, mask = tower.tokenize(["dog face", "a blue square left of a green triangle", "一只狗"])
    assert len(set(mask.sum(dim=1).tolist())) == 3  # three lengths
    with torch.no_grad():
        full = tower.forward_features(ids, mask)
        pooled, rows = _last_block_rows(tower.encoder, lambda: tower(ids, mask))
    at = full[:, -1] if pool == "last" else full[torch.arange(3), mask.sum(dim=1) - 1]
    torch.testing.assert_close(pooled, at, rtol=1e-5, atol=1e-6)
    assert rows == [1]  # the last block's MLP saw one token per text, not 16


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_vit_forward_computes_only_the_class_token_in_the_last_block(depth):
    from visembed.config import ViTConfig
    from visembed.models.vision_vit import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=32, depth=depth, heads=2)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled, rows = _last_block_rows(vit.encoder, lambda: vit(x))
        torch.testing.assert_close(pooled, vit.pool(vit.forward_features(x)), rtol=1e-5, atol=1e-6)
        assert torch.equal(vit.forward_stages(x)[0], pooled)  # the same path, bit for bit
    # one block: forward_stages reads that block's every token, so forward computes them all too
    assert rows == ([17] if depth == 1 else [1])

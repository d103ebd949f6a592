"""transformers SigLIP import: `hf:PATH` on a tiny random `SiglipModel` built with transformers' own
classes, with a SentencePiece-style (Unigram) tokenizer saved as `tokenizer.json` beside it.
Embeddings are compared with transformers' `get_image_features` / `get_text_features` on the same
inputs (the processor's output, text padded to max_length)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import visembed
from visembed.checkpoint import ModelFolderError
from visembed.cli import app

CONTEXT = 16  # max_position_embeddings of the tiny model (SigLIP's own: 64)
TEXTS = ["a cat", "a dog and a cat with a tail that goes on and on and on and on and on and on and on and on", "",
         "a small red circle left of a blue square", "一只猫"]


def _square_images(size: int, seed: int = 0) -> list[Image.Image]:
    """Square pictures: SigLIP squashes to a square where visembed crops, so only squares agree."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (size, size, 50, 17)]
    gradient = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
    return images + [Image.fromarray(gradient)]


def _siglip_tokenizer():
    """A Unigram (SentencePiece-style) tokenizer as SigLIP's: Metaspace, `</s>` appended, padded with `</s>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"] + [("▁", -3.0)]
    pieces += [("▁" + w, -2.0) for w in ("a", "cat", "dog", "and", "with", "tail", "on", "the", "red", "blue", "small")]
    pieces += [(f"x{i}", -9.0) for i in range(300 - len(pieces))]  # a vocabulary of 300 (visembed's minimum is 259)
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=CONTEXT)


def _save_tiny_siglip(folder, seed: int = 0):
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _siglip_tokenizer()
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = SiglipConfig(text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": CONTEXT,
                                       "pad_token_id": 1, "eos_token_id": 1},
                          vision_config={**common, "image_size": 32, "patch_size": 8})
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # random LayerNorms, biases, probe and logit bias: a test that would miss them if identity
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "probe" in name or name.startswith("logit"):
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return _save_tiny_siglip(tmp_path_factory.mktemp("hf_siglip"))


def _hf_siglip_embeddings(folder, texts, images, use_mask: bool = True):
    """transformers' own: `get_text_features(**processor(text=..., padding="max_length"))` (with the
    attention mask the processor returns, or only the ids), `get_image_features(pixel_values)`."""
    from transformers import AutoProcessor, SiglipModel

    model = SiglipModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=texts, images=images, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        mask = inputs["attention_mask"] if use_mask else None
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=mask)
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
    text = getattr(text, "pooler_output", text)
    image = getattr(image, "pooler_output", image)
    return F.normalize(text, dim=-1).numpy(), F.normalize(image, dim=-1).numpy(), inputs


def _assert_same(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 1e-4, diff
    assert (ours * theirs).sum(axis=1).min() >= 0.9999
    return diff


def test_siglip_import_gives_transformers_embeddings(tiny_siglip):
    model = visembed.load(f"hf:{tiny_siglip}", device="cpu")
    images = _square_images(32)
    text, image, inputs = _hf_siglip_embeddings(tiny_siglip, TEXTS, images)
    ids, mask = model.module.text.tokenize(TEXTS)
    assert ids.shape == (len(TEXTS), CONTEXT)  # padded to max_length with </s>, as the processor
    assert torch.equal(ids, inputs["input_ids"]) and torch.equal(mask, inputs["attention_mask"].bool())
    cfg = model.config.model
    assert (cfg.loss, cfg.vision.pool, cfg.vision.head, cfg.text.pool, cfg.text.causal) == ("siglip", "map", "none", "last", False)
    assert cfg.vision.activation == cfg.text.activation == "gelu_tanh" and cfg.vision.mean == [0.5, 0.5, 0.5]
    _assert_same(model.encode_text(TEXTS), text)
    _assert_same(model.encode_image(images), image)
    # the temperature and bias come along
    state = load_file(str(tiny_siglip / "model.safetensors"))
    assert torch.equal(model.module.logit_scale.reshape(1), state["logit_scale"])
    assert torch.equal(model.module.logit_bias.reshape(1), state["logit_bias"])


def test_siglip_without_the_padding_mask_is_transformers_on_ids_alone(tiny_siglip, tmp_path):
    """`model.text.mask_padding=false`: what `get_text_features(input_ids)` computes (SigLIP's training)."""
    from visembed.interop.cache import resolve_model

    folder = tmp_path / "nomask"
    shutil.copytree(resolve_model(f"hf:{tiny_siglip}"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["text"]["mask_padding"] = False
    (folder / "config.json").write_text(json.dumps(config))
    text, _, _ = _hf_siglip_embeddings(tiny_siglip, TEXTS, _square_images(32)[:1], use_mask=False)
    masked, _, _ = _hf_siglip_embeddings(tiny_siglip, TEXTS, _square_images(32)[:1], use_mask=True)
    assert np.abs(text - masked).max() > 1e-3  # the mask matters: the option is not decoration
    _assert_same(visembed.load(folder, device="cpu").encode_text(TEXTS), text)


def test_siglip_import_is_strict_about_weights(tiny_siglip, tmp_path):
    from test_interop_hf import edited_copy

    from visembed.interop.cache import resolve_model

    missing = edited_copy(tiny_siglip, tmp_path / "missing", lambda state: state.pop("vision_model.head.probe"))
    with pytest.raises(ModelFolderError, match=r"SiglipModel .*missing: \['vision_model.head.probe'\]"):
        resolve_model(f"hf:{missing}")

    extra = edited_copy(tiny_siglip, tmp_path / "extra",
                        lambda state: state.update({"vision_model.embeddings.class_embedding": torch.zeros(32)}))
    with pytest.raises(ModelFolderError, match=r"unexpected: \['vision_model.embeddings.class_embedding'\]"):
        resolve_model(f"hf:{extra}")


def test_siglip_export_to_clip_is_refused(tiny_siglip, tmp_path):
    from visembed.interop.cache import resolve_model

    result = CliRunner().invoke(app, ["export", str(resolve_model(f"hf:{tiny_siglip}")), "--format", "hf",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--format onnx" in result.output, result.output


def test_finetuning_from_siglip_init_runs_and_resumes_exactly(tiny_siglip, tmp_path):
    """`train --init hf:SIGLIP` (sigmoid loss), then the same run stopped after its first checkpoint and resumed."""
    from test_interop_hf import finetune_and_resume

    start, a, b = finetune_and_resume(f"hf:{tiny_siglip}", "builtin:shapes?n=64", tmp_path)
    assert a.keys() == b.keys() == start.keys() and "vision.head.probe" in a and "logit_bias" in a
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert not torch.equal(a["text_projection.weight"], start["text_projection.weight"])  # it did train
    assert not torch.equal(a["logit_bias"], start["logit_bias"])
    saved = json.loads((tmp_path / "whole" / "config.json").read_text())["model"]
    assert saved["loss"] == "siglip" and saved["vision"]["pool"] == "map" and saved["text"]["pool"] == "last"


def test_imported_siglip_exports_to_onnx(tiny_siglip, tmp_path):
    """onnxruntime on the exported graphs (tokenizer.json padding to the full context) gives visembed's embeddings."""
    pytest.importorskip("onnxruntime")
    from test_export_onnx import check_export

    from visembed.interop.cache import resolve_model

    out, prep = check_export(tmp_path, resolve_model(f"hf:{tiny_siglip}"))
    assert (out / "text_encoder.onnx").is_file()


@pytest.mark.parametrize("overrides, message", [
    (["model.vision.head=none", "model.embed_dim=48"], "model.embed_dim: must be model.vision.width"),
    (["model.text.mask_padding=true"], "model.text.mask_padding: must be false while model.text.causal is true"),
    (["model.vision.kind=convnet", "model.vision.pool=map"], "model.vision.pool: must be 'class' unless"),
    (["model.text.kind=hf", "model.text.pool=last"], "model.text.pool: must be 'eos' unless"),
    (["model.vision.layer_norm_eps=0"], "model.vision.layer_norm_eps: must be in"),
])
def test_siglip_options_are_validated(overrides, message):
    from visembed.config import ConfigError, apply_overrides, load_preset

    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_preset("tiny"), overrides)

"""A captioner exported as a transformers LLaVA folder (`visembed export DIR --format hf`): loaded with
LlavaForConditionalGeneration / AutoModelForImageTextToText and its AutoProcessor, it gives visembed's
logits at every position and the same greedy answers (tiny random GPT-2, Qwen2 and Llama LMs); the
captioners it cannot express are refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

import visembed
from visembed.cli import app
from visembed.data.conversations import IMAGE_TOKEN
from visembed.models.chat_format import encode

from conftest import TINY_CAPTIONER
from test_captioner import _tiny_hf_lm

SHAPES = "builtin:shapes?n=64"
TOLERANCE = 1e-4
CONVERSATIONS = [
    [{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat is this?"}],
    [{"role": "user", "content": f"{IMAGE_TOKEN}\nDescribe the picture."}, {"role": "assistant", "content": "a red circle"},
     {"role": "user", "content": "And left of it?"}],
]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (40, 64), (90, 50)]]


def _captioner(tiny_model_dir, folder, lm: str, *overrides: str):
    """A captioner trained for a step in each stage (embedding_tokens=0 unless overridden)."""
    from visembed.train.captioner_run import captioner_config, train_captioner

    cfg = captioner_config(tiny_model_dir, SHAPES, lm=lm, steps=2,
                           overrides=TINY_CAPTIONER + ["model.captioner.max_tokens=200", "model.captioner.embedding_tokens=0",
                                                       *overrides])
    train_captioner(cfg, folder, stage="both", progress=False)
    return folder


@pytest.mark.parametrize("family, projector_hidden", [("gpt2", 16), ("qwen2", 32), ("llama", 24)])
def test_a_captioner_exports_to_llava_with_the_same_logits_and_answers(family, projector_hidden, tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    lm = "gpt2" if family == "gpt2" else str(_tiny_hf_lm(tmp_path / family, family))
    cap = _captioner(tiny_model_dir, tmp_path / "cap", lm, f"model.captioner.projector_hidden={projector_hidden}",
                     "model.captioner.hints=2")
    ours = visembed.load(cap, device="cpu")
    module = ours.module
    assert module.embedding_projector is None
    assert isinstance(ours.caption(_images()[:1])[0], str)  # a captioner without embedding tokens works in visembed

    out = tmp_path / "llava"
    result = CliRunner().invoke(app, ["export", str(cap), "--format", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_feature_select_strategy"] == "full"
    assert config["vision_feature_layer"] == -1 and config["text_config"]["model_type"] == family
    card = (out / "README.md").read_text()
    assert "LlavaForConditionalGeneration" in card
    # the hint bank travels with it, and the card says how its prompts used it
    assert json.loads((out / "hints.json").read_text()) == module.hint_bank and "Similar: a; b; c." in card
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # the names transformers 4.x reads (5.x too)
        names = set(f.keys())
    assert {"multi_modal_projector.linear_1.weight", "language_model.lm_head.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight"} <= names
    assert not any(n.startswith(("vision_tower.embeddings.", "model.")) for n in names)

    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    auto = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(auto) is LlavaForConditionalGeneration
    processor = AutoProcessor.from_pretrained(out)
    image_id = model.config.image_token_id
    assert image_id == module.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    worst = 0.0
    for image, turns in zip(_images(), CONVERSATIONS + CONVERSATIONS[:1]):
        prompt = processor.apply_chat_template(turns, add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt", add_special_tokens=False)
        assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
        # the processor's ids are visembed's prompt with <image> expanded to the tower's cells (class token included)
        ids = encode(module.tokenizer, turns, 10**6, prompt=True)
        cells = (inputs["input_ids"][0] == image_id).sum().item()
        assert cells == config["image_seq_length"] == (ours.config.model.vision.image_size // 8) ** 2 + 1
        assert inputs["input_ids"][0].tolist() == ids.ids[: ids.image_at] + [image_id] * cells + ids.ids[ids.image_at:]
        pixels = ours.pixels([image])
        with torch.no_grad():
            embeds, mask, _ = module._spliced(module.visual_prefix(pixels), [ids], left_pad=False)
            expected = module.lm(inputs_embeds=embeds, attention_mask=mask).logits
            for hf in (model, auto):
                logits = hf(**inputs).logits
                assert logits.shape == expected.shape
                worst = max(worst, (logits - expected).abs().max().item())
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answer = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer == module.generate(pixels, [ids], 8)[0][0]
    print(f"{family}: max |logit difference| {worst:.2e}")
    assert worst <= TOLERANCE


def test_a_narrower_projector_is_padded_with_zeros_and_a_multi_turn_prompt_follows_visembed():
    from visembed.interop.llava import _projector, chat_template

    state = {"cell_projector.0.weight": torch.randn(3, 5), "cell_projector.0.bias": torch.randn(3),
             "cell_projector.2.weight": torch.randn(4, 3), "cell_projector.2.bias": torch.randn(4)}
    padded = _projector(state, 4)
    x = torch.randn(2, 5)
    ours = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
        x, state["cell_projector.0.weight"], state["cell_projector.0.bias"])), state["cell_projector.2.weight"],
        state["cell_projector.2.bias"])
    theirs = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
        x, padded["model.multi_modal_projector.linear_1.weight"], padded["model.multi_modal_projector.linear_1.bias"])),
        padded["model.multi_modal_projector.linear_2.weight"], padded["model.multi_modal_projector.linear_2.bias"])
    # the padding is exact zeros around exact copies (GELU(0) = 0: the extra hidden units add nothing) ...
    w1, b1 = padded["model.multi_modal_projector.linear_1.weight"], padded["model.multi_modal_projector.linear_1.bias"]
    w2 = padded["model.multi_modal_projector.linear_2.weight"]
    assert torch.equal(w1[:3], state["cell_projector.0.weight"]) and not w1[3:].any()
    assert torch.equal(b1[:3], state["cell_projector.0.bias"]) and not b1[3:].any()
    assert torch.equal(w2[:, :3], state["cell_projector.2.weight"]) and not w2[:, 3:].any()
    # ... so the outputs agree up to the summation order of a wider matrix product (BLAS may change it)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(chat_template("<bos>"))
    text = template.render(messages=CONVERSATIONS[1], eos_token="<eos>")
    assert text == "<bos>USER: <image>\nDescribe the picture.\nASSISTANT: a red circle<eos>\nUSER: And left of it?\nASSISTANT:"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]}]
    assert template.render(messages=parts, eos_token="<eos>") == "<bos>USER: <image>\nDescribe the picture.\nASSISTANT:"


def _config(tiny_model_dir, *overrides: str):
    from visembed.train.captioner_run import captioner_config

    return captioner_config(tiny_model_dir, SHAPES, overrides=TINY_CAPTIONER + list(overrides))


@pytest.mark.parametrize("overrides, reason", [
    ([], "embedding_tokens is 4"),
    (["model.captioner.embedding_tokens=0", "model.vision.kind=convnet"], "kind is 'convnet'"),
    (["model.captioner.embedding_tokens=0", "model.vision.kind=efficientnet_lite"], "kind is 'efficientnet_lite'"),
    (["model.captioner.embedding_tokens=0", "model.vision.pool=map"], "model.vision.pool differ from CLIP's"),
    (["model.captioner.embedding_tokens=0", "model.captioner.lm=minilm"], "BERT encoder run as a decoder"),
])
def test_captioners_without_a_llava_form_are_refused_naming_the_reason(overrides, reason, tiny_model_dir):
    from visembed.interop.hf_export import ExportError, check_exportable

    cfg = _config(tiny_model_dir, *overrides)
    with pytest.raises(ExportError, match=reason):
        check_exportable(cfg)
    assert check_exportable(_config(tiny_model_dir, "model.captioner.embedding_tokens=0")) == "llava"


def test_a_bert_decoder_lm_folder_is_refused(tiny_model_dir):
    from transformers import BertConfig

    from visembed.interop.hf_export import ExportError
    from visembed.interop.llava import _check_lm

    cfg = _config(tiny_model_dir, "model.captioner.embedding_tokens=0")
    with pytest.raises(ExportError, match="bert encoder run as a decoder"):
        _check_lm(cfg, BertConfig(hidden_size=32, is_decoder=True))


def test_a_projector_wider_than_the_lm_is_refused_with_the_setting_to_train_with(tiny_model_dir, tmp_path):
    cap = _captioner(tiny_model_dir, tmp_path / "cap", "gpt2", "model.captioner.projector_hidden=64")
    result = CliRunner().invoke(app, ["export", str(cap), "--format", "hf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "projector_hidden is 64" in result.output and "model.captioner.projector_hidden=32" in result.output
    assert not (tmp_path / "out").exists()

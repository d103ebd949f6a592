"""transformers interop: `hf:PATH` import (tiny random CLIPModels built with transformers' own
classes), export to CLIPModel / VisionTextDualEncoderModel folders, and the errors on the way.
Embeddings are compared with transformers' own on the same inputs, preprocessing included."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import visembed
from visembed.checkpoint import ModelFolderError
from visembed.cli import app

TEXTS = ["a cat", "A DOG and a cat, with a tail that goes on and on and on and on and on and on and on", "",
         "a small red circle left of a blue square", "一只猫"]


def _images(seed: int = 0) -> list[Image.Image]:
    """Square, landscape and portrait pictures (smooth and noisy), in and beside the tower's size."""
    rng = np.random.default_rng(seed)
    shapes = [(32, 32), (50, 50), (40, 64), (64, 40), (33, 100), (120, 90)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    gradient = np.linspace(0, 255, 70 * 45 * 3).reshape(70, 45, 3).astype(np.uint8)
    return images + [Image.fromarray(gradient)]


def _clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("a", "n"), ("an", "d</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _save_tiny_clip(folder, seed: int = 0, hidden_act: str = "quick_gelu"):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError:  # transformers 4.x (a folder made there, for the version check)
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil

    tokenizer = _clip_tokenizer()
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "hidden_act": hidden_act}
    config = CLIPConfig(
        text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**common, "image_size": 32, "patch_size": 8}, projection_dim=24)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():  # random LayerNorms and biases: a test that would miss them if they were identity
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "pre_layrnorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                    crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return _save_tiny_clip(tmp_path_factory.mktemp("hf_clip"))


def _hf_clip_embeddings(folder, texts, images, context_length):
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=texts, images=images, padding="max_length", max_length=context_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
    text = getattr(text, "pooler_output", text)  # transformers 5 returns an output object
    image = getattr(image, "pooler_output", image)
    return (F.normalize(text, dim=-1).numpy(), F.normalize(image, dim=-1).numpy(), inputs)


def _assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (ours * theirs).sum(axis=1).min() >= 0.9999


def test_hf_import_gives_transformers_embeddings(tiny_clip):
    model = visembed.load(f"hf:{tiny_clip}", device="cpu")
    text, image, inputs = _hf_clip_embeddings(tiny_clip, TEXTS, _images(), 16)
    ids, mask = model.module.text.tokenize(TEXTS)
    real = inputs["attention_mask"].bool()
    assert torch.equal(mask, real) and torch.equal(ids[real], inputs["input_ids"][real])  # CLIPTokenizerFast's ids
    assert model.config.model.text.activation == model.config.model.vision.activation == "quick_gelu"
    _assert_same(model.encode_text(TEXTS), text)
    _assert_same(model.encode_image(_images()), image)


def test_hf_import_is_converted_once_and_again_when_the_source_changes(tiny_clip, tmp_path):
    from visembed.interop.cache import resolve_model

    first = resolve_model(f"hf:{tiny_clip}")
    assert first.parent.name == "imported" and (first / "model.safetensors").is_file()
    assert "transformers CLIPModel folder" in (first / "README.md").read_text()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(f"hf:{tiny_clip}") == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = _save_tiny_clip(tmp_path / "other", seed=1)
    assert resolve_model(f"hf:{other}") != first
    assert resolve_model(tmp_path) == tmp_path  # a plain folder comes back unchanged


def edited_copy(folder, out, edit):
    """A copy of the transformers folder `folder` at `out`, its model.safetensors changed by `edit(state)`."""
    shutil.copytree(folder, out)
    state = load_file(str(out / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"))
    return out


def test_hf_import_is_strict_about_weights(tiny_clip, tmp_path):
    from visembed.interop.cache import resolve_model

    missing = edited_copy(tiny_clip, tmp_path / "missing", lambda state: state.pop("text_projection.weight"))
    with pytest.raises(ModelFolderError, match=r"missing: \['text_projection.weight'\]"):
        resolve_model(f"hf:{missing}")

    extra = edited_copy(tiny_clip, tmp_path / "extra",
                        lambda state: state.update({"vision_model.head.probe": torch.zeros(1, 1, 32)}))
    with pytest.raises(ModelFolderError, match=r"unexpected: \['vision_model.head.probe'\]"):
        resolve_model(f"hf:{extra}")
    assert not list((tmp_path / "cache" / "imported").glob(".tmp*"))  # failed conversions leave nothing behind


def test_other_model_types_fail_with_a_clear_error(tmp_path):
    """SigLIP imports (tests/test_interop_siglip.py); SigLIP 2 and other models are refused by name."""
    for kind, message in (("siglip2", "SigLIP 2 model"), ("bert", "'bert' model")):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": kind}))
        with pytest.raises(ModelFolderError, match=message):
            visembed.load(f"hf:{folder}")
    result = CliRunner().invoke(app, ["eval", f"hf:{tmp_path / 'siglip2'}", "--data", "builtin:shapes?n=8"])
    assert result.exit_code == 2 and "SigLIP 2" in result.output


def finetune_and_resume(init: str, data: str, tmp_path) -> tuple[dict, dict, dict]:
    """`train --init INIT` for 4 steps into tmp_path/whole, and the same run into tmp_path/cut stopped
    after its step-2 checkpoint and resumed: (the imported starting weights, whole's, cut's).
    The imported folder is looked up in tmp_path/cache (VISEMBED_CACHE)."""
    args = ["train", "--init", init, "--data", data, "--preset", "tiny", "--steps", "4",
            "--batch-size", "16", "--checkpoint-every", "2", "--seed", "3", "--no-progress", "--set", "train.warmup_steps=1"]
    runner = CliRunner()
    whole = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    cut = runner.invoke(app, [*args, "--out", str(tmp_path / "cut")])
    assert cut.exit_code == 0, cut.output
    # as if killed after step 2: the last checkpoint and the final weights never got written
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000004")
    (tmp_path / "cut" / "model.safetensors").unlink()
    resumed = runner.invoke(app, [*args, "--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.exit_code == 0 and "resuming from" in resumed.output, resumed.output

    start = load_file(str(next((tmp_path / "cache" / "imported").glob("hf-*")) / "model.safetensors"))
    return start, load_file(str(tmp_path / "whole" / "model.safetensors")), \
        load_file(str(tmp_path / "cut" / "model.safetensors"))


def test_finetuning_from_hf_init_runs_and_resumes_exactly(tiny_clip, tmp_path):
    """`train --init hf:PATH`, then the same run stopped after its first checkpoint and resumed."""
    start, a, b = finetune_and_resume(f"hf:{tiny_clip}", "builtin:shapes?n=96", tmp_path)
    assert a.keys() == b.keys() == start.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert not torch.equal(a["text_projection.weight"], start["text_projection.weight"])  # it did train
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["model"]["text"]["activation"] == "quick_gelu"


# ---- export -------------------------------------------------------------------------------------


def test_export_clip_round_trip(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--format", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ours = visembed.load(tiny_model_dir, device="cpu")
    ctx = ours.config.model.text.context_length
    config = json.loads((out / "config.json").read_text())
    eos = config["text_config"]["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert eos != 2 and eos == len(tokenizer) - 1  # the end token is the largest id: both pooling rules agree
    text, image, inputs = _hf_clip_embeddings(out, TEXTS, _images(), ctx)
    ids, mask = ours.module.text.tokenize(TEXTS)
    assert torch.equal(mask, inputs["attention_mask"].bool())
    assert (inputs["input_ids"][torch.arange(len(TEXTS)), mask.sum(1) - 1] == eos).all()  # <eos> kept when truncated
    _assert_same(ours.encode_text(TEXTS), text)
    _assert_same(ours.encode_image(_images()), image)
    card = (out / "README.md").read_text()
    assert "builtin:shapes" in card and "## Use with transformers" in card and "## Licence" in card
    # and back: importing the export gives the same model
    back = visembed.load(f"hf:{out}", device="cpu")
    _assert_same(back.encode_text(TEXTS), text)
    _assert_same(back.encode_image(_images()), image)


def _save_lit_folder(folder):
    """A ViT + MiniLM (the LiT set-up) model folder, untrained: export only renames weights."""
    from visembed.checkpoint import save_model_folder
    from visembed.config import apply_overrides, load_preset
    from visembed.models import build_model

    cfg = apply_overrides(load_preset("tiny"), ["model.text.kind=hf", "model.text.hf_path=minilm"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_model_folder(model, cfg, folder)
    return folder


def test_export_lit_to_vision_text_dual_encoder(tmp_path):
    from transformers import AutoProcessor, VisionTextDualEncoderModel

    folder = _save_lit_folder(tmp_path / "lit")
    out = tmp_path / "hf"
    from visembed.interop.hf_export import export_hf

    export_hf(folder, out)
    ours = visembed.load(folder, device="cpu")
    model = VisionTextDualEncoderModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    texts = [t for t in TEXTS if t]
    with torch.no_grad():
        image = model.get_image_features(**processor(images=_images(), return_tensors="pt"))
        image = F.normalize(getattr(image, "pooler_output", image), dim=-1).numpy()
        t = processor(text=texts, return_tensors="pt", padding=True)
        hidden = model.text_model(**t).last_hidden_state  # the card's recipe: mean over real tokens
        m = t["attention_mask"].unsqueeze(-1).float()
        text = F.normalize(model.text_projection((hidden * m).sum(1) / m.sum(1)), dim=-1).numpy()
        pooler = model.get_text_features(**t)
        pooler = F.normalize(getattr(pooler, "pooler_output", pooler), dim=-1).numpy()
    _assert_same(ours.encode_image(_images()), image)
    _assert_same(ours.encode_text(texts), text)
    assert np.abs(ours.encode_text(texts) - pooler).max() > 1e-2  # why the card gives the recipe
    assert "get_text_features" in (out / "README.md").read_text()
    # the names transformers 4.x looks for (5.x reads them too); 5.x's own would load as a random tower in 4.x
    names = load_file(str(out / "model.safetensors")).keys()
    assert "vision_model.vision_model.embeddings.patch_embedding.weight" in names
    assert not any(n.startswith("vision_model.embeddings.") for n in names)


def _save_untrained(folder, *overrides):
    from visembed.checkpoint import save_model_folder
    from visembed.config import apply_overrides, load_preset
    from visembed.models import build_model
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    cfg = apply_overrides(load_preset("tiny"), list(overrides))
    folder.mkdir(parents=True)
    train_bpe_tokenizer(["a red circle", "a blue square"], 300, folder)
    save_model_folder(build_model(cfg.model, tokenizer_dir=folder), cfg, folder)
    return folder


@pytest.mark.parametrize("overrides, reason", [
    (["model.vision.kind=convnet"], "no image tower equivalent"),
    (["model.vision.head=mlp"], "one bias-free linear layer"),
])
def test_export_without_a_transformers_equivalent_points_to_onnx(tmp_path, overrides, reason):
    folder = _save_untrained(tmp_path / "m", *overrides)
    result = CliRunner().invoke(app, ["export", str(folder), "--format", "hf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert reason in result.output and "--format onnx" in result.output
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_in_use(tiny_model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--format", "hf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_cjk_student_has_no_transformers_equivalent():
    from visembed.config import load_preset
    from visembed.interop.hf_export import ExportError, check_exportable
    from visembed.config import apply_overrides

    cfg = apply_overrides(load_preset("demo"), ["model.vision.kind=vit", "model.vision.head=linear",
                                                "model.vision.feature_cache=0"])
    with pytest.raises(ExportError, match="CJK text to a distilled student.*--format onnx"):
        check_exportable(cfg)
    assert check_exportable(apply_overrides(cfg, ["model.text.cjk_student.enabled=false"])) == "dual_encoder"


@pytest.mark.parametrize("command", ["export", "merge"])
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--out" in result.output

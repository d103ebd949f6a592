"""ONNX export: onnxruntime on the exported graphs gives what visembed gives, per tower kind, with any
batch size, through the exported tokenizer.json and preprocessing.json alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import visembed  # noqa: E402
from visembed.checkpoint import save_model_folder  # noqa: E402
from visembed.config import apply_overrides, load_preset  # noqa: E402
from visembed.interop.onnx import export_onnx, run_graph  # noqa: E402
from visembed.models import bpe_vocab_size, build_model, needs_bpe_tokenizer  # noqa: E402
from visembed.models.bpe_tokenizer import train_bpe_tokenizer  # noqa: E402

CAPTIONS = ["a small red circle left of a blue square", "a large green triangle above a yellow star",
            "dog", "cat face", "一只猫", "红色的苹果", "grinning face with big eyes"]
TEXTS = ["a red circle", "a blue square above a very large yellow star that is left of a small green triangle " * 3,
         "猫", "an apple"]
TOL = 1e-4


def make_model_folder(tmp_path: Path, overrides: list[str], pretrained: bool = False) -> Path:
    """A model folder of the `tiny` preset with `overrides`, random weights (BatchNorm statistics too)."""
    cfg = apply_overrides(load_preset("tiny"), overrides)
    out = tmp_path / "model"
    out.mkdir()
    if needs_bpe_tokenizer(cfg.model):
        train_bpe_tokenizer(CAPTIONS * 3, bpe_vocab_size(cfg.model), out)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer_dir=out, pretrained=pretrained)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and not pretrained:  # eval-mode statistics must matter
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    save_model_folder(model, cfg, out)
    return out


def images(size: int, n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (size + 7 * i, size + 3, 3), dtype=np.uint8)) for i in range(n)]


def onnx_text(out: Path, texts: list[str], graph: str = "text_encoder.onnx", tokenizer: str = "tokenizer.json") -> np.ndarray:
    from tokenizers import Tokenizer

    enc = Tokenizer.from_file(str(out / tokenizer)).encode_batch(texts)
    return run_graph(out / graph, {"input_ids": np.array([e.ids for e in enc], np.int64),
                                   "attention_mask": np.array([e.attention_mask for e in enc], np.int64)})


def check_export(tmp_path: Path, folder: Path) -> tuple[Path, dict]:
    """Export, then compare onnxruntime with visembed on batches of 1 and 3 through the same graphs."""
    out = tmp_path / "onnx"
    export_onnx(folder, out)
    prep = json.loads((out / "preprocessing.json").read_text())
    model = visembed.load(folder, device="cpu")
    size = prep["image"]["image_size"]
    for n in (1, 3):
        imgs = images(size, n)
        pixels = model.pixels(imgs).numpy()  # resize + crop only: normalisation is in the graph
        got = run_graph(out / "image_encoder.onnx", {"pixels": pixels})
        assert got.shape == (n, model.embed_dim)
        assert np.abs(got - model.encode_image(imgs)).max() <= TOL
        english = [t for t in TEXTS if not ("猫" in t)] if "text_cjk" in prep else TEXTS
        texts = english[:n]
        assert np.abs(onnx_text(out, texts) - model.encode_text(texts)).max() <= TOL
    return out, prep


def test_vit_with_bpe_text_tower(tmp_path):
    out, prep = check_export(tmp_path, make_model_folder(tmp_path, []))
    assert prep["image"]["normalisation"].startswith("inside the graph")
    assert "text_cjk" not in prep and not (out / "text_encoder_cjk.onnx").exists()
    card = (out / "README.md").read_text()
    assert "ViT" in card and "image_encoder.onnx" in card


def test_convnet_tower(tmp_path):
    check_export(tmp_path, make_model_folder(tmp_path, ["model.vision.kind=convnet", "model.vision.channels=[8,16]",
                                                        "model.vision.image_size=40"]))


def test_efficientnet_tower_bypasses_its_feature_cache(tmp_path):
    folder = make_model_folder(tmp_path, ["model.vision.kind=efficientnet_lite", "model.vision.image_size=64",
                                          "model.vision.feature_cache=100", "data.augment.enabled=false",
                                          "model.vision.head=mlp", "model.vision.head_hidden=32"], pretrained=True)
    check_export(tmp_path, folder)


def test_long_texts_are_truncated_as_visembed_does(tmp_path):
    out, prep = check_export(tmp_path, make_model_folder(tmp_path, ["model.text.context_length=8"]))
    from tokenizers import Tokenizer

    enc = Tokenizer.from_file(str(out / "tokenizer.json")).encode(TEXTS[1])
    assert len(enc.ids) == prep["text"]["max_length"] == 8 and enc.ids[0] == 1 and enc.ids[-1] == 2


def test_hf_text_tower_with_cjk_student_gets_a_second_graph(tmp_path):
    folder = make_model_folder(tmp_path, ["model.text.kind=hf", "model.text.cjk_student.enabled=true",
                                          "model.text.cjk_student.width=32", "model.text.cjk_student.heads=2",
                                          "model.text.cjk_student.depth=1", "model.text.cjk_student.vocab_size=400"])
    out, prep = check_export(tmp_path, folder)
    assert prep["text_cjk"]["graph"] == "text_encoder_cjk.onnx"
    model = visembed.load(folder, device="cpu")
    chinese = ["一只猫", "红色的苹果在桌子上"]
    got = onnx_text(out, chinese, "text_encoder_cjk.onnx", "tokenizer_cjk.json")
    assert np.abs(got - model.encode_text(chinese)).max() <= TOL
    import re

    assert all(re.search(prep["text_cjk"]["regex"], t) for t in chinese)
    assert not re.search(prep["text_cjk"]["regex"], "a cat")


def test_missing_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"visembed\[onnx\]"):
        export_onnx(tmp_path, tmp_path / "out")

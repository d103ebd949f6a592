"""`visembed merge` (WiSE-FT): exact ends, the interpolation between, and clear refusals."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import visembed
from visembed.checkpoint import read_config, save_model_folder
from visembed.cli import app
from visembed.models import load_model_folder


@pytest.fixture(scope="module")
def pair(tiny_model_dir, tmp_path_factory):
    """A (the tiny run) and B: A with every float weight moved, same config and tokenizer."""
    b_dir = tmp_path_factory.mktemp("merge") / "b"
    model, cfg = load_model_folder(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_model_folder(model, cfg, b_dir)
    return tiny_model_dir, b_dir


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_merge_ends_are_exact_and_the_middle_interpolates(pair, tmp_path):
    a, b = pair
    runner = CliRunner()
    for alpha in ("0", "0.5", "1"):
        result = runner.invoke(app, ["merge", str(a), str(b), "--alpha", alpha, "--out", str(tmp_path / alpha)])
        assert result.exit_code == 0, result.output
    wa, wb = _weights(a), _weights(b)
    w0, w_half, w1 = (_weights(tmp_path / alpha) for alpha in ("0", "0.5", "1"))
    assert all(torch.equal(w0[k], wa[k]) for k in wa) and all(torch.equal(w1[k], wb[k]) for k in wb)
    assert all(torch.allclose(w_half[k], (wa[k] + wb[k]) / 2, atol=1e-6) for k in wa)
    assert not torch.equal(w_half["logit_scale"], wa["logit_scale"])
    merged = tmp_path / "0.5"  # a normal model folder
    for name in ("config.json", "preprocessing.json", "tokenizer.json", "README.md"):
        assert (merged / name).is_file()
    assert "WiSE-FT" in (merged / "README.md").read_text()
    assert read_config(merged).model == read_config(a).model
    v = visembed.load(merged, device="cpu").encode_text(["a red circle"])
    assert v.shape == (1, read_config(a).model.embed_dim)


def test_merge_refuses_another_architecture_naming_the_difference(pair, tmp_path):
    from visembed.config import apply_overrides
    from visembed.models import build_model

    a, _ = pair
    cfg = apply_overrides(read_config(a), ["model.vision.width=32", "model.vision.heads=2"])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(a / "tokenizer.json", other / "tokenizer.json")
    save_model_folder(build_model(cfg.model, tokenizer_dir=other), cfg, other)
    result = CliRunner().invoke(app, ["merge", str(a), str(other), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "not the same architecture: model.vision.width is 64 in A but 32 in B" in result.output
    assert not (tmp_path / "c").exists()


def test_merge_refuses_different_tokenizers_and_bad_alpha(pair, tmp_path):
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    a, b = pair
    retokenized = tmp_path / "b2"
    shutil.copytree(b, retokenized)
    train_bpe_tokenizer(["completely different captions", "so other ids"], 300, retokenized)
    result = CliRunner().invoke(app, ["merge", str(a), str(retokenized), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "different tokenizer assets (tokenizer.json)" in result.output
    result = CliRunner().invoke(app, ["merge", str(a), str(b), "--alpha", "1.5", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--alpha must be in [0, 1]" in result.output

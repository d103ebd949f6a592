"""LoRA in the captioner's instruct stage (model.captioner.lora_rank, `--lora`): adapters on the frozen
LM, merged into its weights in the final folder, which loads and captions without peft; resume after
SIGKILL; a clear error where peft is missing."""

import signal
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import visembed
from visembed.checkpoint import latest_checkpoint
from visembed.config import ConfigError
from visembed.data import open_dataset

from conftest import TINY_CAPTIONER
from test_captioner import SHAPES, _tiny_hf_lm, _train

RANK = 2


@pytest.fixture(scope="module")
def lora_captioner_dir(tiny_model_dir, tmp_path_factory):
    from visembed.train.captioner_run import captioner_config, train_captioner

    out = tmp_path_factory.mktemp("lora_captioner")
    cfg = captioner_config(tiny_model_dir, SHAPES, steps=12, lora=RANK, overrides=TINY_CAPTIONER)
    train_captioner(cfg, out, stage="both", progress=False)
    return out


def _low_rank(delta: torch.Tensor, rank: int) -> bool:
    """Whether `delta` is (up to float32 rounding of W + delta) of rank `rank` or less."""
    s = torch.linalg.svdvals(delta.double())
    return bool(s[0] > 0 and s[rank:].max() < 1e-3 * s[0])


def test_the_lm_moves_by_a_low_rank_update_of_its_linear_layers_only(lora_captioner_dir):
    align = load_file(str(lora_captioner_dir / "align" / "model.safetensors"))
    final = load_file(str(lora_captioner_dir / "model.safetensors"))
    moved = {n for n in final if n.startswith("lm.") and not torch.equal(final[n], align[n])}
    # GPT-2's attention and MLP layers (Conv1D) each learnt an update of rank RANK at most
    adapted = {n for n in final if n.startswith("lm.transformer.h.") and n.endswith("weight") and final[n].ndim == 2}
    assert adapted and moved == adapted, f"moved: {sorted(moved)[:5]}, adapted: {sorted(adapted)[:5]}"
    for name in adapted:
        assert _low_rank(final[name] - align[name], RANK), name
    assert not _low_rank(final[next(iter(adapted))], RANK)  # (the test can tell a full-rank matrix)
    # embeddings, norms, biases and the output layer are bit-identical; the projectors learnt fully
    assert any(not torch.equal(final[n], align[n]) for n in final if "projector" in n)
    assert all(torch.equal(final[n], align[n]) for n in final if n.startswith("encoder."))


def test_the_final_folder_has_a_plain_captioners_names_and_captions_without_peft(lora_captioner_dir, monkeypatch):
    final = load_file(str(lora_captioner_dir / "model.safetensors"))
    align = load_file(str(lora_captioner_dir / "align" / "model.safetensors"))  # a plain captioner's names
    assert final.keys() == align.keys()
    assert not [n for n in final if "lora" in n or "base_layer" in n]
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails from here on
    model = visembed.load(lora_captioner_dir)
    captions = model.caption([open_dataset(SHAPES, "test")[i].image for i in range(2)])
    assert all(isinstance(c, str) for c in captions)
    assert "peft" not in type(model.module.lm.transformer.h[0].attn.c_attn).__module__


def test_merged_weights_give_the_adapted_lms_logits(lora_captioner_dir):
    from visembed.models.lora import add_adapters, merge_adapters

    align = visembed.load(lora_captioner_dir / "align")
    lm = align.module.lm
    names = set(lm.state_dict())
    add_adapters(lm, align.config.model.captioner)
    torch.manual_seed(0)
    for name, p in lm.named_parameters():
        if "lora_B" in name:  # (B starts at zero: make the adapters do something)
            torch.nn.init.normal_(p, std=0.1)
    embeds = torch.randn(2, 9, lm.get_input_embeddings().embedding_dim)
    with torch.no_grad():
        adapted = lm(inputs_embeds=embeds).logits
        merge_adapters(lm)
        merged = lm(inputs_embeds=embeds).logits
    assert set(lm.state_dict()) == names
    assert (adapted - merged).abs().max() <= 1e-5
    assert not torch.allclose(adapted, visembed.load(lora_captioner_dir / "align").module.lm(inputs_embeds=embeds).logits)


def test_a_llama_family_lm_gets_adapters_on_its_attention_and_mlp_and_merges_exactly(tmp_path):
    from transformers import AutoModelForCausalLM

    from visembed.config import CaptionerConfig
    from visembed.models.lora import adapted_layers, add_adapters, merge_adapters

    lm = AutoModelForCausalLM.from_pretrained(_tiny_hf_lm(tmp_path / "qwen2", "qwen2")).eval()
    names = set(lm.state_dict())
    add_adapters(lm, CaptionerConfig(lora_rank=RANK))
    adapted = {name.rsplit(".", 1)[-1] for name, _ in adapted_layers(lm)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {n for n, p in lm.named_parameters() if p.requires_grad} == {n for n in lm.state_dict() if "lora_" in n}
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, lm.config.vocab_size, (2, 7))
    with torch.no_grad():
        adapted_logits = lm(ids).logits
        merge_adapters(lm)
        assert (adapted_logits - lm(ids).logits).abs().max() <= 1e-5
    assert set(lm.state_dict()) == names


def test_a_run_folder_loads_mid_run_from_a_checkpoint_that_holds_adapters(lora_captioner_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_captioner_dir, run, ignore=shutil.ignore_patterns("align"))
    (run / "model.safetensors").unlink()  # as before the last step's folder was written
    assert any("lora_A" in n for n in load_file(str(latest_checkpoint(run) / "model.safetensors")))
    images = [open_dataset(SHAPES, "test")[i].image for i in range(2)]
    assert visembed.load(run).caption(images) == visembed.load(lora_captioner_dir).caption(images)


def test_asking_for_lora_without_peft_says_how_to_install_it(tiny_model_dir, tmp_path, monkeypatch):
    from visembed.models.lora import PeftMissing
    from visembed.train.captioner_run import captioner_config, train_captioner

    cfg = captioner_config(tiny_model_dir, SHAPES, steps=4, lora=RANK, overrides=TINY_CAPTIONER)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(PeftMissing, match="pip install peft"):
        train_captioner(cfg, tmp_path / "cap", stage="both", progress=False)
    assert not (tmp_path / "cap").exists()  # before the align stage spent any time


def test_a_negative_rank_is_a_config_error(tiny_model_dir):
    from visembed.train.captioner_run import captioner_config

    with pytest.raises(ConfigError, match="lora_rank"):
        captioner_config(tiny_model_dir, SHAPES, lora=-1)


@pytest.mark.slow
def test_sigkill_in_the_lora_stage_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    whole = _train(tiny_model_dir, tmp_path / "whole", "--lora", str(RANK))
    killed = _train(tiny_model_dir, tmp_path / "killed", "--lora", str(RANK))
    deadline = time.time() + 240
    while latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the instruct stage's first checkpoint: it holds the adapters
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"
    assert any("lora_A" in n for n in load_file(str(latest_checkpoint(tmp_path / "killed") / "model.safetensors")))
    out, _ = _train(tiny_model_dir, tmp_path / "killed", "--lora", str(RANK), "--resume").communicate(timeout=300)
    assert "resuming from" in out, out
    assert whole.communicate(timeout=300)[0] is not None and whole.returncode == 0
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert a.keys() == b.keys() and not different, f"resumed weights differ in {different[:5]}"

"""`train.compile`: the towers compiled in place train like the eager ones (close, not bit-identical),
keep the eager parameter names, and are traced once per text-length bucket, not once per step."""

import contextlib
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visembed.config import ConfigError, apply_overrides, load_preset
from visembed.data import Sample
from visembed.models.bpe_tokenizer import train_bpe_tokenizer
from visembed.train.compile import bucket_length, compile_towers, wants_compile
from visembed.train.loop import train
from visembed.train.tasks import build_task

WORDS = "red green blue small large circle square triangle left right above below of a the".split()


def test_auto_compiles_nowhere_measured_slower_and_bad_values_are_refused():
    assert not wants_compile("auto", torch.device("cpu"))  # measured slower on 2 CPU cores (docs/speed.md)
    assert not wants_compile("off", torch.device("cpu")) and wants_compile("on", torch.device("cpu"))
    assert load_preset("tiny").train.compile == "auto"
    with pytest.raises(ConfigError, match="train.compile"):
        apply_overrides(load_preset("tiny"), ["train.compile=fast"])
    assert [bucket_length(n, 24) for n in (1, 8, 9, 16, 17, 24)] == [8, 8, 16, 16, 24, 24]


def _captions(rng, lengths):
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


@pytest.mark.slow  # compiles (~1 min on 2 cores)
def test_compiled_towers_match_eager_and_trace_once_per_bucket(tmp_path):
    from torch._dynamo.utils import counters

    cfg = load_preset("tiny")
    rng = random.Random(0)
    train_bpe_tokenizer(_captions(rng, [6] * 300), cfg.model.text.vocab_size, tmp_path)
    task = build_task(cfg, 0, 1)
    torch.manual_seed(0)
    model = task.build_model(cfg, Path(tmp_path), pretrained=True).train()
    eager = task.build_model(cfg, Path(tmp_path), pretrained=True).train()
    eager.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    assert compile_towers(model) == ["vision", "text"]
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints keep the eager names

    torch._dynamo.reset()
    counters.clear()
    pixels = torch.rand(8, 3, 32, 32)
    seen, graphs = set(), counters["stats"]["unique_graphs"]
    for words in (2, 3, 5, 4, 2, 6, 3, 12, 5, 10, 4, 13):  # 12 batches, longest captions of many lengths
        tokens = model.text_tokens(_captions(rng, [words] * 8))
        bucket = bucket_length(tokens["input_ids"].shape[1], cfg.model.text.context_length)
        out = model(pixels, **tokens)
        reference = eager(pixels, **tokens)
        for key in ("image_features", "text_features"):
            assert torch.allclose(out[key], reference[key], atol=1e-5), key
        out["image_features"].sum().backward()  # the backward graph too
        now = counters["stats"]["unique_graphs"]
        assert (now > graphs) == (bucket not in seen), (words, bucket, seen)  # traced once per bucket, never again
        seen.add(bucket)
        graphs = now
    assert len(seen) >= 2


@pytest.mark.slow  # compiles (~1-3 min on 2 cores)
def test_a_compiled_run_trains_close_to_the_eager_run(tmp_path):
    overrides = ["train.steps=6", "train.checkpoint_every=6", "train.log_every=1", "data.train=builtin:shapes?n=128"]
    weights, losses = {}, {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        train(apply_overrides(load_preset("tiny"), overrides + [f"train.compile={mode}"]), out, progress=False)
        weights[mode] = load_file(str(out / "model.safetensors"))
        losses[mode] = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert weights["on"].keys() == weights["off"].keys()
    import json

    eager = [json.loads(x)["loss"] for x in losses["off"] if not json.loads(x).get("final")]
    compiled = [json.loads(x)["loss"] for x in losses["on"] if not json.loads(x).get("final")]
    assert len(eager) == len(compiled) == 6
    assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-3, (eager, compiled)
    changed = 0
    for name, value in weights["off"].items():
        other = weights["on"][name]
        assert float((other - value).abs().max()) <= 2e-3, name  # lr 1e-3, 6 AdamW steps: at most ~lr apart
        changed += not torch.equal(other, value)
    assert changed  # really another kernel path (not bit-identical: this test would not see a no-op)

"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and small enough for 2 CPU cores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A small real model: the `tiny` preset trained briefly on builtin:shapes (a run folder)."""
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = apply_overrides(load_preset("tiny"), ["train.steps=30", "train.checkpoint_every=30"])
    train(cfg, out, progress=False)
    return out


TINY_CAPTIONER = ["model.captioner.vocab_size=400", "model.captioner.width=32", "model.captioner.depth=1",
                  "model.captioner.heads=2", "model.captioner.projector_hidden=64", "model.captioner.max_tokens=48",
                  "train.batch_size=16", "train.checkpoint_every=20", "train.warmup_steps=2", "train.log_every=5"]


@pytest.fixture(scope="session")
def tiny_captioner_dir(tiny_model_dir, tmp_path_factory):
    """A small real captioner: a 1-layer GPT-2 on `tiny_model_dir`'s image features, both stages,
    trained briefly on builtin:shapes (captions in English)."""
    from visembed.train.captioner_run import captioner_config, train_captioner

    out = tmp_path_factory.mktemp("tiny_captioner")
    cfg = captioner_config(tiny_model_dir, "builtin:shapes?n=256", steps=24, overrides=TINY_CAPTIONER)
    train_captioner(cfg, out, stage="both", progress=False)
    return out

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

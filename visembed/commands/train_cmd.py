"""`visembed train`: pretrain or fine-tune a dual encoder from a preset and overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, output_folder


def register(app: typer.Typer) -> None:
    app.command("train")(train)


SIZE_CAPS = {"width": 1 << 16, "depth": 1 << 10, "heads": 1 << 10, "vocab_size": 1 << 20, "context_length": 1 << 16,
             "image_size": 1 << 14}  # far beyond any model trained here; a typo of 10^6 or 10^9 is caught before work


def check_sizes(cfg) -> None:
    """The towers' sizes within SIZE_CAPS (a BPE trainer asked for 10^9 tokens aborts the process in Rust)."""
    for tower in ("vision", "text"):
        section = getattr(cfg.model, tower)
        for name, cap in SIZE_CAPS.items():
            value = getattr(section, name, None)
            if isinstance(value, int) and value > cap:
                raise ValueError(f"model.{tower}.{name}={value} is beyond what visembed trains (at most {cap:,})")


def check_init(init: Path, cfg) -> None:
    """`--init` must hold a model of the run's architecture (its weights are loaded over the new model)."""
    from visembed.checkpoint import read_config

    kind = read_config(init).model.architecture
    if kind != cfg.model.architecture:
        hint = " (to caption with its vision side, use `visembed train-captioner --vision`)" if kind == "captioner" else ""
        raise ValueError(f"--init {init} holds a {kind}, but this run trains a {cfg.model.architecture}{hint}")


def train(
    data: Optional[str] = typer.Option(None, "--data", help="Data spec: builtin:emoji, builtin:shapes, a manifest, a folder or WebDataset shards."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, metrics.jsonl, final model)."),
    preset: str = typer.Option("tiny", "--preset", help="Preset name (tiny, clip-tiny, demo, vit-b16, vit-b16-siglip) or a JSON file."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this model folder's weights (fine-tuning); "
                                        "hf:PATH (a transformers CLIPModel folder) or openclip:PATH also work."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over the data (instead of --steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value (dotted keys), repeatable."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Pretrain or fine-tune a dual encoder (runs under torchrun for several processes)."""
    from visembed.config import apply_overrides, load_preset

    with friendly_errors():
        output_folder(out)
        cfg = load_preset(preset)
        flags = {"data.train": data, "train.steps": steps, "train.epochs": epochs, "train.batch_size": batch_size,
                 "train.checkpoint_every": checkpoint_every, "train.seed": seed}
        cli = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
        cfg = apply_overrides(cfg, cli + list(overrides))
        check_sizes(cfg)
        from visembed.interop.cache import resolve_model
        from visembed.train.loop import train as run_training

        init = resolve_model(init) if init is not None else None
        if init is not None:
            check_init(init, cfg)
        metrics = run_training(cfg, out, init=init, resume=resume, progress=not no_progress)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


"""`visembed train`, `visembed eval`, `visembed embed`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(eval_cmd)
    app.command("embed")(embed)


def train(
    data: Optional[str] = typer.Option(None, "--data", help="Data spec: builtin:emoji, builtin:shapes, a manifest, a folder or WebDataset shards."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, metrics.jsonl, final model)."),
    preset: str = typer.Option("tiny", "--preset", help="Preset name (tiny, clip-tiny, demo, vit-b16, vit-b16-siglip) or a JSON file."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this model folder's weights (fine-tuning)."),
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
        cfg = load_preset(preset)
        flags = {"data.train": data, "train.steps": steps, "train.epochs": epochs, "train.batch_size": batch_size,
                 "train.checkpoint_every": checkpoint_every, "train.seed": seed}
        cli = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in flags.items() if v is not None]
        cfg = apply_overrides(cfg, cli + list(overrides))
        from visembed.train.loop import train as run_training

        metrics = run_training(cfg, out, init=init, resume=resume, progress=not no_progress)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


def eval_cmd(
    folder: Path = typer.Argument(..., help="Run or model folder."),
    data: str = typer.Option(..., "--data", help="Data spec to evaluate on."),
    split: str = typer.Option("test", "--split", help="Split name (train, val, test)."),
    language: str = typer.Option("en", "--language", help="Caption language of the plain metric names."),
    templates: list[str] = typer.Option([], "--template", help="Zero-shot prompt template with {} (repeatable)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate at most N items."),
) -> None:
    """Retrieval Recall@1/5/10, mean rank and zero-shot accuracy; JSON to stdout and FOLDER/eval_<split>.json."""
    from visembed.eval.run import evaluate_folder
    from visembed.eval.zeroshot import DEFAULT_TEMPLATES

    with friendly_errors():
        metrics = evaluate_folder(folder, data, split, language=language, templates=tuple(templates) or DEFAULT_TEMPLATES,
                                  limit=limit)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


def embed(
    folder: Path = typer.Argument(..., help="Run or model folder."),
    data: str = typer.Option(..., "--data", help="Data spec of the images to embed."),
    out: Path = typer.Option(..., "--out", help="Output prefix: writes OUT.npy (float32 N x D) and OUT.ids.txt."),
    split: str = typer.Option("test", "--split", help="Split name."),
    text: bool = typer.Option(False, "--text", help="Embed the captions instead of the images."),
) -> None:
    """Write image (or caption) embeddings as .npy with their ids, one per line."""
    import numpy as np
    from tqdm import tqdm

    import visembed
    from visembed.data import BadImage, SkipCounter, load_image, open_dataset

    with friendly_errors():
        model = visembed.load(folder)
        ds = open_dataset(data, split)
        ids, vectors, batch, skipped = [], [], [], SkipCounter()

        def flush():
            if batch:
                items = [item for _, item in batch]
                vectors.append(model.encode_text(items) if text else model.encode_image(items))
                ids.extend(i for i, _ in batch)
                batch.clear()

        for sample in tqdm(ds, desc="embed"):
            if text:
                batch.append((sample.id, sample.caption))
            else:
                try:
                    batch.append((sample.id, load_image(sample.image)))
                except BadImage as err:
                    skipped.add(err.reason)
            if len(batch) >= 256:
                flush()
        flush()
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{out}.npy", np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), np.float32))
        Path(f"{out}.ids.txt").write_text("".join(f"{i}\n" for i in ids))
    typer.echo(f"wrote {len(ids)} embeddings to {out}.npy and ids to {out}.ids.txt; skipped {skipped.total}")

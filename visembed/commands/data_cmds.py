"""`visembed augment-preview`: see what the model will be trained on; `visembed shards`: data made ready
for it at scale."""

from __future__ import annotations

from pathlib import Path

import typer

from visembed.commands.errors import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("augment-preview")(augment_preview)
    app.command("shards")(shards)


def augment_preview(
    data: str = typer.Option("builtin:emoji", "--data", help="Data spec."),
    out: Path = typer.Option(Path("augment-preview.png"), "--out", help="PNG to write."),
    preset: str = typer.Option("demo", "--preset", help="Preset whose augmentation and image size to use."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. data.augment.flip=true."),
    rows: int = typer.Option(8, "--rows", help="Number of originals."),
    pairs: bool = typer.Option(False, "--pairs", help="Pairs of views as simclr/slip compare them (the default when "
                               "train.task is simclr or slip): data.augment, then train.<task>.views."),
) -> None:
    """Write a grid: each original beside augmented samples drawn by the train-time pipeline (or pairs of views)."""
    from visembed.config import apply_overrides, load_preset
    from visembed.data import open_dataset
    from visembed.data.augment import augment_preview as preview

    with friendly_errors():
        cfg = apply_overrides(load_preset(preset), list(overrides))
        ds = open_dataset(data, "train")
        if pairs or cfg.train.task in ("simclr", "slip"):
            from visembed.data.augment import view_pairs_preview

            views = cfg.train.slip.views if cfg.train.task == "slip" else cfg.train.simclr.views
            view_pairs_preview(ds, cfg.data.augment, views, out, n=rows, size=cfg.model.vision.image_size)
        else:
            preview(ds, cfg.data.augment, out, n=rows, size=cfg.model.vision.image_size)
    typer.echo(f"wrote {out}")


def shards(
    data: str = typer.Argument(..., help="Data spec: a folder, a manifest, builtin:NAME, LLaVA conversations, shards."),
    out: Path = typer.Option(..., "--out", help="Folder to write the shards into (a rerun finishes an interrupted one)."),
    size: int = typer.Option(256, "--size", help="Shorter side of each image, in pixels (smaller images are kept)."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Input rows per shard (img2dataset's default)."),
    quality: int = typer.Option(95, "--quality", help="JPEG quality, 1-100."),
    split: str = typer.Option("train", "--split", help="Which split of the data to write."),
    language: str = typer.Option("en", "--language", help="Caption language, for data with several."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write pre-resized WebDataset shards in img2dataset's layout (NNNNN.tar with key.jpg/.txt/.json,
    NNNNN.parquet, NNNNN_stats.json): the input to train on at scale (`--data OUT`)."""
    from visembed.data.shard_writer import write_shards

    with friendly_errors():
        report = write_shards(data, out, size=size, shard_size=shard_size, quality=quality, split=split,
                              language=language, progress=progress)
    kept = f"{report.shards - report.written} already finished, " if report.written < report.shards else ""
    typer.echo(f"wrote {report.samples} images in {report.written} shard(s) to {out} ({kept}{report.skipped.summary()});"
               f" train with --data {out}")

"""`visembed augment-preview`: see what the model will be trained on."""

from __future__ import annotations

from pathlib import Path

import typer

from visembed.commands.errors import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("augment-preview")(augment_preview)


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

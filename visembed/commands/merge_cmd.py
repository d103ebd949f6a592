"""`visembed merge`: WiSE-FT weight interpolation of two model folders of one architecture."""

from __future__ import annotations

from pathlib import Path

import typer

from visembed.commands.errors import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)


def merge(
    a: Path = typer.Argument(..., help="Model A (alpha 0), e.g. the pretrained model; a folder, hf:PATH or openclip:PATH."),
    b: Path = typer.Argument(..., help="Model B (alpha 1), e.g. A fine-tuned (`train --init A`)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of B in [0, 1]: (1 - alpha) * A + alpha * B."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (new or empty)."),
) -> None:
    """Interpolate the weights of two models of the same architecture (WiSE-FT) into a new model folder."""
    from visembed.interop.cache import resolve_model
    from visembed.models.merge import merge_models

    with friendly_errors():
        merge_models(resolve_model(a), resolve_model(b), alpha, out)
    typer.echo(f"wrote (1 - {alpha:g}) x {a} + {alpha:g} x {b} to {out}")

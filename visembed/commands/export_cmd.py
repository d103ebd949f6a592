"""`visembed export`: a model folder -> a transformers folder (`--format hf`) or ONNX graphs (`--format onnx`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from visembed.commands.errors import friendly_errors


class ExportFormat(str, Enum):
    hf = "hf"
    onnx = "onnx"


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    folder: Path = typer.Argument(..., help="Run or model folder to export."),
    fmt: ExportFormat = typer.Option(..., "--format", help="hf: a transformers CLIPModel (or VisionTextDualEncoderModel) "
                                     "folder; for the demo kind (EfficientNet-Lite + a Hugging Face text encoder) a "
                                     "sentence-transformers folder; for a captioner a LlavaForConditionalGeneration folder; onnx: image "
                                     "and text encoder graphs for onnxruntime."),
    out: Path = typer.Option(..., "--out", help="Folder to write (new or empty)."),
) -> None:
    """Export a model for transformers or onnxruntime, with a model card (README.md)."""
    with friendly_errors():
        if fmt is ExportFormat.hf:
            from visembed.interop.hf_export import export_hf

            export_hf(folder, out)
        else:
            from visembed.interop.onnx import export_onnx

            export_onnx(folder, out)
    typer.echo(f"exported {folder} ({fmt.value}) to {out}")

"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import typer

BACKEND_OPTION = typer.Option(
    "torch", "--backend",
    help="How the model's encoders run: torch, onnx (the exported graphs in onnxruntime on the CPU, exported "
         "once per weights and cached; needs visembed[onnx]) or auto (onnx where it can, else torch).")

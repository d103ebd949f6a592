"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import typer

BACKEND_OPTION = typer.Option(
    "torch", "--backend",
    help="How the model's encoders run: torch, onnx (the exported graphs in onnxruntime on the CPU, exported "
         "once per weights and cached; needs visembed[onnx]) or auto (onnx where it can, else torch).")

QUANTIZE_OPTION = typer.Option(
    None, "--quantize", metavar="int8",
    help="int8: onnxruntime's dynamic quantisation of the ONNX graphs' matrix products (with --backend onnx or "
         "auto; cached beside the float graphs). Faster on transformer towers, and it changes the vectors: "
         "docs/speed.md gives its measured recall. Default: float graphs.")

"""`visembed demo`: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder for the demo model and its index."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after building the index."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="Port to serve on."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the demo preset's)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, repeatable."),
) -> None:
    """Train on built-in emoji (English + Chinese names) on the CPU, evaluate on held-out concepts, show searches, index and serve."""
    from visembed.demo import run_demo

    with friendly_errors():
        run_demo(out, serve=not no_serve, host=host, port=port, steps=steps, overrides=list(overrides))

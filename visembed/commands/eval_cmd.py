"""`visembed eval`: retrieval and zero-shot metrics of a model folder on a dataset split (probe and
kNN accuracy for an image-only model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, text_argument
from visembed.commands.options import BACKEND_OPTION, QUANTIZE_OPTION


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def check_template(template: str) -> None:
    """A zero-shot template: UTF-8 text with one `{}` where the class name goes (nothing else in braces)."""
    text_argument(template, "--template")
    try:
        filled = template.format("\0")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--template {template!r} must hold one {{}} for the class name and no other braces "
                         f"({type(err).__name__}: {err}); write {{{{ and }}}} for literal braces") from None
    if filled.count("\0") != 1:
        raise ValueError(f"--template {template!r} must hold one {{}} for the class name")


def eval_cmd(
    folder: Path = typer.Argument(..., help="Run or model folder, hf:PATH or openclip:PATH."),
    data: str = typer.Option(..., "--data", help="Data spec to evaluate on."),
    split: str = typer.Option("test", "--split", help="Split name (train, val, test)."),
    language: str = typer.Option("en", "--language", help="Caption language of the plain metric names."),
    templates: list[str] = typer.Option([], "--template", help="Zero-shot prompt template with {} (repeatable)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate at most N items."),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Retrieval Recall@1/5/10, mean rank and zero-shot accuracy; JSON to stdout and FOLDER/eval_<split>.json.
    An image-only model (train.task=simclr) reports linear-probe and kNN top-1 instead, fitted on the
    labelled train split of --data."""
    import visembed
    from visembed.eval.run import evaluate_folder
    from visembed.eval.zeroshot import DEFAULT_TEMPLATES
    from visembed.interop.cache import resolve_model

    with friendly_errors():
        for template in templates:
            check_template(template)
        model_dir = resolve_model(folder)
        model = (None if model_backend == "torch" and model_quantize is None
                 else visembed.load(model_dir, backend=model_backend, quantize=model_quantize))
        metrics = evaluate_folder(model_dir, data, split, model=model, language=language,
                                  templates=tuple(templates) or DEFAULT_TEMPLATES, limit=limit)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))

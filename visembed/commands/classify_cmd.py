"""`visembed classify fit|predict|eval|curve`: classifiers from class names and a few labelled images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors

METHOD_HELP = ("zeroshot (class names only), zs-pseudo (class names + the data's images, no label read: a probe on "
               "the images zero-shot is surest of, added to zero-shot), probe (logistic regression; default), "
               "semi (the shots' probe + a quarter of zs-pseudo on the split's images, whose other labels are not "
               "read: best at 1-4 shots on emoji), zs-probe (a probe pulled towards "
               "zero-shot), tip (Tip-Adapter), tip-f (Tip-Adapter-F), finetune (LP-FT + WiSE-FT, the "
               "training loop)")
FEATURES_HELP = ("What the head reads: embedding, pooled (the tower's features before the head), layout (8x8 "
                 "colour thumbnail), middle and late (the tower's middle stage and the stage before its last, "
                 "averaged), or kinds joined by '+' (both = embedding+pooled); default: per method, chosen by "
                 "measurement (docs/classify.md).")


def register(app: typer.Typer) -> None:
    classify_app = typer.Typer(help="Classifiers from class names and a few labelled images.", no_args_is_help=True)
    classify_app.command("fit")(fit)
    classify_app.command("predict")(predict)
    classify_app.command("eval")(evaluate)
    classify_app.command("curve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(curve)
    app.add_typer(classify_app, name="classify")


def _data_options(label_column: Optional[str]) -> dict:
    return {"label_column": label_column} if label_column else {}


def _templates(path: Optional[Path]):
    from visembed.classify.templates import read_templates

    return read_templates(path) if path else None


def fit(
    model: str = typer.Argument(..., help="The dual encoder: a run or model folder, hf:PATH or openclip:PATH."),
    data: Optional[str] = typer.Option(None, "--data", help="Labelled data: class folders, a manifest with --label-column, builtin:emoji?label=subgroup, builtin:shapes (not needed by zeroshot with --classes; given, its test split measures the classifier)."),
    out: Path = typer.Option(..., "--out", help="Classifier folder to write (new or empty)."),
    method: str = typer.Option("probe", "--method", help=METHOD_HELP),
    shots: int = typer.Option(16, "--shots", min=0, help="Labelled images per class (fewer where a class has fewer; none with zeroshot and zs-pseudo)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shot draw and the fit."),
    split: str = typer.Option("train", "--split", help="Split the shots are drawn from."),
    features: Optional[str] = typer.Option(None, "--features", help=FEATURES_HELP),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Prompt templates file (one a line, {} for the class name); default: built-in English and Chinese lists."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Manifests: the column holding the label."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="zeroshot and zs-pseudo: a file of class names, one a line; the data's images then need no label (e.g. a plain folder of photos)."),
    wise_alpha: Optional[float] = typer.Option(None, "--wise-alpha", help="finetune: weight of the fine-tuned model in the WiSE-FT interpolation with the zero-shot model (default 1: the fine-tuned model alone measured best on emoji subgroups, docs/classify.md)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="finetune: optimiser steps."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Fit a classifier on a few labelled images per class and write a classifier folder."""
    with friendly_errors():
        from visembed.classify.run import check_named_classes
        from visembed.classify.templates import read_class_names
        from visembed.interop.cache import resolve_model

        names = read_class_names(classes) if classes else None
        if names is not None:
            check_named_classes(method)
        if data is None and not (names is not None and method == "zeroshot"):
            raise ValueError("--data is needed (only zeroshot with --classes reads no image)")
        model_dir = resolve_model(model)
        if method == "finetune":
            from visembed.train.tasks.classification import finetune_classifier

            summary = finetune_classifier(model_dir, data, out, shots=shots, seed=seed, split=split,
                                          templates=_templates(templates), wise_alpha=wise_alpha, steps=steps,
                                          progress=not no_progress, **_data_options(label_column))
        else:
            from visembed.classify.run import fit_classifier
            from visembed.models.inference import Model

            loaded = Model.from_folder(model_dir)
            summary = fit_classifier(loaded, model_dir, data, out, method=method, shots=shots, seed=seed,
                                     features=features, templates=_templates(templates), split=split,
                                     classes=names, progress=not no_progress, **_data_options(label_column))
    if summary:  # under torchrun, rank 0 alone reports
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


def _load_classifier(folder: Path):
    from visembed.classify.folder import Classifier

    return Classifier.from_folder(folder)


def predict(
    classifier: Path = typer.Argument(..., help="A classifier folder (`visembed classify fit`)."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    k: int = typer.Option(5, "-k", "--top", min=1, help="Labels per image."),
    as_json: bool = typer.Option(False, "--json", help="JSON: [{image, labels: [{label, probability}]}]."),
) -> None:
    """Top-k labels with probabilities for each image (unreadable images are skipped and counted)."""
    from visembed.data import BadImage, load_image

    with friendly_errors():
        clf = _load_classifier(classifier)
        kept, pictures, skipped = [], [], {}
        for path in images:
            try:
                pictures.append(load_image(str(path)))
                kept.append(path)
            except BadImage as err:
                skipped[err.reason] = skipped.get(err.reason, 0) + 1
                typer.secho(f"skipped {path}: {err}", err=True, fg=typer.colors.YELLOW)
        if not pictures:
            raise ValueError(f"none of the {len(images)} image(s) could be read")
        found = clf.predict(pictures, k=k)
    if as_json:
        typer.echo(json.dumps([{"image": str(p), "labels": labels} for p, labels in zip(kept, found)],
                              indent=2, ensure_ascii=False))
    else:
        for path, labels in zip(kept, found):
            shown = ", ".join(f"{item['label']} {item['probability']:.3f}" for item in labels)
            typer.echo(f"{path}: {shown}")
    if skipped:
        typer.secho(f"skipped {sum(skipped.values())} image(s): {skipped}", err=True)


def evaluate(
    classifier: Path = typer.Argument(..., help="A classifier folder (`visembed classify fit`)."),
    data: str = typer.Option(..., "--data", help="Labelled data spec (as for fit)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on (several joined by '+', e.g. val+test)."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Also draw the confusion matrix to this .png."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Manifests: the column holding the label."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """JSON: top1, top5, mean_per_class_recall, per_class_recall (and skipped images) on a labelled split."""
    from visembed.classify.run import evaluate_classifier

    with friendly_errors():
        metrics = evaluate_classifier(_load_classifier(classifier), data, split, confusion=confusion,
                                      progress=not no_progress, **_data_options(label_column))
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


CURVE_DEFAULTS = {"--shots": ["0", "1", "2", "4", "8", "16"], "--methods": ["zeroshot", "zs-pseudo", "probe", "semi", "zs-probe", "tip", "tip-f"]}


def _curve_lists(args: list[str]) -> dict[str, list[str]]:
    """`--shots 0 1 2 --methods probe tip` (or `--shots=4`) -> {"--shots": [...], "--methods": [...]}."""
    lists: dict[str, list[str]] = {}
    current = None
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in CURVE_DEFAULTS:
            current = name
            lists.setdefault(name, [])
            if eq:
                lists[name] += [v for v in value.split(",") if v]
        elif arg.startswith("-") and not arg.lstrip("-").isdigit():
            raise ValueError(f"unknown option {arg!r} (see --help)")
        elif current is None:
            raise ValueError(f"unexpected argument {arg!r} (see --help)")
        else:
            lists[current].append(arg)
    return {name: lists.get(name) or default for name, default in CURVE_DEFAULTS.items()}


def curve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="The dual encoder: a run or model folder, hf:PATH or openclip:PATH."),
    data: str = typer.Option(..., "--data", help="Labelled data spec (as for fit)."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per shot count (mean ± std)."),
    out: Path = typer.Option(..., "--out", help="Picture to write (.png/.svg/.pdf); the numbers go to stdout and beside it as .json."),
    train_split: str = typer.Option("train", "--train-split", help="Split the shots are drawn from."),
    test_split: str = typer.Option("test", "--test-split", help="Split tested on ('+' joins several, e.g. val+test)."),
    features: Optional[str] = typer.Option(None, "--features", help=FEATURES_HELP + " Applies to every method with a linear part."),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Prompt templates file."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Manifests: the column holding the label."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Few-shot curves: top-1 per method and shot count, mean ± std over seeds (matplotlib + JSON).

    --shots K... shot counts (default 0 1 2 4 8 16); --methods M... among zeroshot, zs-pseudo (0 shots:
    the train split's images without their labels), probe, semi (the shots + the train split's other images,
    labels unread), zs-probe, tip, tip-f, knn (default: all but knn)."""
    from visembed.atomic import atomic_write_json
    from visembed.classify.curve import few_shot_curve, plot_curve
    from visembed.interop.cache import resolve_model
    from visembed.models.inference import Model

    with friendly_errors():
        lists = _curve_lists(ctx.args)
        try:
            shots = [int(k) for k in lists["--shots"]]
        except ValueError:
            raise ValueError(f"--shots takes whole numbers, got {' '.join(lists['--shots'])}") from None
        methods = lists["--methods"]
        if any(k < 0 for k in shots):
            raise ValueError("--shots must be 0 or more")
        model_dir = resolve_model(model)
        chosen = {m: features for m in ("zs-pseudo", "probe", "semi", "zs-probe", "knn")} if features else None
        result = few_shot_curve(Model.from_folder(model_dir), model_dir, data, shots=tuple(sorted(set(shots))),
                                seeds=seeds, methods=tuple(methods), features=chosen, templates=_templates(templates),
                                train_split=train_split, test_split=test_split, progress=not no_progress,
                                **_data_options(label_column))
        plot_curve(result, out)
        atomic_write_json(out.with_suffix(".json"), result)
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))

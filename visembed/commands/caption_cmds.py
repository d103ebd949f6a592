"""`visembed train-captioner`, `visembed caption`, `visembed chat`: a causal LM that describes images
and answers questions about them, on top of a trained dual encoder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, text_argument
from visembed.commands.options import BACKEND_OPTION, QUANTIZE_OPTION


def register(app: typer.Typer) -> None:
    app.command("train-captioner")(train_captioner_cmd)
    app.command("caption")(caption_cmd)
    app.command("chat")(chat_cmd)


def train_captioner_cmd(
    vision: Path = typer.Option(..., "--vision", help="The dual encoder's run or model folder (its image features become the LM's prefix)."),
    data: str = typer.Option(..., "--data", help="Data spec: builtin:emoji, a LLaVA JSON file, a manifest, a folder or shards."),
    out: Path = typer.Option(..., "--out", help="Captioner folder (checkpoints, metrics.jsonl, final model)."),
    lm: Optional[str] = typer.Option(None, "--lm", help="Causal LM: a local transformers folder, 'gpt2' (small, from scratch; default) or 'minilm'."),
    stage: str = typer.Option("both", "--stage", help="align (projector), instruct (projector + LM) or both."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps, both stages together."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size."),
    lora: Optional[int] = typer.Option(None, "--lora", min=0, metavar="RANK", help="Instruct stage: train LoRA adapters of this rank on the frozen LM instead of the whole LM (needs peft; merged into the LM at the end; 0: the whole LM). Same as --set model.captioner.lora_rank=RANK."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value (dotted keys), repeatable."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Train a captioner: the dual encoder's image features as prefix tokens of a causal LM (runs under torchrun)."""
    from visembed.train.captioner_run import captioner_config, train_captioner

    with friendly_errors():
        cfg = captioner_config(vision, data, lm=lm, steps=steps, batch_size=batch_size, lora=lora,
                               overrides=list(overrides))
        metrics = train_captioner(cfg, out, stage=stage, resume=resume, progress=not no_progress)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


def _read(path: Path):
    from visembed.data import BadImage, load_image

    try:
        return load_image(str(path))
    except BadImage as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


VOCABULARY_HELP = ("Names the hints may come from besides the training captions (repeatable): emoji (CLDR emoji "
                   "names), cedict (CC-CEDICT's ~64,000 English senses and ~94,000 Chinese words), a "
                   "UTF-8 file with one name a line, or none. Default: the captioner's model.captioner.vocabulary (the demo's: "
                   "emoji; otherwise none). Their vectors are computed once per model and cached.")


def _load_captioner(folder: Path, vocabulary: list[str] | None = None, backend: str = "torch",
                    quantize: str | None = None):
    import visembed
    from visembed.interop.onnx_runtime import OnnxModel
    from visembed.models.inference import CaptionerModel
    from visembed.models.vocabulary import check_sources

    check_sources(vocabulary or [])  # a wrong name or file fails before the model loads
    model = visembed.load(folder, backend=backend, quantize=quantize)
    if not isinstance(model, CaptionerModel) and not (isinstance(model, OnnxModel)
                                                      and isinstance(model.torch_model, CaptionerModel)):
        raise ValueError(f"{folder} holds a dual encoder, not a captioner (train one with `visembed train-captioner`)")
    if vocabulary:
        model.use_vocabulary(vocabulary)
    return model


def _check_language(language: str | None) -> None:
    if language not in (None, "en", "zh"):
        raise ValueError(f"--language must be en or zh, not {language!r}")


def caption_cmd(
    folder: Path = typer.Argument(..., help="Captioner folder."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"image", "caption"}] instead of one line per image.'),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, max=512, help="Longest caption, in tokens."),
    language: str = typer.Option("en", "--language", help="en or zh."),
    detail: bool = typer.Option(False, "--detail", help="A longer description instead of one-sentence alt text."),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, max=64,
                                             help="Captions proposed per image (beam search); the one the dual "
                                                  "encoder puts closest to the image is printed. 1: greedy, fastest. "
                                                  "Default: the model's model.captioner.candidates (8)."),
    vocabulary: list[str] = typer.Option([], "--vocabulary", metavar="SOURCE", help=VOCABULARY_HELP),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Alt text for images: one short sentence each, in one language (hedged when the model is unsure)."""
    with friendly_errors():
        _check_language(language)
        pictures = [_read(path) for path in images]  # an unreadable file stops here, named
        model = _load_captioner(folder, list(vocabulary), model_backend, model_quantize)
        captions = model.caption(pictures, language=language, detail=detail, max_new_tokens=max_new_tokens,
                                 candidates=candidates)
    if as_json:
        typer.echo(json.dumps([{"image": str(p), "caption": c} for p, c in zip(images, captions)], ensure_ascii=False,
                              indent=2))
    else:
        for path, text in zip(images, captions):
            typer.echo(f"{path}\t{text}" if len(images) > 1 else text)


def chat_cmd(
    folder: Path = typer.Argument(..., help="Captioner folder."),
    image: Path = typer.Option(..., "--image", help="The image to talk about."),
    message: Optional[str] = typer.Option(None, "--message", help="Ask this, print the reply and exit (else: an interactive session)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, max=512, help="Longest reply, in tokens."),
    language: Optional[str] = typer.Option(None, "--language", help="en or zh: the replies' language (default: "
                                                                    "that of your first message)."),
    vocabulary: list[str] = typer.Option([], "--vocabulary", metavar="SOURCE", help=VOCABULARY_HELP),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Answer questions about an image: one reply with --message, else a dialogue (empty line or Ctrl-D ends it)."""
    with friendly_errors():
        _check_language(language)
        picture = _read(image)
        text_argument(message, "--message")
        if message is not None and not message.strip():
            raise ValueError("--message is empty")
        model = _load_captioner(folder, list(vocabulary), model_backend, model_quantize)
        if message is not None:
            reply, note = model.reply(picture, [{"role": "user", "content": message}], max_new_tokens=max_new_tokens,
                                      language=language)
            if note:
                print(f"note: {note}", file=sys.stderr)
            typer.echo(reply)
            return
        messages: list[dict] = []
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:
                break
            if not text:
                break
            messages.append({"role": "user", "content": text})
            reply, note = model.reply(picture, messages, max_new_tokens=max_new_tokens, language=language)
            if note:
                print(f"note: {note}", file=sys.stderr)
            messages.append({"role": "assistant", "content": reply or "…"})
            typer.echo(f"visembed> {reply}")

"""`visembed demo`, the main job: train on the built-in emoji data on a CPU, evaluate on held-out
concepts, show search results in English and Chinese, train a captioner on the model and let it
describe and discuss held-out emoji, then index every emoji and serve the page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, output_folder

SHOWN_QUERIES = 6  # held-out names searched for in the printout, spread over the test split
SHOWN_CAPTIONS = 5  # held-out emoji the captioner describes in the printout
SHOWN_STYLE = 3  # trained concepts in the other art style it describes
NAMES_CREDIT = "Names: Unicode CLDR (English, Chinese) via the `emoji` package."


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder for the demo model and its index."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after building the index."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to serve on."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the demo preset's)."),
    caption_steps: Optional[int] = typer.Option(None, "--caption-steps", help="Captioner training steps (0: no captioner)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, repeatable."),
) -> None:
    """Train on built-in emoji (English + Chinese names) on the CPU, evaluate on held-out concepts, show searches, train a captioner, index and serve."""
    with friendly_errors():
        output_folder(out)  # before training, not after
        run_demo(out, serve=not no_serve, host=host, port=port, steps=steps, caption_steps=caption_steps,
                 overrides=list(overrides))


def _say(text: str = "") -> None:
    print(text, flush=True)


def data_line(dataset) -> str:
    """What the model is trained on, with the credits the art's licences ask for."""
    attribution = getattr(dataset, "attribution", None)
    if attribution is None:  # the demo pointed at other data with --set data.train=...
        return f"Data: {len(dataset)} training images."
    return f"Data: {attribution} {NAMES_CREDIT}"


def _show_searches(model, data: str) -> None:
    """Search the held-out emoji by some of their own names, in English and Chinese: each query's
    concept was never trained on, so a hit shows what the model generalises to."""
    import numpy as np

    from visembed.data import SkipCounter, open_dataset
    from visembed.eval.run import embed_images

    samples, image_emb = embed_images(model, open_dataset(data, "test", language="en"), SkipCounter())
    plain = [i for i, s in enumerate(samples) if "skin tone" not in s.caption]  # variants differ only in tone
    picks = [plain[round(j * (len(plain) - 1) / (SHOWN_QUERIES - 1))] for j in range(SHOWN_QUERIES)]
    _say(f"\nText -> emoji search among the {len(samples)} held-out emoji (never seen in training);")
    _say("each query is the name of one of them, in English and in Chinese (rank of the right one in brackets):")
    for language in ("en", "zh"):
        queries = [samples[i].captions.get(language, samples[i].caption) for i in picks]
        for target, query, q in zip(picks, queries, model.encode_text(queries)):
            scores = image_emb @ q
            order = np.argsort(-scores)
            rank = int(np.nonzero(order == target)[0][0]) + 1
            shown = ", ".join(f"{samples[i].meta.get('emoji', '')} {samples[i].caption} ({scores[i]:.2f})" for i in order[:3])
            _say(f"  {query!r:34} [{rank:>3}] -> {shown}")


def _train_captioner(model_dir: Path, data: str, steps: int | None) -> Path:
    """A captioner on the demo model's image features (both stages), resumed where a run left it."""
    from visembed.train.captioner_run import captioner_config, train_captioner

    out = model_dir / "captioner"
    _say(f"\nTeaching a small language model to describe what the image tower sees (captioner: {out}) ...")
    cfg = captioner_config(model_dir, data, steps=steps)
    train_captioner(cfg, out, stage="both", resume=out.is_dir())
    return out


def _show_captions(captioner_dir: Path, data: str, image_size: int, noto_trained: bool) -> None:
    """Alt text in English and Chinese for held-out emoji (concepts never trained on) and for trained
    concepts drawn in the other art style (Noto), and a short dialogue about one of the latter that
    asks what the model was taught (its name and group), so what is printed shows both what
    transfers and what does not."""
    import visembed
    from visembed.data import DataError, open_dataset
    from visembed.data.conversations import QUESTIONS
    from visembed.data.emoji import emoji_spec

    model = visembed.load(captioner_dir)
    test = open_dataset(data, "test", language="en")
    plain = [s for s in test if "skin tone" not in s.caption]
    picks = [plain[round(j * (len(plain) - 1) / (SHOWN_CAPTIONS - 1))] for j in range(SHOWN_CAPTIONS)]
    _say("\nAlt text for held-out emoji (concepts never trained on: the captioner can only describe them with "
         "the names it learnt; `visembed caption --vocabulary emoji` adds CLDR names to its hints), English and "
         "Chinese:")
    _show_alt_texts(model, picks)
    try:  # trained concepts in the other art style: the model saw the concept, never this picture
        other = open_dataset(emoji_spec(image_size, style="noto"), "train", language="en")
    except DataError as err:
        _say(f"\n(no Noto art: {err})")
        return
    plain = [s for s in other if "skin tone" not in s.caption]
    if not plain:
        return
    noto = [plain[round(j * (len(plain) - 1) / (SHOWN_STYLE - 1))] for j in range(SHOWN_STYLE)]
    seen = ("the captioner trained on this style too" if noto_trained
            else "a style the captioner never saw")
    _say(f"\nAlt text for trained concepts in Noto Color Emoji art ({seen}):")
    _show_alt_texts(model, noto)
    sample = noto[0]
    _say(f"\nA short dialogue about {sample.meta.get('emoji', '')} ({sample.caption}, Noto art), asking what the "
         "model was taught:")
    for language in ("en", "zh"):
        messages: list[dict] = []
        for question in (QUESTIONS[language]["name"], QUESTIONS[language]["group"]):
            messages.append({"role": "user", "content": question})
            reply = model.chat(sample.image, messages, language=language)
            messages.append({"role": "assistant", "content": reply or "…"})
            _say(f"  you> {question}\n  visembed> {reply}")


def _show_alt_texts(model, samples: list) -> None:
    images = [s.image for s in samples]
    english, chinese = model.caption(images, language="en"), model.caption(images, language="zh")
    for sample, en, zh in zip(samples, english, chinese):
        _say(f"  {sample.meta.get('emoji', '')} {sample.caption!r:34} -> {en!r} / {zh!r}")


def run_demo(out: str | Path = "runs/demo", *, serve: bool = True, host: str = "127.0.0.1", port: int = 8000,
             steps: int | None = None, caption_steps: int | None = None, overrides: list[str] | None = None) -> dict:
    import visembed
    from visembed.atomic import atomic_write_json
    from visembed.config import apply_overrides, load_preset
    from visembed.data import open_dataset
    from visembed.data.emoji import emoji_spec
    from visembed.eval.run import evaluate
    from visembed.train.loop import train

    out = Path(out)
    started = time.time()
    cfg = load_preset("demo")
    extra = list(overrides or []) + ([f"train.steps={steps}"] if steps is not None else [])
    cfg = apply_overrides(cfg, extra)
    from visembed.models.card import pretrained_sources

    _say("visembed demo: a shared image-text space for emoji, trained on this CPU.")
    _say(data_line(open_dataset(cfg.data.train, "train", language=cfg.data.language)))
    for line in pretrained_sources(cfg):
        _say(f"Starts from: {line}")
    _say()
    train(cfg, out, resume=(out / "checkpoints").is_dir())
    spec = emoji_spec(cfg.model.vision.image_size)  # held-out concepts in OpenMoji art, English and Chinese names
    _say(f"\nTrained in {time.time() - started:.0f} s. Evaluating on held-out concepts ({spec}, test split) ...")
    model = visembed.load(out)
    metrics = evaluate(model, spec, "test", language="en")
    atomic_write_json(out / "eval_test.json", metrics)
    keys = ["text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "image_to_text_R@1",
            "zh_text_to_image_R@1", "zh_text_to_image_R@5", "zeroshot_top1", "num_images"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
            _say(f"  {key:24} {value:.3f}" if isinstance(value, float) else f"  {key:24} {value}")
    _show_searches(model, spec)
    _say(f"\nModel folder: {out} (load it with visembed.load({str(out)!r}); model card: {out / 'README.md'})")
    captioner = None
    if caption_steps != 0:
        captioner = _train_captioner(out, cfg.data.train, caption_steps)
        trained = open_dataset(cfg.data.train, "train", language=cfg.data.language)
        _show_captions(captioner, spec, cfg.model.vision.image_size, "noto" in getattr(trained, "styles", ()))
        _say(f"Captioner folder: {captioner} (visembed caption {captioner} IMAGE; visembed chat {captioner} --image IMAGE)")

    from visembed.index import build_index

    index_dir = out / "index"
    build_index(out, spec, index_dir, split="all")
    _say(f"Index of every emoji: {index_dir}")
    _say(f"Total time {time.time() - started:.0f} s.")
    if serve:
        from visembed.serve import run_server

        run_server(index_dir, host=host, port=port, captioner_dir=captioner)  # uploads get alt text and a chat box
    return metrics

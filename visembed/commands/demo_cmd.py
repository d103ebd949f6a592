"""`visembed demo`, the main job: train on the built-in emoji data on a CPU, evaluate on held-out
concepts, show search results in English and Chinese, index every emoji and serve the page; then
train a captioner on the model in the background (`BackgroundCaptioner`: a child process at lower
CPU priority) and, when it is ready, let it describe and discuss held-out emoji and hand it to the
running server (the page says when captions arrive; no restart)."""

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
    no_serve: bool = typer.Option(False, "--no-serve", help="Do not serve: end when the index and the captioner are done."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to serve on."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the demo preset's)."),
    caption_steps: Optional[int] = typer.Option(None, "--caption-steps", help="Captioner training steps (0: no captioner)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, repeatable."),
) -> None:
    """Train on built-in emoji (English + Chinese names) on the CPU, evaluate on held-out concepts, show searches, index and serve; a captioner trains meanwhile in the background and joins the running server."""
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


def _start_captioner(model_dir: Path, train_data: str, steps: int | None, spec: str, image_size: int,
                     started: float, serve: bool):
    """A captioner on the demo model's image features (both stages), resumed where a run left it,
    trained in a child process; its alt texts are printed when it is ready."""
    from visembed.commands.background_captioner import BackgroundCaptioner
    from visembed.data import open_dataset

    noto_trained = "noto" in getattr(open_dataset(train_data, "train"), "styles", ())

    def ready(model, folder: Path) -> None:
        _say(f"\nCaptioner ready after {time.time() - started:.0f} s: {folder}")
        _show_captions(model, spec, image_size, noto_trained)
        _say(f"Captioner folder: {folder} (visembed caption {folder} IMAGE; visembed chat {folder} --image IMAGE)")
        if serve:
            _say("The page now writes alt text for pictures you add, and answers questions about them.")

    log = model_dir / "captioner.log" if serve else None
    background = BackgroundCaptioner(model_dir, train_data, steps, on_ready=ready, log=log)
    if background.complete:
        return background.start()
    where = f"; progress in {log}" if log is not None else ""
    _say(f"\nTeaching a small language model to describe what the image tower sees (captioner: "
         f"{background.final}), in the background at lower priority{where} ...")
    background.start()
    if serve:
        _say(f"(captioner training: process {background.pid}; the page and GET /capabilities say when captions arrive)")
    return background


def _show_captions(model, data: str, image_size: int, noto_trained: bool) -> None:
    """Alt text in English and Chinese for held-out emoji (concepts never trained on) and for trained
    concepts drawn in the other art style (Noto), and a short dialogue about one of the latter that
    asks what the model was taught (its name and group), so what is printed shows both what
    transfers and what does not."""
    from visembed.data import DataError, open_dataset
    from visembed.data.conversations import QUESTIONS
    from visembed.data.emoji import emoji_spec

    test = open_dataset(data, "test", language="en")
    plain = [s for s in test if "skin tone" not in s.caption]
    picks = [plain[round(j * (len(plain) - 1) / (SHOWN_CAPTIONS - 1))] for j in range(SHOWN_CAPTIONS)]
    _say("\nAlt text for held-out emoji (concepts never trained on: the captioner's hints hold every CLDR emoji "
         "name, which the dual encoder ranks against the image; `--vocabulary none`: the training names alone), "
         "English and Chinese:")
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

    from visembed.index import build_index

    index_dir = out / "index"
    build_index(out, spec, index_dir, split="all")
    _say(f"Index of every emoji: {index_dir}")
    _say(f"Search ready after {time.time() - started:.0f} s.")
    background = None
    if caption_steps != 0:
        background = _start_captioner(out, cfg.data.train, caption_steps, spec, cfg.model.vision.image_size,
                                      started, serve)
    ended_by_signal = _end_cleanly_on_sigterm()
    try:
        if serve:
            from visembed.serve import run_server

            # uploads get alt text and a chat box once the captioner has arrived through its slot
            run_server(index_dir, host=host, port=port, captioner_slot=background.slot if background else None)
        elif background is not None:
            background.wait()
            _say(f"Total time {time.time() - started:.0f} s.")
    finally:
        if background is not None:
            background.stop()  # a child still training ends with the demo (its checkpoints stay)
        ended_by_signal()
    return metrics


def _end_cleanly_on_sigterm():
    """SIGTERM ends the demo through its `finally` (which stops the captioner's child) rather than
    at once: uvicorn re-raises the SIGTERM it caught after its shutdown. -> a function restoring
    the previous handler. Only the main thread may set handlers; elsewhere this does nothing."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return lambda: signal.signal(signal.SIGTERM, previous)

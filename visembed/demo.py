"""The main job: train on the built-in emoji data on a CPU, evaluate on held-out concepts, show
search results in English and Chinese, then index every emoji and serve the search page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SHOWN_QUERIES = 6  # held-out names searched for in the printout, spread over the test split
EVAL_DATA = "builtin:emoji"  # held-out concepts in OpenMoji art, English and Chinese names


def _say(text: str = "") -> None:
    print(text, flush=True)


def _show_searches(model, data: str) -> None:
    """Search the held-out emoji by some of their own names, in English and Chinese: each query's
    concept was never trained on, so a hit shows what the model generalises to."""
    from visembed.data import BadImage, load_image, open_dataset

    ds = open_dataset(data, "test", language="en")
    samples, images = [], []
    for sample in ds:
        try:
            images.append(load_image(sample.image))
        except BadImage:
            continue
        samples.append(sample)
    image_emb = model.encode_image(images)
    plain = [i for i, s in enumerate(samples) if "skin tone" not in s.caption]  # variants differ only in tone
    picks = [plain[round(j * (len(plain) - 1) / (SHOWN_QUERIES - 1))] for j in range(SHOWN_QUERIES)]
    _say(f"\nText -> emoji search among the {len(images)} held-out emoji (never seen in training);")
    _say("each query is the name of one of them, in English and in Chinese (rank of the right one in brackets):")
    for language in ("en", "zh"):
        queries = [samples[i].captions.get(language, samples[i].caption) for i in picks]
        for target, query, q in zip(picks, queries, model.encode_text(queries)):
            scores = image_emb @ q
            order = np.argsort(-scores)
            rank = int(np.nonzero(order == target)[0][0]) + 1
            shown = ", ".join(f"{samples[i].meta.get('emoji', '')} {samples[i].caption} ({scores[i]:.2f})" for i in order[:3])
            _say(f"  {query!r:34} [{rank:>3}] -> {shown}")


def run_demo(out: str | Path = "runs/demo", *, serve: bool = True, host: str = "127.0.0.1", port: int = 8000,
             steps: int | None = None, overrides: list[str] | None = None) -> dict:
    import visembed
    from visembed.config import apply_overrides, load_preset
    from visembed.data.emoji import EMOJI_ATTRIBUTION
    from visembed.eval.run import evaluate
    from visembed.train.loop import train

    out = Path(out)
    started = time.time()
    _say("visembed demo: a shared image-text space for emoji, trained on this CPU.")
    _say(f"Data: {EMOJI_ATTRIBUTION} Names: Unicode CLDR (English, Chinese) via the `emoji` package.\n")
    cfg = load_preset("demo")
    extra = list(overrides or []) + ([f"train.steps={steps}"] if steps is not None else [])
    cfg = apply_overrides(cfg, extra)
    train(cfg, out, resume=(out / "checkpoints").is_dir())
    _say(f"\nTrained in {time.time() - started:.0f} s. Evaluating on held-out concepts ({EVAL_DATA}, test split) ...")
    model = visembed.load(out)
    metrics = evaluate(model, EVAL_DATA, "test", language="en")
    (out / "eval_test.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    keys = ["text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "image_to_text_R@1",
            "zh_text_to_image_R@1", "zh_text_to_image_R@5", "zeroshot_top1", "num_images"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
            _say(f"  {key:24} {value:.3f}" if isinstance(value, float) else f"  {key:24} {value}")
    _show_searches(model, EVAL_DATA)
    _say(f"\nModel folder: {out} (load it with visembed.load({str(out)!r}))")

    from visembed.index import build_index

    index_dir = out / "index"
    build_index(out, "builtin:emoji", index_dir, split="all")
    _say(f"Index of every emoji: {index_dir}")
    _say(f"Total time {time.time() - started:.0f} s.")
    if serve:
        from visembed.serve import run_server

        run_server(index_dir, host=host, port=port)
    return metrics

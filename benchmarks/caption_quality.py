"""Captions and image chat on held-out emoji concepts: the two offline LMs, beside retrieval.

A captioner (`visembed train-captioner`) on the demo's dual encoder is scored on concepts it never
saw (the test split of `builtin:emoji`: concepts chosen by hash, skin-tone variants with their base),
in English and Chinese, beside the nearest-neighbour baseline of the same run (the training alt
text whose embedding is closest to the image: retrieval can only repeat a training caption):
  * CIDEr / BLEU-4 of the generated alt text ("The dog face emoji, from Animals & Nature."), greedy
    and as shipped (CAPTION_CANDIDATES captions by beam search, the dual encoder choosing; `--candidates`)
    against the data's (`visembed.eval.captioning.evaluate_captioner`);
  * name: the share of alt texts that contain the emoji's CLDR name (case-insensitive; Chinese:
    the Chinese name) — the part of the sentence that has to be right;
  * chat: the answer to "Which emoji group is this in?" / "Which emoji subgroup is this in?"
    (and "这个表情符号属于哪个类别？"), the exact prompts of `visembed/data/conversations.py`,
    equal to the data's group / subgroup (case, spacing and a final full stop aside); the
    baseline answers with the group / subgroup of its nearest training concept (majority_*: the share of
    the commonest group / subgroup among the images, for scale);
  * naming (docs/captions.md): one row per `--naming` setting, "closed" (hints from the training
    captions, the LM's beams as they come: the captioner before open vocabularies) and "open" (the
    default: CLDR emoji names as well, calibrated stacking, one script per answer, each hinted name
    put in the beams' name slot), measured in one run ("open-no-swap": without that slot filling); `vocab_coverage`: the share of the images' names in the hint pool (the ceiling of copying),
    `hint_R@1` / `hint_R@k`: image -> name recall over the whole pool (the true name first among /
    among the prompt's hints), `zh_latin`: Chinese captions with a Latin word outside the name;
  * CPU cost: latency of one caption (at most 16 new tokens, per candidates setting, KV cache;
    image decoding and the image tower included: the feature cache is off), p50 over 50 images,
    and batched throughput (images/s at batch 32, same settings).

    python benchmarks/caption_quality.py --vision runs/demo                  # trains gpt2, gpt2-no-hints, gpt2-own-hints, minilm
    python benchmarks/caption_quality.py --vision runs/demo --configs gpt2 gpt2-own-hints --split val   # copying names
    python benchmarks/caption_quality.py --vision runs/demo --configs gpt2 --steps 300 --split val
    python benchmarks/caption_quality.py --model runs/cap-gpt2 runs/cap-minilm --json caption.json
    python benchmarks/caption_quality.py --model runs/demo/captioner --data "builtin:emoji?style=noto&size=96" --no-chat
    python benchmarks/caption_quality.py --smoke     # tiny models, 16 emoji a split, seconds: does it run (CI)

Choose settings on `--split val` (~180 images per art style); report `--split test` once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from visembed.config import CaptionerConfig

try:  # imported from the repository root (python -m benchmarks.caption_quality)
    from benchmarks.markdown_table import print_table
except ImportError:  # run as a script: this folder is on sys.path
    from markdown_table import print_table

CAPTION_CANDIDATES = CaptionerConfig().candidates  # the shipped default

DATA = "builtin:emoji?style=all&size=96"
CONFIGS = {  # name -> (--lm, --set overrides)
    "gpt2": ("gpt2", []),  # a small GPT-2 from scratch (the config's width/depth), lr 1e-3, 3 hints in the prompt
    "gpt2-no-hints": ("gpt2", ["model.captioner.hints=0"]),  # the same without retrieved captions in the prompt
    # the same, with the image's own name among its hints in half the training prompts (copying)
    "gpt2-own-hints": ("gpt2", ["model.captioner.own_hint_rate=0.5"]),
    "minilm": ("minilm", ["train.lr=0.0001"]),  # all-MiniLM-L6-v2 as a decoder: pretrained, a smaller lr
}
# --smoke: a 2-step tiny dual encoder (unless --vision), a 1-layer GPT-2 trained 2 steps, 16 emoji a split
SMOKE_DATA = "builtin:emoji?limit=16"
SMOKE_CAPTIONER = ["model.captioner.vocab_size=400", "model.captioner.width=32", "model.captioner.depth=1",
                   "model.captioner.heads=2", "model.captioner.projector_hidden=64", "model.captioner.max_tokens=48",
                   "model.captioner.candidates=1", "data.val=builtin:emoji?limit=2", "train.warmup_steps=1",
                   "train.checkpoint_every=2"]
LATENCY_IMAGES = 50
THROUGHPUT_BATCH = 32
MAX_NEW_TOKENS = 16


class _Recorder:
    """A CaptionerModel seen through evaluate_captioner: keeps every caption it generated (per
    language, in data order) and the vectors of the nearest-neighbour baseline."""

    def __init__(self, model, candidates: int):
        self.model, self.candidates = model, candidates
        self.captions: dict[str, list[str]] = {}
        self.image_vectors: list = []
        self.text_calls: list[tuple[list[str], object]] = []

    def caption(self, images, *, language: str = "en", **kwargs) -> list[str]:
        out = self.model.caption(images, language=language, candidates=self.candidates, **kwargs)
        self.captions.setdefault(language, []).extend(out)
        return out

    def encode_image(self, images):
        vectors = self.model.encode_image(images)
        self.image_vectors.append(vectors)
        return vectors

    def encode_text(self, texts):
        vectors = self.model.encode_text(texts)
        self.text_calls.append((list(texts), vectors))
        return vectors


def ask(model, images: list, question: str, *, batch_size: int = THROUGHPUT_BATCH, max_new_tokens: int = MAX_NEW_TOKENS):
    """`model.chat(image, [{"role": "user", "content": question}])` for many images, batched."""
    from visembed.models.inference import chat_turns

    turns = chat_turns([{"role": "user", "content": question}])
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out += [text for text, _ in model._answer(chunk, [turns] * len(chunk), max_new_tokens)]
    return out


def naming_figures(model, samples: list, captions: dict[str, list[str]]) -> dict:
    """What the open vocabulary can and does give: the share of the images' names that are in the hint
    pool at all (`vocab_coverage`: the ceiling of copying), image -> name recall over the whole pool
    (`hint_R@1`, `hint_R@k`: the true name among the prompt's hints), the pool's size, and the Chinese
    captions with a Latin word outside the name (`zh_latin`: the one-language rule, 0 wanted)."""
    import re

    import numpy as np
    import torch

    module, shown = model.module, model.naming.hints or model.module.hints
    row = {"hints_shown": shown}
    with torch.no_grad():
        features = torch.cat([module.features(model.pixels([s.path for s in samples[i : i + 64]]).to(model.device))
                              for i in range(0, len(samples), 64)])
    for lang, prefix in (("en", ""), ("zh", "zh_")):
        names = [s.captions[lang] for s in samples]
        if not module.hints:
            row[f"{prefix}vocab_coverage"] = row[f"{prefix}hint_R@1"] = row[f"{prefix}hint_R@k"] = 0.0
            continue
        pool = set(module.hint_pool(lang)[0]) if module.hint_bank.get(lang) else set()
        row[f"{prefix}pool"] = len(pool)
        row[f"{prefix}vocab_coverage"] = float(np.mean([n in pool for n in names]))
        hints = module.hints_for(features, [lang] * len(samples), count=shown, seen_margin=model.naming.seen_margin)
        row[f"{prefix}hint_R@1"] = float(np.mean([n in h[:1] for n, h in zip(names, hints)]))
        row[f"{prefix}hint_R@k"] = float(np.mean([n in h for n, h in zip(names, hints)]))
    names = [s.captions["zh"] for s in samples]
    row["zh_latin"] = sum(bool(re.search(r"[A-Za-z]", c.replace(n, ""))) for n, c in zip(names, captions["zh"]))
    return row


def quality(model, spec: str, split: str, limit: int | None, candidates: int, chat: bool = True) -> dict:
    """Caption and chat figures of a loaded captioner on `split`, with the retrieval baseline."""
    import numpy as np

    from visembed.data import open_dataset
    from visembed.data.conversations import GROUPS_ZH, QUESTIONS, alt_text_of, caption_language
    from visembed.eval.captioning import evaluate_captioner, same_text

    rec = _Recorder(model, candidates)
    metrics = evaluate_captioner(rec, spec, split, limit=limit, baseline=True, progress=False)
    samples = list(open_dataset(spec, split, language="en"))[: metrics["images"]]
    if any(len(c) != len(samples) for c in rec.captions.values()):
        raise RuntimeError("captions and samples are out of step (were images skipped?)")
    row = {"images": len(samples)}
    for lang, prefix in (("en", ""), ("zh", "zh_")):
        for name in ("CIDEr", "BLEU-4"):
            row[f"{prefix}{name}"] = metrics.get(f"{prefix}caption_{name}")
            row[f"{prefix}nn_{name}"] = metrics.get(f"{prefix}nn_caption_{name}")
        row[f"{prefix}exact"] = metrics.get(f"{prefix}caption_exact")

    # the baseline's choices again, from the vectors evaluate_captioner computed
    images = np.concatenate(rec.image_vectors)
    guesses: dict[str, list[str]] = {}
    for texts, vectors in rec.text_calls:
        guesses[caption_language(texts[0])] = [texts[i] for i in (images @ vectors.T).argmax(axis=1)]
    train_by_text = {}
    for sample in open_dataset(spec, "train", language="en"):
        train_by_text.setdefault(alt_text_of(sample, "en"), sample)

    def contains(texts: list[str], lang: str) -> float:
        return float(np.mean([s.captions[lang].lower() in t.lower() for s, t in zip(samples, texts)]))

    for lang, prefix in (("en", ""), ("zh", "zh_")):
        row[f"{prefix}name"] = contains(rec.captions[lang], lang)
        row[f"{prefix}nn_name"] = contains(guesses[lang], lang)

    row.update(naming_figures(model, samples, rec.captions))
    row["examples"] = [{"name": s.captions["en"], "en": en, "zh": zh, "nn": nn}
                       for s, en, zh, nn in list(zip(samples, rec.captions["en"], rec.captions["zh"], guesses["en"]))[:8]]
    if not chat:
        return row
    paths = [s.path for s in samples]
    truth = {"group": [s.meta["group"] for s in samples], "subgroup": [s.meta["subgroup"] for s in samples]}
    answers = {"group": ask(model, paths, QUESTIONS["en"]["group"]),
               "subgroup": ask(model, paths, QUESTIONS["en"]["subgroup"]),
               "zh_group": ask(model, paths, QUESTIONS["zh"]["group"])}
    truth["zh_group"] = [GROUPS_ZH[g] for g in truth["group"]]
    nearest = [train_by_text[text] for text in guesses["en"]]
    nn_answers = {"group": [s.meta["group"] for s in nearest], "subgroup": [s.meta["subgroup"] for s in nearest],
                  "zh_group": [GROUPS_ZH[s.meta["group"]] for s in nearest]}
    for key in answers:
        row[f"chat_{key}"] = float(np.mean([same_text(a, t) for a, t in zip(answers[key], truth[key])]))
        row[f"nn_chat_{key}"] = float(np.mean([same_text(a, t) for a, t in zip(nn_answers[key], truth[key])]))
    for key in ("group", "subgroup"):  # always answering the commonest one
        row[f"majority_chat_{key}"] = max(truth[key].count(v) for v in set(truth[key])) / len(samples)
    # the batched questions are what model.chat answers, one image at a time
    row["chat_check"] = model.chat(paths[0], [{"role": "user", "content": QUESTIONS["en"]["group"]}],
                                   max_new_tokens=MAX_NEW_TOKENS) == answers["group"][0]
    row["examples"] = [{"name": s.captions["en"], "en": en, "zh": zh, "nn": nn, "group": g, "subgroup": sg}
                       for s, en, zh, nn, g, sg in list(zip(samples, rec.captions["en"], rec.captions["zh"],
                                                            guesses["en"], answers["group"], answers["subgroup"]))[:8]]
    return row


def cost(model, spec: str, split: str, candidates: int, images: int = LATENCY_IMAGES,
         batched: int = 4 * THROUGHPUT_BATCH) -> dict:
    """CPU latency of one caption (p50 over LATENCY_IMAGES) and images/s at batch THROUGHPUT_BATCH,
    with the image tower run for every image (the feature cache off)."""
    import torch

    from visembed.data import open_dataset

    samples = list(open_dataset(spec, split, language="en"))
    paths = [s.path for s in samples[:: max(1, len(samples) // images)]][:images]
    cache, model.module.feature_cache = model.module.feature_cache, None
    try:
        model.caption(paths[:2], max_new_tokens=MAX_NEW_TOKENS, candidates=candidates)  # warm-up
        times = []
        for path in paths:
            start = time.perf_counter()
            model.caption([path], max_new_tokens=MAX_NEW_TOKENS, candidates=candidates)
            times.append(time.perf_counter() - start)
        batch = [s.path for s in samples[:batched]]
        start = time.perf_counter()
        model.caption(batch, max_new_tokens=MAX_NEW_TOKENS, batch_size=THROUGHPUT_BATCH, candidates=candidates)
        seconds = time.perf_counter() - start
    finally:
        model.module.feature_cache = cache
    return {"latency_p50_ms": 1000 * statistics.median(times), "throughput_img_s": len(batch) / seconds,
            "threads": torch.get_num_threads()}


def lm_params(model) -> float:
    return sum(p.numel() for p in model.module.lm.parameters()) / 1e6


def namings(chosen: list[str]) -> dict[str, tuple[list[str], object]]:
    """name -> (vocabulary sources, Naming): "closed" is the captioner as it was before open
    vocabularies (training captions as hints, the LM's beams as they come); "open" the CLDR emoji
    names as well (`--vocabulary emoji`), with today's `Naming()` (decoding rules, slot filling,
    re-ranking bonus); "open-no-swap" the same before slot filling."""
    import dataclasses

    from visembed.models.caption_constraints import Naming
    from visembed.models.vocabulary import OPEN as DEFAULT

    no_swap = dataclasses.replace(Naming(), swap_names=False, name_bonus=0.0)  # the open naming before slot filling
    table = {"closed": (["none"], Naming(rules=False, seen_margin=0.0)),
             "open": (list(DEFAULT), Naming()),
             "open-no-swap": (list(DEFAULT), no_swap),
             "open+cedict": ([*DEFAULT, "cedict"], Naming()),
             "open+copy": (list(DEFAULT), dataclasses.replace(no_swap, copy_bonus=4.0, name_bonus=0.1)),
             "open-no-bonus": (list(DEFAULT), dataclasses.replace(Naming(), name_bonus=0.0)),
             "open-no-margin": (list(DEFAULT), dataclasses.replace(Naming(), seen_margin=0.0))}
    return {name: table[name] for name in chosen}


NAMINGS = ["closed", "open", "open-no-swap", "open+cedict", "open+copy", "open-no-bonus", "open-no-margin"]


def measure(folder: Path, spec: str, split: str, limit: int | None, timing: dict | None,
            candidates: list[int], naming: list[str] = ("closed", "open"), chat: bool = True) -> list[dict]:
    """One row per naming setting and number of caption candidates (1: greedy; N: beam search of N,
    the dual encoder choosing)."""
    import visembed

    model = visembed.load(folder)
    cfg = model.config
    rows = []
    for setting, (sources, rules) in namings(list(naming)).items():
        model.use_vocabulary(sources)
        model.naming = rules
        for n in candidates:
            row = {"config": folder.name, "naming": setting, "lm": cfg.model.captioner.lm,
                   "lm_M": round(lm_params(model), 1), "hints": cfg.model.captioner.hints, "candidates": n,
                   "steps": _total_steps(folder, cfg), "lr": cfg.train.lr, "batch": cfg.train.batch_size,
                   "split": split}
            row.update(quality(model, spec, split, limit, n, chat))
            if timing is not None:
                row.update(cost(model, spec, split, n, **timing))
            rows.append(row)
    return rows


def _total_steps(folder: Path, cfg) -> int:
    """Both stages' steps (the align stage, with --stage both, lives in folder/align/)."""
    from visembed.checkpoint import read_config

    steps = cfg.train.steps
    if (folder / "align" / "config.json").is_file():
        steps += read_config(folder / "align").train.steps
    return steps


def tiny_vision(out: Path) -> Path:
    """A `tiny`-preset dual encoder trained 2 steps on builtin:shapes (--smoke without --vision)."""
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    train(apply_overrides(load_preset("tiny"), ["train.steps=2", "train.checkpoint_every=2"]), out, progress=False)
    return out


def train_one(name: str, vision: Path, spec: str, steps: int | None, batch_size: int | None, extra: list[str],
              root: Path) -> tuple[Path, dict]:
    from visembed.train.captioner_run import captioner_config, train_captioner

    lm, overrides = CONFIGS[name]
    cfg = captioner_config(vision, spec, lm=lm, steps=steps, batch_size=batch_size, overrides=overrides + extra)
    out = root / name
    start = time.time()
    train_captioner(cfg, out, stage="both", progress=False)
    seconds = time.time() - start
    return out, {"train_s": round(seconds), "steps_per_s": round(cfg.train.steps / seconds, 2)}


COLUMNS = ["config", "naming", "lm", "lm_M", "hints", "candidates", "steps", "lr", "batch", "train_s", "steps_per_s",
           "split", "images",
           "CIDEr", "nn_CIDEr", "BLEU-4", "nn_BLEU-4", "name", "nn_name", "exact",
           "zh_CIDEr", "zh_nn_CIDEr", "zh_BLEU-4", "zh_nn_BLEU-4", "zh_name", "zh_nn_name", "zh_exact", "zh_latin",
           "pool", "zh_pool", "vocab_coverage", "zh_vocab_coverage", "hints_shown", "hint_R@1", "hint_R@k",
           "zh_hint_R@1", "zh_hint_R@k",
           "chat_group", "nn_chat_group", "majority_chat_group", "chat_subgroup", "nn_chat_subgroup",
           "majority_chat_subgroup", "chat_zh_group", "nn_chat_zh_group",
           "latency_p50_ms", "throughput_img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", type=Path, default=None, help="the dual encoder to train captioners on")
    parser.add_argument("--data", default=DATA, help=f"data spec (default {DATA})")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=None, help="training steps, both stages (default: the captioner's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every trained configuration (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--model", type=Path, nargs="+", default=None, metavar="DIR",
                        help="evaluate these existing captioner folders instead of training")
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="val to choose settings; test (held-out concepts) to report, once")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images (quick looks)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, CAPTION_CANDIDATES],
                        help="captions proposed per image, one row each (1: greedy; default: 1 and the shipped "
                             f"{CAPTION_CANDIDATES})")
    parser.add_argument("--naming", nargs="+", default=["closed", "open"], choices=NAMINGS,
                        help="hint and decoding settings, one row each: closed (training captions as hints, no "
                             "decoding rules: as before), open (the default: open vocabulary, one script, slot "
                             "filling, bonus for the first hint), open-no-swap (no slot filling), open-no-bonus, "
                             "open+cedict, open+copy (a copy bias in decoding, no slot filling), open-no-margin")
    parser.add_argument("--no-chat", action="store_true", help="skip the chat questions")
    parser.add_argument("--no-timing", action="store_true", help="skip the latency and throughput figures")
    parser.add_argument("--latency-images", type=int, default=LATENCY_IMAGES, help="images timed one at a time")
    parser.add_argument("--throughput-images", type=int, default=4 * THROUGHPUT_BATCH,
                        help=f"images captioned in batches of {THROUGHPUT_BATCH} for the throughput")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every row as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny models (a 2-step dual encoder unless --vision, a "
                                                             "1-layer GPT-2 trained 2 steps), 16 emoji a split, 2 "
                                                             "candidates: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.data, args.configs, args.steps, args.batch_size = SMOKE_DATA, ["gpt2"], 2, 8
        args.overrides, args.limit, args.candidates = SMOKE_CAPTIONER + args.overrides, 8, [2]
        args.latency_images, args.throughput_images = 2, 2
        if args.vision is None and not args.model:
            args.out = args.out or Path(tempfile.mkdtemp(prefix="caption_quality_"))
            args.vision = tiny_vision(args.out / "vision")
    rows = []
    timing = None if args.no_timing else {"images": args.latency_images, "batched": args.throughput_images}
    if args.model:
        for folder in args.model:
            rows += [{**row, "train_s": "-"} for row in measure(folder, args.data, args.split, args.limit, timing,
                                                                 args.candidates, args.naming, not args.no_chat)]
    else:
        if args.vision is None:
            parser.error("--vision (a dual encoder's folder) or --model is needed")
        root = args.out or Path(tempfile.mkdtemp(prefix="caption_quality_"))
        for name in args.configs:
            folder, trained = train_one(name, args.vision, args.data, args.steps, args.batch_size, args.overrides, root)
            rows += [{**row, **trained, "config": name}
                     for row in measure(folder, args.data, args.split, args.limit, timing, args.candidates,
                                        args.naming, not args.no_chat)]
    print_table(rows, COLUMNS)
    print("\nname: alt text containing the emoji's CLDR name; nn_*: the nearest training alt text (retrieval) in the "
          "same run; chat_*: exact answers to the group / subgroup questions; latency: one caption, <= "
          f"{MAX_NEW_TOKENS} new tokens, image tower included, p50 over {args.latency_images} images; throughput at "
          f"batch {THROUGHPUT_BATCH}")
    for row in rows:
        print(f"\n{row['config']} ({row['naming']}, {row['candidates']} candidates) examples:")
        for ex in row.get("examples", []):
            chat = f" | group {ex['group']!r}, subgroup {ex['subgroup']!r}" if "group" in ex else ""
            print(f"  {ex['name']!r}: {ex['en']!r} / {ex['zh']!r} | nn {ex['nn']!r}{chat}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

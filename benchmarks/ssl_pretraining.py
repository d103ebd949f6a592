"""Image-only pretraining (issue #20): what `simclr`, `slip` and SimCLR domain adaptation buy, at an
equal budget per row (optimiser steps at one batch size; CPU seconds and wall seconds reported).

    .venv/bin/python benchmarks/ssl_pretraining.py                    # the full budgets (~1 CPU-hour on 2 cores)
    .venv/bin/python benchmarks/ssl_pretraining.py --steps 150 --batch-size 64 --lite-steps 60 --digits-steps 150
    .venv/bin/python benchmarks/ssl_pretraining.py --smoke            # 2 steps a row, 32 emoji a split: does it run (CI)

Tables (one per data set):
  emoji-scratch  48 px 4-stage ConvNet from scratch on builtin:emoji's train images: random init,
                 simclr (no captions read), clip (captions), slip (both). 16-shot linear probe and
                 kNN top-1 on emoji *subgroups* of held-out concepts (shots from the train split,
                 tested on val + test, whose concepts training never saw), 3 draws of the shots;
                 text->image R@1 on the test split for the two with a text tower.
  emoji-lite0    ImageNet EfficientNet-Lite0 as is vs after simclr on the emoji train images
                 (last `--lite-groups` layer groups trained; SimCLR's default views, and crops of
                 50-100 %), same probe on the pooled tower features.
  digits         scikit-learn's 1,797 handwritten digits (8x8 scans shown at 32 px): simclr on the
                 first 1,000 (labels unread) vs random init; 16-shot probe tested on the other 797.

The reference of the issue (measured outside, 48 px 4-layer ConvNet, 16-shot probe on emoji
subgroups, held-out concepts): random init 0.499, plain SimCLR 5 CPU-min (607 steps of 128) 0.530,
ImageNet Lite0 pooled 0.506. The random-init row of each table is this run's own reference.

Runs are cached under --work (a row with a finished model folder is not trained again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import visembed  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

try:
    from benchmarks.markdown_table import print_table
except ImportError:  # run as a script: this folder is on sys.path
    from markdown_table import print_table

SHOTS = 16
PROBE_C = None  # the probe's C: None chooses it on held-back shots (--probe-c fixes it: 4x cheaper)
SCRATCH = ["model.vision.kind=convnet", "model.vision.image_size=48", "model.vision.channels=[32,64,128,256]",
           "model.embed_dim=128", "train.warmup_steps=20", "train.lr=1e-3", "train.log_every=50"]
LITE0 = ["model.vision.kind=efficientnet_lite", "model.vision.variant=lite0", "model.vision.pretrained=true",
         "model.vision.image_size=64", "model.vision.feature_cache=0", "model.embed_dim=128",
         "model.vision.mean=[0.498,0.498,0.498]", "model.vision.std=[0.502,0.502,0.502]",
         "train.warmup_steps=10", "train.lr=3e-4", "train.log_every=20", "train.simclr.head_input=tower"]


def config(overrides: list[str]):
    from visembed.config import apply_overrides, load_preset

    return apply_overrides(load_preset("tiny"), ["train.checkpoint_every=0", "train.eval_every=0", *overrides])


def trained(name: str, overrides: list[str], work: Path) -> tuple[Path, dict]:
    """Train (or reuse) the run `work/name`; returns its folder and {cpu_s, wall_s, steps}."""
    from visembed.train.loop import train

    out = work / name
    facts = out / "bench.json"
    if facts.is_file():
        return out, json.loads(facts.read_text())
    cfg = config(overrides)
    cpu, wall = time.process_time(), time.perf_counter()
    train(cfg, out, progress=False)
    result = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "steps": cfg.train.steps,
              "batch": cfg.train.batch_size}
    facts.write_text(json.dumps(result))
    return out, result


def untrained(overrides: list[str]):
    """The model `overrides` describe as initialised (random, or the pretrained tower as it ships)."""
    from visembed.models import build_model
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer
    from visembed.models.inference import Model

    cfg = config(overrides)
    torch.manual_seed(cfg.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer([], cfg.model.text.vocab_size, Path(tmp))
        module = build_model(cfg.model, tokenizer_dir=Path(tmp), pretrained=True)
    return Model(module.eval(), cfg, "cpu")


def loaded(folder: Path):
    from visembed.models.inference import Model

    return Model.from_folder(folder, "cpu")


def features(model, images: list) -> dict[str, np.ndarray]:
    """{"embedding": the L2-normalised image embedding search uses (N, D), "pooled": the image
    tower's pooled features before any head (N, W)} (the classifiers' `image_features`)."""
    from visembed.classify import image_features

    return image_features(model, images)


def probe_and_knn(train_x, train_y, test_x, test_y, seeds: int) -> dict[str, float]:
    """Mean over `seeds` draws of SHOTS training images per class: linear-probe and kNN top-1
    (`visembed.classify`'s probe, C chosen on held-back shots, and weighted 20-NN vote)."""
    from visembed.eval.image_only import few_shot_scores

    scores = [few_shot_scores(train_x, train_y, test_x, test_y, shots=SHOTS, seed=seed, C=PROBE_C) for seed in range(seeds)]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def emoji_split(split: str, limit: int) -> tuple[list, np.ndarray]:
    from visembed.data import load_image, open_dataset

    ds = open_dataset(f"builtin:emoji?size=48&label=subgroup{f'&limit={limit}' if limit else ''}", split)
    samples = list(ds)
    return [load_image(s.image) for s in samples], np.array([s.label for s in samples])


def emoji_data(args):
    limit = 32 if args.smoke else 0
    data = f"builtin:emoji?size=48{f'&limit={limit}' if limit else ''}"
    train_images, train_labels = emoji_split("train", limit)
    held = [emoji_split(split, limit) for split in ("val", "test")]
    return data, train_images, train_labels, held[0][0] + held[1][0], np.concatenate([held[0][1], held[1][1]])


def score(args, data_of, name, model, facts, readouts=("embedding", "pooled"), text=False) -> dict:
    """One table row: 16-shot probe and kNN top-1 (mean of the draws) per readout, text->image R@1."""
    data, train_images, train_labels, held_images, held_labels = data_of
    row = {"model": name, **{k: facts.get(k, "-") for k in ("steps", "cpu_s", "wall_s")}}
    tr, te = features(model, train_images), features(model, held_images)
    for readout in readouts:
        for key, value in probe_and_knn(tr[readout], train_labels, te[readout], held_labels, args.seeds).items():
            row[f"{key} ({readout})"] = value
    if text:
        from visembed.eval.run import evaluate

        row["text->image R@1"] = evaluate(model, data, "test", progress=False)["text_to_image_R@1"]
    print(f"# {row}", flush=True)
    return row


def scratch_table(args, work: Path) -> list[dict]:
    data_of = emoji_data(args)
    data = data_of[0]
    budget = [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"data.train={data}"]
    wanted = set(args.rows.split(","))
    rows = [score(args, data_of, "random init", untrained(SCRATCH), {"steps": 0})] if "random" in wanted else []
    # simclr's views alone (data.augment off, as SimCLR); clip and slip keep data.augment for the caption view
    for task, text, views in (("simclr", False, ["data.augment.enabled=false"]), ("contrastive", True, []),
                              ("slip", True, [])):
        name = {"contrastive": "clip"}.get(task, task)
        if name not in wanted:
            continue
        images_only = [f"data.train={data}&captions=none"] if task == "simclr" else []  # no caption is read
        folder, facts = trained(f"scratch-{task}-{args.steps}x{args.batch_size}",
                                [*SCRATCH, *budget, f"train.task={task}", *views, *images_only], work)
        rows.append(score(args, data_of, name, loaded(folder), facts, text=text))
    return rows


def lite_table(args, work: Path) -> list[dict]:
    data_of = emoji_data(args)
    lite_budget = [f"train.steps={args.lite_steps}", f"train.batch_size={args.batch_size}",
                   f"model.vision.trainable_groups={args.lite_groups}"]
    rows = [score(args, data_of, "Lite0 as is (ImageNet)", untrained(LITE0), {"steps": 0}, readouts=("pooled",))]
    # SimCLR's views, then milder crops: a pretrained tower keeps more of what it knows (docs/benchmarks.md)
    for tag, views, note in (("", [], ""), ("-crop0.5", ["train.simclr.views.crop_scale=[0.5,1.0]"], ", crop 50-100 %")):
        folder, facts = trained(f"lite0-simclr{tag}-{args.lite_steps}x{args.batch_size}",
                                [*LITE0, *lite_budget, "train.task=simclr", "data.augment.enabled=false", *views,
                                 f"data.train={data_of[0]}&captions=none"], work)
        rows.append(score(args, data_of, f"Lite0 + simclr (last {args.lite_groups} groups){note}", loaded(folder),
                          facts, readouts=("pooled",)))
    return rows


def curve_table(args, work: Path) -> list[dict]:
    """simclr from scratch at each of `--curve-steps` (each its own run and schedule): where it plateaus."""
    data_of = emoji_data(args)
    rows = []
    for steps in sorted({int(n) for n in args.curve_steps.split(",") if n}):
        folder, facts = trained(f"scratch-simclr-{steps}x{args.batch_size}",
                                [*SCRATCH, f"train.steps={steps}", f"train.batch_size={args.batch_size}",
                                 "train.task=simclr", "data.augment.enabled=false",
                                 f"data.train={data_of[0]}&captions=none"], work)
        rows.append(score(args, data_of, f"simclr, {steps} steps", loaded(folder), facts))
    return rows


def digits_table(args, work: Path) -> list[dict]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = 64 if args.smoke else len(digits.images)
    split = n * 1000 // 1797
    pictures = [Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).convert("RGB") for img in digits.images[:n]]
    labels = digits.target[:n].astype(str)
    folder = work / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "train.jsonl"
    if not manifest.is_file():  # the training images alone: no label, no caption
        rows = []
        for i, picture in enumerate(pictures[:split]):
            picture.save(folder / f"{i:04d}.png")
            rows.append(json.dumps({"image": f"{i:04d}.png"}))
        manifest.write_text("\n".join(rows) + "\n")
    base = ["model.vision.kind=convnet", "model.vision.image_size=32", "model.vision.channels=[32,64,128]",
            "model.embed_dim=128", "train.warmup_steps=20", "train.lr=1e-3", "train.log_every=50",
            "train.simclr.views.crop_scale=[0.3,1.0]", "train.simclr.views.flip=false",
            "data.augment.enabled=false"]  # a mirrored 2 is no 2
    rows = []
    for name, model, facts in (("random init", untrained(base), {"steps": 0}),
                               ("simclr", *_loaded_run(f"digits-simclr-{args.digits_steps}x{args.batch_size}", [*base, f"data.train={manifest}", "train.task=simclr",
                                                                          f"train.steps={args.digits_steps}",
                                                                          f"train.batch_size={args.batch_size}"], work))):
        row = {"model": name, **{k: facts.get(k, "-") for k in ("steps", "cpu_s", "wall_s")}}
        both = features(model, pictures)
        for readout in ("embedding", "pooled"):
            x = both[readout]
            for key, value in probe_and_knn(x[:split], labels[:split], x[split:], labels[split:], args.seeds).items():
                row[f"{key} ({readout})"] = value
        rows.append(row)
    return rows


def _loaded_run(name, overrides, work):
    folder, facts = trained(name, overrides, work)
    return loaded(folder), facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps of each scratch row (simclr, clip, slip)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lite-steps", type=int, default=300, help="steps of SimCLR adaptation of Lite0")
    parser.add_argument("--lite-groups", type=int, default=3, help="Lite0 layer groups SimCLR trains")
    parser.add_argument("--digits-steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3, help="draws of the 16 shots per class")
    parser.add_argument("--curve-steps", default="150,300,600", help="simclr step counts of the plateau table")
    parser.add_argument("--only", default="scratch,lite,digits,curve", help="comma-separated: scratch, lite, digits, curve")
    parser.add_argument("--rows", default="random,simclr,clip,slip", help="rows of the scratch table")
    parser.add_argument("--probe-c", type=float, default=None, help="fix the probe's C (default: chosen on held-back shots)")
    parser.add_argument("--work", type=Path, default=None, help="where runs are kept (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="2 steps a row, 32 emoji a split: does it run")
    args = parser.parse_args()
    global PROBE_C
    PROBE_C = args.probe_c
    if args.smoke:
        args.steps = args.lite_steps = args.digits_steps = 2
        args.batch_size, args.seeds, args.curve_steps = 16, 1, "2"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        only = set(args.only.split(","))
        print(f"budget: {args.steps} steps of {args.batch_size} (scratch), {args.lite_steps} (Lite0), "
              f"{args.digits_steps} (digits); {args.seeds} draws of {SHOTS} shots; CPU threads {torch.get_num_threads()}")
        if "scratch" in only:
            print("\n### emoji from scratch (subgroups of held-out concepts)")
            print_table(scratch_table(args, work), ["model", "steps", "cpu_s", "wall_s", "probe_top1 (embedding)",
                                                    "knn_top1 (embedding)", "probe_top1 (pooled)", "knn_top1 (pooled)",
                                                    "text->image R@1"])
        if "lite" in only:
            print("\n### emoji, domain adaptation of ImageNet Lite0 (pooled tower features)")
            print_table(lite_table(args, work), ["model", "steps", "cpu_s", "wall_s", "probe_top1 (pooled)",
                                                 "knn_top1 (pooled)"])
        if "curve" in only:
            print("\n### simclr from scratch on emoji: steps against probe top-1 (where it plateaus)")
            print_table(curve_table(args, work), ["model", "steps", "cpu_s", "wall_s", "probe_top1 (embedding)",
                                                  "knn_top1 (embedding)", "probe_top1 (pooled)", "knn_top1 (pooled)"])
        if "digits" in only:
            print("\n### scikit-learn digits (16-shot, tested on the 797 not trained on)")
            print_table(digits_table(args, work), ["model", "steps", "cpu_s", "wall_s", "probe_top1 (embedding)",
                                                   "knn_top1 (embedding)", "probe_top1 (pooled)", "knn_top1 (pooled)"])


if __name__ == "__main__":
    main()

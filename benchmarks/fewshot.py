"""Few-shot classification curves (issue 19): every cached-feature method x shots x seeds, on emoji
subgroups (shots from training concepts, tested on the held-out concepts' images: new members of
known classes, OpenMoji and Noto art), from a trained model and from the same model with a randomly
initialised image tower, and on scikit-learn's handwritten digits. It reports; it does not assert.

    .venv/bin/python benchmarks/fewshot.py --model runs/demo          # ~5 min per curve on 2 cores
    .venv/bin/python benchmarks/fewshot.py --model runs/demo --no-random --no-digits --seeds 1
    .venv/bin/python benchmarks/fewshot.py --smoke                    # a tiny model on builtin:shapes (CI)
    .venv/bin/python benchmarks/fewshot.py --model runs/demo --features-study   # what the probe reads (~1 min)
    .venv/bin/python benchmarks/fewshot.py --model runs/demo --pseudo-study     # zs-pseudo's settings (~1 min)
    .venv/bin/python benchmarks/fewshot.py --model runs/demo --semi-study       # semi's weight (~2 min)

Reference (the issue's, in the same run): a plain probe on the model's embedding ("probe
(embedding)"), beside the probe on the default features. Also printed: the seconds of one probe fit
at the largest shot count, the curve's total seconds, and where zero-shot sits on the probe's curve
(CLIP's paper: zero-shot ~ a 4-shot linear probe).

`--features-study` chooses what the probe reads without looking at the test images: the training
concepts are split by the SHA-1 of each sample's `concept` (a quarter play the held-out concepts,
shots come from the rest), and the probe is fitted on each candidate feature set (the previous
default `embedding+pooled+layout`, with the tower's `middle` and/or `late` stage, both as one block).
`--pseudo-study` chooses zs-pseudo's pseudo-shots per class and zero-shot weight the same way (the
other three quarters' images, labels unread, are its pool); `--semi-study` chooses semi's weight of
that head beside the shots' probe (shots and pool from those three quarters).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

try:
    import visembed  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_table import print_table  # noqa: E402

METHODS = ("zeroshot", "zs-pseudo", "probe", "semi", "zs-probe", "tip", "tip-f", "knn")
EMOJI = "builtin:emoji?label=subgroup&style=all&size={size}"


def curve_rows(model, model_dir, spec: str, name: str, args, **data_options) -> list[dict]:
    from visembed.classify.curve import few_shot_curve

    result = few_shot_curve(model, model_dir, spec, shots=tuple(args.shots), seeds=args.seeds, methods=METHODS,
                            train_split=args.train_split if "emoji" in spec else "train",
                            test_split=args.test_split if "emoji" in spec else "test", progress=False, **data_options)
    reference = few_shot_curve(model, model_dir, spec, shots=tuple(k for k in args.shots if k), seeds=args.seeds,
                               methods=("probe",), features={"probe": "embedding"},
                               train_split=args.train_split if "emoji" in spec else "train",
                               test_split=args.test_split if "emoji" in spec else "test", progress=False,
                               **data_options)
    rows = []
    for method, per_shot in [*result["methods"].items(), ("probe (embedding)", reference["methods"]["probe"])]:
        features = result["features"].get(method, "embedding")
        row = {"data": name, "method": method, "features": features if method not in ("zeroshot", "tip", "tip-f") else "embedding"}
        for k in args.shots:
            cell = per_shot.get(str(k))
            if cell:
                row[f"{k}"] = f"{cell['mean']:.3f} ± {cell['std']:.3f}" if len(cell["runs"]) > 1 else f"{cell['mean']:.3f}"
        rows.append(row)
    top = max(args.shots)
    probe_fits = [s for s in result["fit_seconds"].get("probe", [])][-args.seeds:]
    zero = result["zeroshot_top1"]
    probe_curve = {int(k): v["mean"] for k, v in result["methods"].get("probe", {}).items()}
    below = [k for k, v in sorted(probe_curve.items()) if zero is not None and v <= zero]
    where = (f"above the probe at every shot count" if zero is not None and all(v < zero for v in probe_curve.values())
             else f"~ a {max(below)}-shot probe" if below else "below the 1-shot probe")
    print(f"\n{name}: {result['classes']} classes, {result['test_images']} test images; zero-shot top-1 "
          f"{zero if zero is None else round(zero, 3)} ({where}); probe fit at {top} shots: "
          f"{max(probe_fits) if probe_fits else float('nan'):.2f} s (max over seeds); curve of all methods: "
          f"{result['seconds']} s", flush=True)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "curve": result, "reference": reference}) + "\n")
    return rows


STUDY = {  # row -> the blocks the probe reads (a tuple: kinds normalised together as one block)
    "embedding+pooled+layout (previous default)": ("embedding", "pooled", "layout"),
    "+ middle": ("embedding", "pooled", "layout", "middle"),
    "+ late": ("embedding", "pooled", "layout", "late"),
    "+ middle + late, one block": ("embedding", "pooled", "layout", ("middle", "late")),
    "+ middle + late (default)": ("embedding", "pooled", "layout", "middle", "late"),
}


def concept_split(spec: str) -> dict[str, bool]:
    """Sample id -> whether its concept is in the validation quarter (SHA-1 of `concept`, mod 4 = 0)."""
    import hashlib

    from visembed.data import open_dataset

    return {s.id: int(hashlib.sha1(s.meta["concept"].encode()).hexdigest(), 16) % 4 == 0
            for s in open_dataset(spec, "train", need="label")}


def validation_concepts(model, model_dir, spec: str):
    """(features of the train split, class index of each image, shot-pool indices, validation indices,
    classes): a quarter of the training concepts play the held-out ones (never the test split)."""
    import numpy as np

    from visembed.classify.features import dataset_features
    from visembed.classify.shots import class_index

    fs = dataset_features(model, spec, "train", model_dir=model_dir, progress=False)
    held = concept_split(spec)
    is_val = np.array([held[i] for i in fs.ids])
    classes = sorted({label for label, v in zip(fs.labels, is_val) if v} & {label for label, v in zip(fs.labels, is_val) if not v})
    y = class_index(fs.labels, classes)
    shots_pool, val = np.flatnonzero(~is_val & (y >= 0)), np.flatnonzero(is_val & (y >= 0))
    print(f"\nvalidation concepts: {len(classes)} classes, {len(shots_pool)} shot candidates, {len(val)} validation "
          f"images (a quarter of the training concepts)", flush=True)
    return fs, y, shots_pool, val, classes


def features_study(model, model_dir, spec: str, args) -> list[dict]:
    """The probe on each STUDY row, shots from three quarters of the training concepts, tested on the
    fourth (never the test split): top-1, mean over seeds."""
    import numpy as np

    from visembed.classify.methods import fit_probe, normalize_blocks
    from visembed.classify.shots import draw_shots

    fs, y, shots_pool, val, classes = validation_concepts(model, model_dir, spec)
    arrays = fs.arrays()
    rows = []
    for name, blocks in STUDY.items():
        parts = [b if isinstance(b, tuple) else (b,) for b in blocks]
        x = np.concatenate([arrays[k] for part in parts for k in part], axis=1)
        widths = [sum(arrays[k].shape[1] for k in part) for part in parts]
        row = {"probe reads (validation concepts)": name}
        for k in [k for k in args.shots if k]:
            accs = []
            for seed in range(args.seeds):
                idx, _ = draw_shots(y[shots_pool], len(classes), k, seed)
                idx = shots_pool[idx]
                head = fit_probe(x[idx], y[idx], len(classes), widths=widths, seed=seed)
                scores = normalize_blocks(x[val] - head.mean, widths) @ head.weight.T + head.bias
                accs.append(float((scores.argmax(1) == y[val]).mean()))
            row[str(k)] = f"{np.mean(accs):.3f}"
        rows.append(row)
    return rows


def pool_study_inputs(model, model_dir, spec: str, method: str):
    """What the studies of the methods that read an unlabelled pool need: (class index of each image,
    pool indices, validation indices, the method's default features, their block widths, those
    features, the embeddings, the validation images' feature arrays, the class text vectors, the
    model's logit scale)."""
    from visembed.classify.fit import DEFAULT_FEATURES
    from visembed.classify.methods import block_widths
    from visembed.classify.run import model_scale
    from visembed.classify.templates import class_vectors

    fs, y, pool, val, classes = validation_concepts(model, model_dir, spec)
    kind = DEFAULT_FEATURES[method]
    arrays = fs.arrays()
    queries = {name: a[val] for name, a in arrays.items() if a is not None}
    return (y, pool, val, kind, block_widths(arrays, kind), fs.select(kind), fs.embedding, queries,
            class_vectors(model.encode_text, classes), model_scale(model))


PSEUDO_GRID = {"per_class": (2, 4, 8), "zs_weight": (0.25, 0.5, 1.0)}


def pseudo_study(model, model_dir, spec: str, args) -> list[dict]:
    """zs-pseudo's pseudo-shots per class x zero-shot weight, on the validation concepts: the images
    of the other three quarters are its unlabelled pool (labels never read). Top-1, mean over seeds
    (the seed draws the probe's held-back pseudo-shots)."""
    import numpy as np

    from visembed.classify.methods import fit_zs_pseudo

    y, pool, val, kind, widths, x, emb, queries, class_weights, scale = pool_study_inputs(model, model_dir, spec,
                                                                                          "zs-pseudo")
    zero = float(((emb[val] @ class_weights.T).argmax(1) == y[val]).mean())
    rows = [{"zs-pseudo (validation concepts)": "zero-shot (no pool)", **{f"weight {w:g}": f"{zero:.3f}"
                                                                          for w in PSEUDO_GRID["zs_weight"]}}]
    for per_class in PSEUDO_GRID["per_class"]:
        row = {"zs-pseudo (validation concepts)": f"{per_class} pseudo-shots a class"}
        for w in PSEUDO_GRID["zs_weight"]:
            accs = [float((fit_zs_pseudo(x[pool], emb[pool], class_weights, features=kind, widths=widths,
                                         per_class=per_class, zs_weight=w, seed=seed, zs_scale=scale)
                           .logits(queries).argmax(1) == y[val]).mean()) for seed in range(args.seeds)]
            row[f"weight {w:g}"] = f"{np.mean(accs):.3f}"
        rows.append(row)
    return rows


SEMI_WEIGHTS = (0.125, 0.25, 0.5, 1.0)


def semi_study(model, model_dir, spec: str, args) -> list[dict]:
    """semi's weight of the zs-pseudo head beside the shots' probe, on the validation concepts: shots
    drawn from the other three quarters, whose images (labels unread but the shots') are the pool.
    Top-1, mean over seeds; weight 0 is the plain probe."""
    import numpy as np

    from visembed.classify.methods import fit_probe, fit_semi
    from visembed.classify.shots import draw_shots

    y, pool, val, kind, widths, x, emb, queries, class_weights, scale = pool_study_inputs(model, model_dir, spec,
                                                                                          "semi")
    n_classes = len(class_weights)
    rows = []
    for weight in (0.0, *SEMI_WEIGHTS):
        row = {"semi (validation concepts)": "probe (weight 0)" if weight == 0 else f"weight {weight:g}"}
        for k in [k for k in args.shots if k]:
            accs = []
            for seed in range(args.seeds):
                idx, _ = draw_shots(y[pool], n_classes, k, seed)
                idx = pool[idx]
                head = (fit_probe(x[idx], y[idx], n_classes, features=kind, widths=widths, seed=seed) if weight == 0
                        else fit_semi(x[idx], y[idx], x[pool], emb[pool], class_weights, features=kind,
                                      widths=widths, weight=weight, seed=seed, zs_scale=scale))
                accs.append(float((head.logits(queries).argmax(1) == y[val]).mean()))
            row[str(k)] = f"{np.mean(accs):.3f}"
        rows.append(row)
    return rows


def random_tower(model_dir: Path, work: Path) -> Path:
    """The same model with its image tower (and head) randomly initialised: what the features owe to training."""
    import torch

    from visembed.checkpoint import save_model_folder
    from visembed.models import build_model, load_model_folder

    module, cfg = load_model_folder(model_dir, "cpu")
    torch.manual_seed(0)
    fresh = build_model(cfg.model, tokenizer_dir=model_dir, pretrained=False)
    state = module.state_dict()
    state.update({k: v for k, v in fresh.state_dict().items() if k.startswith(("vision.", "visual_projection."))})
    module.load_state_dict(state)
    out = work / "random-tower"
    save_model_folder(module, cfg, out)
    return out


def digits_manifest(work: Path) -> Path:
    """scikit-learn's 1,797 8x8 digit scans as PNGs and a manifest (label, split: every 4th test)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = work / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * 255 / 16).clip(0, 255).astype(np.uint8)  # dark ink on white
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")
        rows.append({"image": f"digits/{i:04d}.png", "caption": f"a handwritten digit {target}",
                     "label": f"digit {target}", "split": "test" if i % 4 == 0 else "train"})
    manifest = work / "digits.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def smoke_model(work: Path) -> Path:
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    out = work / "tiny"
    train(apply_overrides(load_preset("tiny"), ["train.steps=4", "train.checkpoint_every=4"]), out, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="A trained dual encoder folder (the demo model).")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="val+test", help="emoji: the held-out concepts (val+test)")
    parser.add_argument("--no-random", action="store_true", help="skip the randomly initialised tower")
    parser.add_argument("--no-digits", action="store_true", help="skip scikit-learn's digits")
    parser.add_argument("--json", help="append every curve as a JSON line to this file")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on builtin:shapes: does it run")
    parser.add_argument("--features-study", action="store_true",
                        help="only the study of what the probe reads, on training concepts (emoji)")
    parser.add_argument("--pseudo-study", action="store_true",
                        help="only the choice of zs-pseudo's settings, on training concepts (emoji)")
    parser.add_argument("--semi-study", action="store_true",
                        help="only the choice of semi's weight, on training concepts (emoji)")
    args = parser.parse_args()

    from visembed.models.inference import Model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.smoke:
            args.shots, args.seeds = [0, 1, 2], 1
            model_dir = smoke_model(work)
            model = Model.from_folder(model_dir, "cpu")
            rows = curve_rows(model, model_dir, "builtin:shapes?n=120&size=32", "shapes (smoke)", args)
            for run_study in (features_study, pseudo_study, semi_study):
                study = run_study(model, model_dir, "builtin:emoji?label=group&size=32&limit=200", args)
                print_table(study, list(study[0]))
        elif args.features_study or args.pseudo_study or args.semi_study:
            if args.model is None:
                parser.error("--features-study, --pseudo-study and --semi-study need --model DIR")
            model = Model.from_folder(args.model, "cpu")
            study = (features_study if args.features_study else pseudo_study if args.pseudo_study else semi_study)(
                model, args.model, EMOJI.format(size=max(64, model.image_size)), args)
            print_table(study, list(study[0]))
            print(f"\n(top-1, mean over {args.seeds} seed(s); {time.perf_counter() - started:.0f} s in all)")
            return
        else:
            if args.model is None:
                parser.error("--model DIR is needed (e.g. the demo model), or --smoke")
            model_dir = args.model
            model = Model.from_folder(model_dir, "cpu")
            spec = EMOJI.format(size=max(64, model.image_size))
            rows = curve_rows(model, model_dir, spec, "emoji subgroups", args)
            if not args.no_random:
                random_dir = random_tower(model_dir, work)
                rows += curve_rows(Model.from_folder(random_dir, "cpu"), random_dir, spec,
                                   "emoji subgroups, random image tower", args)
            if not args.no_digits:
                rows += curve_rows(model, model_dir, str(digits_manifest(work)), "sklearn digits", args)
    print_table(rows, ["data", "method", "features", *[str(k) for k in args.shots]])
    print(f"\n(top-1, mean ± std over {args.seeds} seed(s); {time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()

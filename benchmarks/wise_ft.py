"""WiSE-FT on built-in data: how held-out retrieval moves with the interpolation weight alpha.

A base model A (the `demo` recipe on OpenMoji art alone) is fine-tuned into B on the other art
style (`builtin:emoji?style=noto`, Noto Color Emoji, training concepts only); then for alpha in
0, 0.25, 0.5, 0.75, 1 the model `visembed merge A B --alpha alpha` is evaluated on the held-out
concepts (test split, never trained on) in both art styles: text->image Recall@1/5.

    python benchmarks/wise_ft.py                                   # ~10 min on 2 cores (features cached)
    python benchmarks/wise_ft.py --base-steps 300 --ft-steps 150   # quicker
    python benchmarks/wise_ft.py --base runs/openmoji-only         # an existing base model folder
    python benchmarks/wise_ft.py --smoke     # the tiny preset, 2 + 2 steps, 16 concepts a split: does it run (CI)

The base drops the demo's Chinese student (English retrieval is what is measured; its distillation
is most of the demo's time). Needs Debian's fonts-noto-color-emoji for the second style.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIZE = 96  # the demo's input size
OPENMOJI = f"builtin:emoji?size={SIZE}"
NOTO = f"builtin:emoji?style=noto&size={SIZE}"
SMOKE_LIMIT = "&limit=16"  # --smoke: the first 16 concepts of each split, and the `tiny` preset


def train_base(out: Path, steps: int, seed: int, limit: str = "", preset: str = "demo") -> Path:
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    cfg = apply_overrides(load_preset(preset), [f"data.train={OPENMOJI}{limit}", f"train.steps={steps}",
                                                f"train.seed={seed}",
                                                "model.text.cjk_student.enabled=false", f"train.checkpoint_every={steps}"])
    train(cfg, out, progress=False)
    return out


def fine_tune(base: Path, out: Path, steps: int, lr: float, seed: int, limit: str = "", preset: str = "demo") -> Path:
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    cfg = apply_overrides(load_preset(preset), [f"data.train={NOTO}{limit}", f"train.steps={steps}", f"train.lr={lr}",
                                                f"train.seed={seed}", "train.warmup_steps=20",
                                                f"train.checkpoint_every={steps}"])
    train(cfg, out, init=base, progress=False)
    return out


def measure(folder: Path, limit: str = "") -> dict:
    import visembed
    from visembed.eval.run import evaluate

    model = visembed.load(folder)
    row = {}
    for name, spec in (("openmoji", OPENMOJI), ("noto", NOTO)):
        metrics = evaluate(model, spec + limit, "test")
        row[f"{name} R@1"] = metrics["text_to_image_R@1"]
        row[f"{name} R@5"] = metrics["text_to_image_R@5"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="An existing base model folder (skips training it).")
    parser.add_argument("--base-steps", type=int, default=1000, help="Steps of the base (the demo trains 1,000).")
    parser.add_argument("--ft-steps", type=int, default=300, help="Fine-tuning steps on Noto art.")
    parser.add_argument("--ft-lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="Folder for the runs (default: a temporary one).")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset, 2 + 2 steps on 16 concepts a "
                                                             "split: does it run")
    args = parser.parse_args()
    limit, preset = (SMOKE_LIMIT, "tiny") if args.smoke else ("", "demo")
    if args.smoke:
        args.base_steps, args.ft_steps = 2, 2

    from visembed.models.merge import merge_models

    work = args.work or Path(tempfile.mkdtemp(prefix="wise_ft_"))
    base = args.base or train_base(work / "base", args.base_steps, args.seed, limit, preset)
    tuned = fine_tune(base, work / "tuned", args.ft_steps, args.ft_lr, args.seed, limit, preset)
    rows = []
    for alpha in ALPHAS:
        merged = work / f"merged-{alpha:g}"
        if not merged.exists():
            merge_models(base, tuned, alpha, merged)
        rows.append({"alpha": alpha, **measure(merged, limit)})

    base_note = (f"base: {args.base}" if args.base
                 else f"base: {preset} recipe on OpenMoji only, {args.base_steps} steps")
    print(f"\nWiSE-FT, held-out concepts (test split), text->image; {base_note}; fine-tuned on Noto art "
          f"(training concepts) for {args.ft_steps} steps at lr {args.ft_lr:g}; seed {args.seed}\n")
    columns = ["alpha", "openmoji R@1", "openmoji R@5", "noto R@1", "noto R@5"]
    print("| " + " | ".join(columns) + " | mean R@1 |")
    print("| " + " | ".join("---" for _ in range(len(columns) + 1)) + " |")
    for row in rows:
        mean = (row["openmoji R@1"] + row["noto R@1"]) / 2
        print(f"| {row['alpha']:g} | " + " | ".join(f"{row[c]:.3f}" for c in columns[1:]) + f" | {mean:.3f} |")
    print(f"\nruns in {work}")


if __name__ == "__main__":
    main()

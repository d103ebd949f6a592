"""CUDA smoke test and throughput: the training loop (through the task seam) with bf16 autocast on a
GPU, for each image tower kind, plus EfficientNet-Lite0 inference against timm's implementation of
the same network in the same process. Not a test: CI has no GPU. Prints a table.

    python benchmarks/cuda_smoke.py [--out DIR]

Needs a CUDA device; uses only data that ships inside visembed (`builtin:shapes`), a BPE text tower
(no pretrained text weights), and the EfficientNet-Lite0 weights package.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch


def _train_row(name: str, overrides: list[str], out: Path) -> dict:
    from safetensors.torch import load_file

    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    cfg = apply_overrides(load_preset("tiny"), ["data.train=builtin:shapes?n=8192", "train.batch_size=256",
                                                "train.steps=120", "train.warmup_steps=10", "train.checkpoint_every=60",
                                                "train.log_every=20", "data.num_workers=8"] + overrides)
    started = time.perf_counter()
    final = train(cfg, out / name, progress=False)
    wall = time.perf_counter() - started
    logs = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    rates = [line["samples_per_s"] for line in logs if "samples_per_s" in line][1:]  # the first interval warms up
    # resume on CUDA: drop the last checkpoint and the final weights, continue, compare
    whole = load_file(str(out / name / "model.safetensors"))
    (out / name / "model.safetensors").unlink()
    shutil.rmtree(out / name / "checkpoints" / "step_00000120")
    train(cfg, out / name, resume=True, progress=False)
    resumed = load_file(str(out / name / "model.safetensors"))
    drift = max(float((whole[k].float() - resumed[k].float()).abs().max()) for k in whole)
    return {"run": name, "loss": round(final["loss"], 4), "finite": math.isfinite(final["loss"]),
            "val_R@1": round(final.get("val_text_to_image_R@1", float("nan")), 3),
            "samples/s": round(sum(rates) / max(len(rates), 1)), "wall_s": round(wall), "resume max |dw|": f"{drift:.1e}"}


def _images_per_s(model, batch: int, size: int, steps: int = 20) -> float:
    x = torch.randn(batch, 3, size, size, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def _inference_rows(batch: int = 256, size: int = 224) -> list[dict]:
    from visembed.models.vision_efficientnet import EfficientNetLite

    ours = EfficientNetLite("lite0").cuda().eval()
    rows = [{"run": f"EfficientNet-Lite0 fwd {size}px b{batch}, visembed eager", "img/s": round(_images_per_s(ours, batch, size))}]
    rows.append({"run": "  visembed, torch.compile", "img/s": round(_images_per_s(torch.compile(ours), batch, size))})
    try:
        import timm

        ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).cuda().eval()
        rows.append({"run": "  timm tf_efficientnet_lite0 (same net, TF padding), eager",
                     "img/s": round(_images_per_s(ref, batch, size))})
        rows.append({"run": "  timm, torch.compile", "img/s": round(_images_per_s(torch.compile(ref), batch, size))})
    except ImportError as err:
        rows.append({"run": f"  timm: not run ({err})"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Run folders (default: a temporary folder).")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    out = args.out or Path(tempfile.mkdtemp(prefix="visembed-cuda-"))
    effnet = ["model.vision.kind=efficientnet_lite", "model.vision.image_size=224", "model.vision.head=mlp",
              "data.augment.enabled=false", "model.vision.mean=[0.498,0.498,0.498]", "model.vision.std=[0.502,0.502,0.502]"]
    runs = [
        ("vit (tiny preset), bf16", []),
        ("convnet 64px, bf16", ["model.vision.kind=convnet", "model.vision.image_size=64"]),
        ("efficientnet_lite0 224px locked + feature cache", effnet + ["model.vision.feature_cache=20000"]),
        ("efficientnet_lite0 224px, last 3 groups train", effnet + ["model.vision.trainable_groups=3"]),
    ]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for name, overrides in runs:
        rows.append(_train_row(name.split()[0] + str(len(rows)), overrides, out) | {"run": name})
        print(rows[-1], flush=True)
    rows += _inference_rows()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()

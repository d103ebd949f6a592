"""Training speed: the model-only step vs the full loop, eager vs compiled towers, visembed vs OpenCLIP.

    .venv/bin/python benchmarks/train_speed.py                        # clip-tiny, batch 128, CPU
    .venv/bin/python benchmarks/train_speed.py --preset vit-b16 --batch-size 1024 --device cuda
    .venv/bin/python benchmarks/train_speed.py --smoke                # tiny preset, 2 steps: does it run (CI)

Rows, all in this process on this machine (samples/s after warm-up, median of the timed steps):

- **step**: what one optimiser step costs the model alone: pixels already on the device, captions
  already tokenised; the task's forward and backward (`ContrastiveTask.backward`), gradient
  clipping and fused AdamW, as the loop runs them.
- **full loop**: `visembed.train.loop.train` on a folder of JPEG files with captions written here
  (`--source-size` px, so each image is decoded and resized as real data is), logging every step;
  the rate is the loop's own `samples_per_s` per step (loading, augmentation, step).
- eager and compiled (`train.compile=on`, `visembed/train/compile.py`); a compiled row also gives
  the seconds its first steps spent compiling (what a run pays once). Step rows (visembed's and
  OpenCLIP's together) alternate step by step after their warm-up, so load from elsewhere on a
  shared machine hits them alike; the last lines give visembed's step over OpenCLIP's.
- OpenCLIP's `CLIP` of the same architecture with its `ClipLoss` (eager, and `torch.compile`d),
  where `open_clip` imports; where it does not, its rows say why (PyPI's torchvision does not import
  beside the CPU torch wheel: see `benchmarks/train_throughput.py` for the venv where it does).

FLOPs of one step (forward and backward) are counted with `torch.utils.flop_counter.FlopCounterMode`;
MFU = counted FLOPs per second / the device's peak (bf16 dense: H100 and H200 989 TFLOP/s, A100 312;
`--peak-tflops` for others). On a CPU the achieved TFLOP/s is printed and MFU is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from visembed.config import apply_overrides, load_preset
from visembed.data import Sample
from visembed.models.bpe_tokenizer import train_bpe_tokenizer
from visembed.train.compile import compile_towers
from visembed.train.optim import build_optimizer
from visembed.train.tasks import build_task

WORDS = "red green blue yellow small large circle square triangle star left right above below of a the and".split()
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense, per the vendor's data sheets


def captions(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def autocast_for(device: torch.device):
    """The loop's `precision=auto`: bf16 autocast on CUDA, fp32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- the model-only step ------------------------------------------------------------------------


def visembed_step(cfg, batch: int, device: torch.device, compiled: bool):
    """-> (a closure running one optimiser step of visembed's contrastive task, the model)."""
    rng = random.Random(0)
    task = build_task(cfg, 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(captions(2000, rng), cfg.model.text.vocab_size, tmp)
        model = task.build_model(cfg, Path(tmp), pretrained=True)
    model.to(device).train()
    if compiled:
        compile_towers(model)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    size = cfg.model.vision.image_size
    texts = captions(batch, rng)
    micro = {"pixels": torch.rand(batch, 3, size, size, device=device),
             **task.fields([Sample(id=str(i), image=b"", caption=t) for i, t in enumerate(texts)])}
    autocast = autocast_for(device)

    def step():
        opt.zero_grad(set_to_none=True)
        task.backward(model, [micro], autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    return step, (lambda: task.backward(model, [micro], autocast))


def openclip_step(cfg, batch: int, device: torch.device, compiled: bool):
    """-> (one step of OpenCLIP's CLIP of the same architecture, forward+backward) or raises ImportError."""
    import open_clip

    v, t = cfg.model.vision, cfg.model.text
    model = open_clip.CLIP(
        embed_dim=cfg.model.embed_dim,
        vision_cfg={"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.depth,
                    "head_width": v.width // v.heads},
        text_cfg={"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                  "heads": t.heads, "layers": t.depth}).to(device).train()
    if compiled:
        model = torch.compile(model)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    pixels = torch.rand(batch, 3, v.image_size, v.image_size, device=device)
    ids = torch.randint(1, t.vocab_size, (batch, t.context_length), device=device)
    autocast = autocast_for(device)

    def forward_backward():
        with autocast():
            out = model(pixels, ids)
            image, text, scale = (out["image_features"], out["text_features"], out["logit_scale"]) \
                if isinstance(out, dict) else out[:3]
            loss = loss_fn(image, text, scale)
        loss.backward()

    def step():
        opt.zero_grad(set_to_none=True)
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    return step, forward_backward


def time_steps(steps: dict, device: torch.device, rounds: int, warmup: int) -> dict[str, tuple[float, float]]:
    """{name: (median seconds per step, seconds the warm-up took beyond `warmup` such steps: compiling,
    for a compiled step)}. Each step warms up on its own, then the steps alternate round by round, so
    that load from other processes on a shared machine hits every row alike."""
    warm = {}
    for name, step in steps.items():
        sync(device)
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        sync(device)
        warm[name] = time.perf_counter() - start
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        out[name] = (median, max(0.0, warm[name] - warmup * median))
    return out


def counted_flops(forward_backward) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward()
    return float(counter.get_total_flops())


# ---- the full loop ------------------------------------------------------------------------------


def write_jpeg_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """`n` random-noise-and-shapes JPEG files of `size` px with caption files: decoding costs what a
    real photo of that size costs."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(captions(n, rng)):
        image = Image.fromarray(noise.integers(0, 256, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.randrange(size), rng.randrange(size)
            draw.ellipse([x, y, x + size // 4, y + size // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(root / f"{i:06d}.jpg", quality=90)
        (root / f"{i:06d}.txt").write_text(text, encoding="utf-8")
    return root


def loop_rate(cfg, data: Path, val: Path, out: Path, steps: int, warmup: int, compiled: bool,
              workers: int | None) -> tuple[float, float]:
    """(median samples/s of the loop's steps after `warmup`, seconds of the first steps beyond that
    rate: compiling and the loader's start)."""
    from visembed.train.loop import train

    overrides = [f"data.train={data}", f"data.val={val}", f"train.steps={warmup + steps}", "train.log_every=1",
                 f"train.checkpoint_every={warmup + steps}", "train.warmup_steps=1",
                 f"train.compile={'on' if compiled else 'off'}"]
    if workers is not None:
        overrides.append(f"data.num_workers={workers}")
    train(apply_overrides(cfg, overrides), out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r and not r.get("final")]
    steady = statistics.median(rates[warmup:])
    batch = cfg.train.batch_size
    first = sum(batch / max(r, 1e-9) for r in rates[:warmup])
    return steady, max(0.0, first - warmup * batch / steady)


# ---- the table ----------------------------------------------------------------------------------


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="clip-tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compiling happens here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="JPEG files the loop reads (default: 2 batches)")
    parser.add_argument("--source-size", type=int, default=None, help="their size in px (default: 1.25 x the model's)")
    parser.add_argument("--workers", type=int, default=None, help="data.num_workers of the loop rows")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--only", default="step,loop,openclip", help="which groups of rows to run")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, batch 8, 2 steps: does it run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.batch_size, args.steps, args.warmup = "tiny", 8, 2, 1
    device = torch.device(args.device)
    cfg = apply_overrides(load_preset(args.preset), [f"train.batch_size={args.batch_size}"])
    size = cfg.model.vision.image_size
    groups = set(args.only.split(","))
    modes = [False] if args.no_compile else [False, True]
    peak = peak_tflops(device, args.peak_tflops)
    rows = []

    def add(name, kind, seconds, extra_s, flops):
        rate = args.batch_size / seconds
        row = {"implementation": name, "kind": kind, "samples/s": round(rate, 1), "compile/start s": round(extra_s, 1)}
        if flops:
            achieved = flops / seconds / 1e12
            row["TFLOP/s"] = round(achieved, 3)
            row["MFU"] = f"{100 * achieved / peak:.1f} %" if peak else "-"
        rows.append(row)

    flops, steps, step_flops, not_run = None, {}, {}, None
    if "step" in groups:
        for compiled in modes:
            torch.manual_seed(0)
            step, forward_backward = visembed_step(cfg, args.batch_size, device, compiled)
            if flops is None:
                flops = counted_flops(forward_backward)  # (eager: the compiled graph does the same work)
            name = f"visembed {'compiled' if compiled else 'eager'}"
            steps[name], step_flops[name] = step, flops
    if "openclip" in groups:
        try:
            import open_clip  # noqa: F401
        except Exception as exc:  # ImportError, or torchvision's operator registration failing
            not_run = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
        else:
            openclip_flops = None
            for compiled in modes:
                torch.manual_seed(0)
                step, forward_backward = openclip_step(cfg, args.batch_size, device, compiled)
                if openclip_flops is None:
                    openclip_flops = counted_flops(forward_backward)
                name = f"OpenCLIP {'compiled' if compiled else 'eager'}"
                steps[name], step_flops[name] = step, openclip_flops
    # every step row, visembed's and OpenCLIP's, in one interleaved timing: their ratio is what counts
    for name, (seconds, extra) in time_steps(steps, device, args.steps, args.warmup).items():
        add(name, "step", seconds, extra, step_flops[name])
    del steps
    if "loop" in groups and flops is None:  # (run alone: the step's FLOPs still give the loop's TFLOP/s)
        flops = counted_flops(visembed_step(cfg, args.batch_size, device, False)[1])
    if "loop" in groups:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            n = args.images or 2 * args.batch_size
            data = write_jpeg_folder(tmp / "train", n, args.source_size or size * 5 // 4)
            val = write_jpeg_folder(tmp / "val", 8, size, seed=1)
            for compiled in modes:
                rate, extra = loop_rate(cfg, data, val, tmp / f"run-{compiled}", args.steps, args.warmup, compiled,
                                        args.workers)
                add(f"visembed {'compiled' if compiled else 'eager'}", "full loop", args.batch_size / rate, extra, flops)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.preset}, batch {args.batch_size}, {size} px, {name}, torch {torch.__version__}; median of "
          f"{args.steps} steps after {args.warmup} warm-up; all rows in this process"
          + (f"; step FLOPs (forward + backward, counted): {flops / 1e9:.1f} GFLOP" if flops else ""))
    columns = ["implementation", "kind", "samples/s", "compile/start s", "TFLOP/s", "MFU"]
    if not_run:
        rows.append({"implementation": "OpenCLIP", "kind": f"not run (open_clip does not import here: {not_run})"})
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |")
    steps = {r["implementation"]: r["samples/s"] for r in rows if r.get("kind") == "step"}
    loops = {r["implementation"]: r["samples/s"] for r in rows if r.get("kind") == "full loop"}
    for impl in loops:
        if impl in steps:
            print(f"\n{impl}: full loop at {100 * loops[impl] / steps[impl]:.0f} % of its step")
    for mode in ("eager", "compiled"):
        if f"visembed {mode}" in steps and f"OpenCLIP {mode}" in steps:
            print(f"\nvisembed {mode} step: {steps[f'visembed {mode}'] / steps[f'OpenCLIP {mode}']:.2f}x OpenCLIP {mode}")


if __name__ == "__main__":
    main()

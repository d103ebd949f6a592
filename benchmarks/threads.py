"""Sharing the machine: a small training step and an encode, alone and beside one busy process.

    .venv/bin/python benchmarks/threads.py              # widths 128 and 256, 6 timed steps each
    .venv/bin/python benchmarks/threads.py --smoke      # width 64, 2 steps, fewer settings: does it run (CI)

Each setting runs in a fresh process (OpenMP reads OMP_WAIT_POLICY and the thread count once, when
torch loads): torch threads 1 or 2, OMP_WAIT_POLICY unset (libgomp spins a while at each barrier)
or PASSIVE (threads sleep at once), and visembed's own choice (`visembed.threads`: what the CLI
does at start, the `auto` of `--threads` / VISEMBED_THREADS: OMP_WAIT_POLICY=PASSIVE when other
processes keep half a core busy, torch's thread count). Each is timed alone, then beside a
busy single-threaded process (`while True: pass`, started here and stopped after) — the two
conditions back to back, so that load from elsewhere on a shared machine hits both alike.

The workload: visembed's contrastive step (ViT and text transformer, 2 layers, batch 32, 32 px,
AdamW) at width 128 and 256, and `encode_image` of 64 images (width 256, no grad). Ratios are
what to read: "beside busy / alone" for each setting, and each setting alone against today's
default (2 threads, policy unset). The load average at the start and end is printed with the
table: on a machine others use, "alone" is not quiet, and the figures say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---- the worker: one setting, in its own process ------------------------------------------------


def worker(widths: list[int], steps: int, use_policy: bool) -> dict:
    chosen = None
    if use_policy:
        from visembed.threads import configure_threads

        choice = configure_threads(None)  # before torch loads, as `visembed` does
        chosen = f"wait {choice.wait_policy or 'unset'} (busy elsewhere {choice.busy_elsewhere:.1f} cores)"
    import contextlib
    import random
    import tempfile

    import torch

    from visembed.config import apply_overrides, load_preset
    from visembed.data import Sample
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer
    from visembed.train.optim import build_optimizer
    from visembed.train.tasks import build_task

    words = "red green blue small large circle square left right of a the".split()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(400)]
    result = {"threads": torch.get_num_threads(), "chosen": chosen}
    for width in widths:
        torch.manual_seed(0)
        cfg = apply_overrides(load_preset("tiny"), [
            f"model.vision.width={width}", f"model.text.width={width}", f"model.embed_dim={width}",
            "model.vision.heads=4", "model.text.heads=4", "train.batch_size=32"])
        task = build_task(cfg, 0, 1)
        with tempfile.TemporaryDirectory() as tmp:
            train_bpe_tokenizer(texts, cfg.model.text.vocab_size, tmp)
            model = task.build_model(cfg, Path(tmp), pretrained=True).train()
        opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
        micro = {"pixels": torch.rand(32, 3, 32, 32),
                 **task.fields([Sample(id=str(i), image=b"", caption=t) for i, t in enumerate(texts[:32])])}

        def step():
            opt.zero_grad(set_to_none=True)
            task.backward(model, [micro], contextlib.nullcontext)
            opt.step()

        result[f"step w{width}"] = _median_seconds(step, steps)
        if width == max(widths):
            model.eval()
            pixels = torch.rand(64, 3, 32, 32)

            def encode():
                with torch.no_grad():
                    model.encode_image(pixels)

            result[f"encode w{width}"] = _median_seconds(encode, steps)
    return result


def _median_seconds(fn, steps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- the parent: settings x (alone, beside a busy process) --------------------------------------


def run_setting(threads: int | None, wait: str | None, args, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "VISEMBED_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if wait is not None:
        env["OMP_WAIT_POLICY"] = wait
    spinner = None
    if busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # running before the worker looks at the machine
    try:
        command = [sys.executable, __file__, "--worker", "--widths", *map(str, args.widths), "--steps", str(args.steps)]
        if threads is None:
            command.append("--policy")
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="width 64, 2 steps, three settings: does it run (CI)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.widths, args.steps, args.policy)))
        return
    settings = [(2, None), (1, None), (2, "PASSIVE"), (1, "PASSIVE"), (None, None)]  # (None: visembed's choice)
    if args.smoke:
        args.widths, args.steps, settings = [64], 2, [(2, None), (1, None), (None, None)]
    load_before = os.getloadavg()
    results = {}
    for threads, wait in settings:
        results[(threads, wait)] = {busy: run_setting(threads, wait, args, busy) for busy in (False, True)}
    load_after = os.getloadavg()

    workloads = [k for k in results[settings[0]][False] if k.startswith(("step", "encode"))]
    baseline = results[(2, None)][False]
    print(f"{os.cpu_count()} CPUs; load average (1, 5, 15 min) {tuple(round(x, 2) for x in load_before)} before, "
          f"{tuple(round(x, 2) for x in load_after)} after; median of {args.steps} steps; seconds per step, and "
          "ratios: beside / alone, and alone / today's default alone")
    columns = ["setting", "threads alone / beside"]
    for w in workloads:
        columns += [f"{w} alone s", f"{w} beside s", f"{w} beside/alone", f"{w} alone vs default"]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for (threads, wait), pair in results.items():
        alone, beside = pair[False], pair[True]
        name = "visembed auto" if threads is None else f"{threads} thread{'s' if threads > 1 else ''}"
        name += f", OMP_WAIT_POLICY={wait or 'unset'}" if threads is not None else ""
        cells = [name, f"{alone['threads']} / {beside['threads']}"]
        for w in workloads:
            cells += [f"{alone[w]:.4f}", f"{beside[w]:.4f}", f"{beside[w] / alone[w]:.2f}x",
                      f"{alone[w] / baseline[w]:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    auto = results.get((None, None))
    if auto:
        print(f"\nvisembed auto chose: alone {auto[False]['chosen']}; beside the busy process {auto[True]['chosen']}")
    print("\nvs today's default beside a busy process (default alone = 1.00):")
    for (threads, wait), pair in results.items():
        name = "visembed auto" if threads is None else f"{threads} threads, wait {wait or 'unset'}"
        print(f"- {name}: " + ", ".join(f"{w} {pair[True][w] / baseline[w]:.2f}x" for w in workloads))


if __name__ == "__main__":
    main()

"""The captioner's instruct stage: the whole LM against LoRA adapters (model.captioner.lora_rank).

For each LM and rank: the parameters that learn (projectors included), and the CPU seconds of one
optimisation step (forward, backward, AdamW; the frozen image tower included; CPU time of all
threads, and wall time) on one fixed batch of
`builtin:shapes`, median of --steps after one warm-up step. Needs peft.

    python benchmarks/captioner_lora.py                       # trains a tiny dual encoder first
    python benchmarks/captioner_lora.py --vision runs/demo --lms gpt2 minilm --ranks 0 8 --batch-size 32
    python benchmarks/captioner_lora.py --smoke              # batch 4, one step, rank 0 and 4: does it run (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

DATA = "builtin:shapes?n=256"


def tiny_vision(out: Path, steps: int = 30) -> Path:
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    train(apply_overrides(load_preset("tiny"), [f"train.steps={steps}", f"train.checkpoint_every={steps}"]), out,
          progress=False)
    return out


def measure(vision: Path, lm: str, rank: int, batch_size: int, steps: int, work: Path) -> tuple[int, float, float]:
    """(parameters that learn, median CPU seconds and wall seconds per step) of the instruct stage."""
    from visembed.data import SkipCounter, open_dataset
    from visembed.train.captioner_run import captioner_config
    from visembed.train.loader import StepLoader
    from visembed.train.optim import build_optimizer
    from visembed.train.tasks.captioning import CaptioningTask

    cfg = captioner_config(vision, DATA, lm=lm, lora=rank, batch_size=batch_size)
    task = CaptioningTask(cfg)
    dataset = open_dataset(DATA, "train")
    assets = work / f"{lm}-{rank}"
    task.prepare_assets(dataset, assets)
    model = task.build_model(cfg, assets, pretrained=True)
    task.configure(model)
    model.train()
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    learning = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loader = StepLoader(dataset, cfg, 0, 1, 0, task)
    batch = [{**micro, "pixels": micro["pixels"].float() / 255} for micro in loader.load(0, SkipCounter())]
    loader.close()
    cpu, wall = [], []
    for _ in range(steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        task.backward(model, batch, contextlib.nullcontext)
        optimizer.step()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return learning, statistics.median(cpu[1:]), statistics.median(wall[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision", type=Path, help="a dual encoder folder (default: train a tiny one)")
    parser.add_argument("--lms", nargs="+", default=["gpt2"], help="gpt2, minilm or local transformers folders")
    parser.add_argument("--ranks", nargs="+", type=int, default=[0, 8], help="0: the whole LM")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--smoke", action="store_true", help="batch 4, one step, ranks 0 and 4, a 2-step tiny dual "
                                                             "encoder: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.steps, args.ranks = 4, 1, [0, 4]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vision = args.vision or tiny_vision(work / "vision", steps=2 if args.smoke else 30)
        print(f"instruct stage, batch {args.batch_size}, {torch.get_num_threads()} CPU threads")
        print("| LM | LoRA rank | learning params | CPU s/step | wall s/step |\n| --- | --- | --- | --- | --- |")
        for lm in args.lms:
            for rank in args.ranks:
                learning, cpu, wall = measure(vision, lm, rank, args.batch_size, args.steps, work)
                print(f"| {lm} | {rank or 'full'} | {learning:,} | {cpu:.3f} | {wall:.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""Does the loader feed the step? samples/s of the whole training loop (`visembed.train`, loading
included) against the same loop fed one cached batch (the model-only step), on WebDataset shards
that `visembed shards` wrote.

    .venv/bin/python benchmarks/loader_speed.py [--images 2048] [--steps 12] [--rounds 2]
    .venv/bin/python benchmarks/loader_speed.py --smoke       # tiny sizes, one round: does it run (CI)

Rows, all in this process, on this machine, in rounds (each round runs every row once, every other
round in reverse order, so a steady rise or fall of the machine's load hits every row alike; the
median over rounds is shown):

- **model-only step**: `train()` whose loader hands out the first step's micro-batches again and
  again (augmentation, forward, backward, clipping and AdamW; no reading or decoding);
- **new loader, N workers**: `train()` as users run it, `data.num_workers=N` worker processes
  (0: each step loaded in the training process when due);
- **old loader, N threads**: the loader this one replaced (shards streamed in the training process,
  decode in N threads, one step loaded ahead), kept below as the reference.

samples/s is the loop's own figure (`metrics.jsonl`, over `--steps` / 3 steps per interval), the
first interval (start-up, the first step's load) left out. Preset `clip-tiny` (ViT 64 px, batch 128).

A second table needs no quiet machine: CPU seconds (`time.process_time`, all threads of this
process) per sample of loading a step in this process (read, decode, resize, tokenise) against the
model step (augmentation, forward, backward, AdamW), from shards of 64 and of 256 px. Loading's
share of the CPU work bounds what in-process loading (0 workers) can cost the loop on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch

from visembed.config import apply_overrides, load_preset
from visembed.data import SkipCounter, collate
from visembed.data.shard_writer import write_shards
from visembed.train import loop
from visembed.train.loader import StepLoader
from visembed.train.plan import StreamPlan, micro_batches

try:
    from markdown_table import print_table
except ImportError:  # run from elsewhere than benchmarks/
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from markdown_table import print_table


class CachedLoader(StepLoader):
    """The model-only step: the first step's micro-batches, loaded once, for every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cached = None

    def load(self, step, skipped):
        if self.cached is None:
            self.cached = super().load(self.first, skipped)
        return self.cached


class OldThreadLoader:
    """The loader before worker processes (visembed up to this change): the stream read in this
    process, each sample decoded in a thread pool of `data.num_workers`, one step loaded ahead."""

    def __init__(self, dataset, cfg, rank, world, position, task):
        tc = cfg.train
        self.batch_size, self.accum, self.image_size = tc.batch_size, tc.accum_steps, cfg.model.vision.image_size
        self.per_step, self.rank, self.world = tc.batch_size * tc.accum_steps, rank, world
        self.stream = StreamPlan(dataset, position)
        workers = cfg.data.num_workers
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None
        self.ahead = ThreadPoolExecutor(1) if workers > 0 else None
        self.pending: dict = {}
        self.need, self.fields = task.needs.sample, task.fields

    def _decode_one(self, sample):
        own = SkipCounter()
        pixels, kept = collate([sample], self.image_size, own, need=self.need)
        return pixels, kept, own

    def _load(self, step):
        counter, batch = SkipCounter(), []
        samples = self.stream.take(step * self.per_step, self.per_step)
        for share in micro_batches(samples, self.batch_size, self.accum, self.rank, self.world):
            if self.pool is None:
                pixels, kept = collate(share, self.image_size, counter, need=self.need)
            else:
                decoded = list(self.pool.map(self._decode_one, share))
                for _, _, own in decoded:
                    counter.update(own)
                kept = [s for _, samples_, _ in decoded for s in samples_]
                pixels = torch.cat([p for p, samples_, _ in decoded if samples_])
            batch.append({"pixels": pixels, **self.fields(kept)})
        return batch, counter

    def prefetch(self, step):
        if self.ahead is not None and step not in self.pending:
            self.pending[step] = self.ahead.submit(self._load, step)

    def load(self, step, skipped):
        future = self.pending.pop(step, None)
        batch, counter = future.result() if future is not None else self._load(step)
        skipped.update(counter)
        return batch

    def close(self):
        for pool in (self.pool, self.ahead):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def rate(cfg, out: Path, loader_class) -> float:
    """samples/s of `train()` after its first logging interval."""
    with mock.patch.object(loop, "StepLoader", loader_class):
        loop.train(cfg, out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r and not r.get("final")]
    return statistics.mean(rates[1:]) if len(rates) > 1 else rates[0]


def cpu_share(work: Path, images: int, px: int, batch_size: int, steps: int) -> dict:
    """CPU-ms per sample of loading (0 workers) and of the model step, from shards of `px` pixels."""
    import contextlib
    import time

    from visembed.data import build_train_augment, open_dataset
    from visembed.train.optim import build_optimizer
    from visembed.train.tasks import build_task

    shards = work / f"cpu-{px}"
    write_shards(f"builtin:shapes?n={images * 5 // 4}&size={px}", shards, size=px, shard_size=512, progress=False)
    cfg = apply_overrides(load_preset("clip-tiny"), [f"data.train={shards}", f"train.batch_size={batch_size}"])
    task = build_task(cfg, 0, 1)
    dataset = open_dataset(str(shards), "train", need=task.needs.sample)
    task.prepare_assets(dataset, shards)
    model = task.build_model(cfg, shards, pretrained=True)
    task.configure(model)
    model.train()
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.layer_decay)
    augment = build_train_augment(cfg.data.augment)
    loader = StepLoader(dataset, cfg, 0, 1, 0, task)
    load_s = step_s = 0.0
    samples = 0
    for step in range(steps):
        start = time.process_time()
        batch = loader.load(step, SkipCounter())
        load_s += time.process_time() - start
        start = time.process_time()
        torch.manual_seed(step)
        with torch.no_grad():
            batch = [{**micro, "pixels": augment(micro["pixels"].float() / 255)} for micro in batch]
        optimizer.zero_grad(set_to_none=True)
        task.backward(model, batch, contextlib.nullcontext)
        optimizer.step()
        step_s += time.process_time() - start
        samples += sum(len(micro["pixels"]) for micro in batch)
    return {"shards": f"{px} px", "loading CPU-ms/sample": round(1000 * load_s / samples, 2),
            "model step CPU-ms/sample": round(1000 * step_s / samples, 2),
            "loading's share": f"{load_s / (load_s + step_s):.1%}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="images in the shards")
    parser.add_argument("--steps", type=int, default=12, help="steps per run (logged every steps/3)")
    parser.add_argument("--rounds", type=int, default=2, help="every row once per round; the median is shown")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="clip-tiny", help="e.g. vit-b16 on a GPU node")
    parser.add_argument("--px", type=int, default=64, help="shorter side of the shards' images")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.steps, args.rounds, args.batch_size, args.workers = 96, 3, 1, 8, [0, 1]

    work = Path(tempfile.mkdtemp(prefix="loader-speed-"))
    shards = work / "shards"
    # builtin:shapes keeps 80 % of its scenes for train: ask for enough
    write_shards(f"builtin:shapes?n={args.images * 5 // 4}&size={args.px}", shards, size=args.px, shard_size=512,
                 progress=False)
    base = ["data.train=" + str(shards), f"train.batch_size={args.batch_size}", f"train.steps={args.steps}",
            f"train.log_every={max(1, args.steps // 3)}", "train.eval_every=0", "train.checkpoint_every=0",
            "train.warmup_steps=1", "data.val=builtin:shapes?n=40"]
    rows = {"model-only step": ("-", CachedLoader, 0)}
    for n in args.workers:
        rows[f"new loader, {n} worker process(es)"] = ("new", StepLoader, n)
    for n in sorted({0, max(args.workers)}):
        rows[f"old loader, {n} decode thread(s)"] = ("old", OldThreadLoader, n)
    measured: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(args.rounds):
        order = list(rows.items()) if round_ % 2 == 0 else list(rows.items())[::-1]  # drift in load cancels out
        for name, (_, loader_class, workers) in order:
            cfg = apply_overrides(load_preset(args.preset), [*base, f"data.num_workers={workers}"])
            measured[name].append(rate(cfg, work / f"run-{round_}-{len(measured[name])}-{abs(hash(name))}",
                                       loader_class))
    model_only = statistics.median(measured["model-only step"])
    table = []
    for name, values in measured.items():
        median = statistics.median(values)
        table.append({"run": name, "samples/s": round(median, 1), "of model-only step": f"{median / model_only:.0%}",
                      "rounds": ", ".join(f"{v:.1f}" for v in values)})
    shares = [cpu_share(work, args.images, px, args.batch_size, max(2, args.steps * 2 // 3)) for px in (64, 256)]
    print(f"\n{args.preset}, batch {args.batch_size}, {args.images} images of {args.px} px in shards; torch threads "
          f"{torch.get_num_threads()}, cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end")
    print_table(table, ["run", "samples/s", "of model-only step", "rounds"])
    print("\nCPU work per sample (clip-tiny on the CPU), loading in this process vs the model step:")
    print_table(shares, ["shards", "loading CPU-ms/sample", "model step CPU-ms/sample", "loading's share"])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

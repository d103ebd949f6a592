"""Loading a step's samples: this rank's share of each micro-batch, decoded, collated and made into
what the task reads (its `fields`: token ids, labels ...).

What is loaded depends on the step alone (see `plan.py`), so loading ahead in background threads
(`data.num_workers` > 0) changes nothing but speed. Nothing here draws random numbers: what is
drawn per step (augmentations, a captioner's choice of conversation) is drawn in the step, from
the step's seeded RNG.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from visembed.config import RunConfig
from visembed.data import SkipCounter, collate, epoch_order
from visembed.train.batch import MicroBatch
from visembed.train.plan import MapPlan, StreamPlan, micro_batches


class StepLoader:
    """`load(step)` -> this rank's micro-batches, each {"pixels": uint8 (b, 3, S, S), **task.fields(the
    b samples kept)}: the samples without what the task needs (`task.needs`) or whose image does not
    decode are skipped and counted. With `data.num_workers` > 0, `prefetch(step + 1)` loads the next
    step while this one trains."""

    def __init__(self, dataset, cfg: RunConfig, rank: int, world: int, position: int, task):
        tc = cfg.train
        self.dataset, self.rank, self.world = dataset, rank, world
        self.batch_size, self.accum, self.image_size = tc.batch_size, tc.accum_steps, cfg.model.vision.image_size
        self.per_step = tc.batch_size * tc.accum_steps
        if getattr(dataset, "streaming", False):
            self.stream, self.plan = StreamPlan(dataset, position), None
        else:
            self.stream, self.plan = None, MapPlan(len(dataset), tc.seed, epoch_order)
        workers = cfg.data.num_workers
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None
        self.ahead = ThreadPoolExecutor(1) if workers > 0 else None
        self.pending: dict[int, object] = {}
        self.need, self.fields = task.needs.sample, task.fields

    def _samples(self, step: int) -> list:
        start = step * self.per_step
        if self.stream is not None:
            return self.stream.take(start, self.per_step)
        return [self.dataset[i] for i in self.plan.indices(start, self.per_step)]

    def _load(self, step: int) -> tuple[list[MicroBatch], SkipCounter]:
        counter = SkipCounter()
        shares = micro_batches(self._samples(step), self.batch_size, self.accum, self.rank, self.world)
        batch = []
        for share in shares:
            if self.pool is None:
                pixels, kept = collate(share, self.image_size, counter, need=self.need)
            else:  # decode in threads, one counter per sample (Counter is not thread-safe)
                decoded = list(self.pool.map(self._decode_one, share))
                for _, _, own in decoded:
                    counter.update(own)
                kept = [sample for _, samples, _ in decoded for sample in samples]
                pixels = (torch.cat([p for p, samples, _ in decoded if samples]) if kept else
                          torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8))
            # an empty share trains nothing (the loop skips the step): the task is not asked about it
            batch.append({"pixels": pixels, **(self.fields(kept) if kept else {})})
        return batch, counter

    def _decode_one(self, sample) -> tuple[torch.Tensor, list, SkipCounter]:
        own = SkipCounter()
        pixels, kept = collate([sample], self.image_size, own, need=self.need)
        return pixels, kept, own

    def prefetch(self, step: int) -> None:
        if self.ahead is not None and step not in self.pending:
            self.pending[step] = self.ahead.submit(self._load, step)

    def load(self, step: int, skipped: SkipCounter) -> list[MicroBatch]:
        future = self.pending.pop(step, None)
        batch, counter = future.result() if future is not None else self._load(step)
        skipped.update(counter)
        return batch

    def close(self) -> None:
        for pool in (self.pool, self.ahead):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

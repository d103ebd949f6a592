"""Loading a step's samples: this rank's share of each micro-batch, decoded and collated.

What is loaded depends on the step alone (see `plan.py`), so loading ahead in background threads
(`data.num_workers` > 0) changes nothing but speed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from visembed.config import RunConfig
from visembed.data import SkipCounter, collate, epoch_order
from visembed.train.plan import MapPlan, StreamPlan, micro_batches


class StepLoader:
    """`load(step)` -> this rank's micro-batches [(uint8 pixels (b, 3, S, S), targets)], a sample's
    target being what `target(sample)` makes of it (its caption unless told); with
    `data.num_workers` > 0, `prefetch(step + 1)` loads the next step while this one trains."""

    def __init__(self, dataset, cfg: RunConfig, rank: int, world: int, position: int, target=None):
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
        self.target = target

    def _samples(self, step: int) -> list:
        start = step * self.per_step
        if self.stream is not None:
            return self.stream.take(start, self.per_step)
        return [self.dataset[i] for i in self.plan.indices(start, self.per_step)]

    def _load(self, step: int) -> tuple[list, SkipCounter]:
        counter = SkipCounter()
        shares = micro_batches(self._samples(step), self.batch_size, self.accum, self.rank, self.world)
        if self.pool is None:
            return [collate(share, self.image_size, counter, target=self.target)[:2] for share in shares], counter
        batch = []
        for share in shares:  # decode in threads, one counter per sample (Counter is not thread-safe)
            decoded = list(self.pool.map(self._decode_one, share))
            for _, _, own in decoded:
                counter.update(own)
            kept = [(pixels, texts) for pixels, texts, _ in decoded if texts]
            pixels = torch.cat([p for p, _ in kept]) if kept else torch.empty(0, 3, self.image_size, self.image_size,
                                                                               dtype=torch.uint8)
            batch.append((pixels, [t for _, texts in kept for t in texts]))
        return batch, counter

    def _decode_one(self, sample) -> tuple[torch.Tensor, list[str], SkipCounter]:
        own = SkipCounter()
        pixels, texts, _ = collate([sample], self.image_size, own, target=self.target)
        return pixels, texts, own

    def prefetch(self, step: int) -> None:
        if self.ahead is not None and step not in self.pending:
            self.pending[step] = self.ahead.submit(self._load, step)

    def load(self, step: int, skipped: SkipCounter) -> list:
        future = self.pending.pop(step, None)
        batch, counter = future.result() if future is not None else self._load(step)
        skipped.update(counter)
        return batch

    def close(self) -> None:
        for pool in (self.pool, self.ahead):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

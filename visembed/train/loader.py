"""Loading a step's samples: this rank's share of each micro-batch, decoded, collated and made into
what the task reads (its `fields`: token ids, labels ...).

What is loaded depends on the step alone (see `plan.py`): `StepBatches[step]` is a pure function of
the step, so it can run anywhere. With `data.num_workers` = 0 it runs in this process when the loop
asks; with N > 0, torch's `DataLoader` runs it in N worker processes (decoding and resizing are
CPU work that threads of one process share badly), each preparing whole steps `data.prefetch`
ahead, in step order, into pinned memory on CUDA. Either way a step gets the same samples, so
resuming (which starts the loader at the resumed step) and DDP (each rank loads only its slices)
see exactly what an uninterrupted single process sees. Samples skipped in a worker are counted
there and travel back with the step's batch.

WebDataset shards are read through their index (`data/shard_index.py`): the samples in the order
the shards stream (or, with `data.shard_order=shuffled`, shuffled each epoch like any map-style
data), but each rank and worker reads only the members of the samples it trains on, so every
sample is read once per epoch across ranks and workers.

Nothing here draws random numbers: what is drawn per step (augmentations, a captioner's choice of
conversation) is drawn in the step, from the step's seeded RNG. The DataLoader is given its own
generator, so starting it leaves the global RNG untouched.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from visembed.config import RunConfig
from visembed.data import SkipCounter, collate, epoch_order
from visembed.data.gpu_decode import GpuJpegDecoder
from visembed.train.batch import MicroBatch
from visembed.train.plan import MapPlan, StreamPlan, micro_batches


def stream_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Epochs of an indexed stream (shards) walk it in stream order, as streaming it did."""
    return np.arange(n)


class StepBatches:
    """`batches[step]` -> (step, this rank's micro-batches, the samples skipped while loading them).

    Map-style over steps (`DataLoader` workers get step numbers from its sampler). Workers are
    forked, so the dataset and the task reach them as they are, never pickled."""

    def __init__(self, dataset, cfg: RunConfig, rank: int, world: int, position: int, task, encoded_jpegs: bool):
        tc = cfg.train
        self.rank, self.world = rank, world
        self.batch_size, self.accum, self.image_size = tc.batch_size, tc.accum_steps, cfg.model.vision.image_size
        self.per_step = tc.batch_size * tc.accum_steps
        if getattr(dataset, "streaming", False):
            from visembed.data.webdataset_source import WebDatasetSource

            if isinstance(dataset, WebDatasetSource):
                dataset = dataset.indexed()
        self.dataset = dataset
        if getattr(dataset, "streaming", False):  # some other stream: read in order, in this process
            self.stream, self.plan = StreamPlan(dataset, position), None
        else:
            order = stream_order if _is_index(dataset) and cfg.data.shard_order == "stream" else epoch_order
            self.stream, self.plan = None, MapPlan(len(dataset), tc.seed, order)
        self.need, self.fields = task.needs.sample, task.fields
        self.encoded_jpegs = encoded_jpegs

    def _samples(self, step: int) -> list:
        start = step * self.per_step
        if self.stream is not None:
            return self.stream.take(start, self.per_step)
        # only this rank's slices are read: the other ranks read theirs
        wanted = micro_batches(list(range(start, start + self.per_step)), self.batch_size, self.accum, self.rank,
                               self.world)
        return [[self.dataset[i] for i in self.plan.indices(share[0], len(share))] if share else [] for share in wanted]

    def __getitem__(self, step: int) -> tuple[int, list[MicroBatch], SkipCounter]:
        counter = SkipCounter()
        if self.stream is not None:
            shares = micro_batches(self._samples(step), self.batch_size, self.accum, self.rank, self.world)
        else:
            shares = self._samples(step)
        batch = []
        for share in shares:
            if self.encoded_jpegs:
                pixels, kept = GpuJpegDecoder.prepare(share, self.image_size, counter, need=self.need)
            else:
                pixels, kept = collate(share, self.image_size, counter, need=self.need)
            # an empty share trains nothing (the loop skips the step): the task is not asked about it
            batch.append({"pixels": pixels, **(self.fields(kept) if kept else {})})
            if self.encoded_jpegs:
                batch[-1]["_samples"] = kept  # the GPU may still refuse an image: fields are then remade
        return step, batch, counter


# fork where there is one (Linux; Python 3.14 makes forkserver the default, which would pickle the
# dataset and the task): the platform's default elsewhere
_FORK = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _is_index(dataset) -> bool:
    from visembed.data.shard_index import ShardIndex

    return isinstance(dataset, ShardIndex)


class StepLoader:
    """`load(step)` -> this rank's micro-batches, each {"pixels": uint8 (b, 3, S, S), **task.fields(the
    b samples kept)}: the samples without what the task needs (`task.needs`) or whose image does not
    decode are skipped and counted. Steps are asked for in order from the resumed position on;
    `prefetch` is kept for the loop's sake (workers load ahead on their own)."""

    def __init__(self, dataset, cfg: RunConfig, rank: int, world: int, position: int, task):
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        self.gpu = GpuJpegDecoder.create(cfg.data.jpeg_decode, device, cfg.model.vision.image_size)
        self.batches = StepBatches(dataset, cfg, rank, world, position, task, encoded_jpegs=self.gpu is not None)
        self.fields = task.fields
        workers = cfg.data.num_workers
        self.first = position // self.batches.per_step
        self.steps = None
        if workers > 0 and self.batches.stream is None:
            # the tokenizers library warns (and turns its threads off) in every forked worker otherwise
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            loader = DataLoader(self.batches, batch_size=None, sampler=itertools.count(self.first),
                                num_workers=workers, prefetch_factor=cfg.data.prefetch,
                                pin_memory=device is not None, generator=torch.Generator(),
                                multiprocessing_context=_FORK)
            self.steps = iter(loader)

    def prefetch(self, step: int) -> None:
        """Nothing to do: worker processes run ahead of the loop by themselves."""

    def load(self, step: int, skipped: SkipCounter) -> list[MicroBatch]:
        loaded, batch, counter = next(self.steps) if self.steps is not None else self.batches[step]
        if loaded != step:
            raise RuntimeError(f"the loader delivered step {loaded} where step {step} was asked for")
        skipped.update(counter)
        if self.gpu is not None:
            batch = [self.gpu.decode(micro, skipped, self.fields) for micro in batch]
        return batch

    def close(self) -> None:
        self.steps = None  # the DataLoader iterator shuts its workers down when dropped

"""Which samples each step and rank trains on, as a pure function of (seed, step).

The global stream of samples is the concatenation of shuffled epochs; step `s` takes positions
`[s * per_step, (s + 1) * per_step)`. Each of its micro-batches is cut into one contiguous slice
per rank. Because nothing depends on what happened before, a resumed run (or a run on more
processes) sees exactly the samples an uninterrupted single-process run sees.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator


def rank_slice(items: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s contiguous share of `items`; shares differ by at most one item."""
    n = len(items)
    return items[rank * n // world_size : (rank + 1) * n // world_size]


class MapPlan:
    """Sample indices of a map-style dataset of `n` items, epoch by epoch in shuffled order."""

    def __init__(self, n: int, seed: int, epoch_order):
        if n == 0:
            raise ValueError("the training data has no samples")
        self.n, self.seed, self.epoch_order = n, seed, epoch_order
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: [int(i) for i in self.epoch_order(self.n, self.seed, epoch)]}  # keep one epoch
        return self._orders[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices at global stream positions [start, start + count)."""
        return [self._order(pos // self.n)[pos % self.n] for pos in range(start, start + count)]


class StreamPlan:
    """A streaming dataset read from the start and repeated; resuming skips what was consumed."""

    def __init__(self, dataset, start: int):
        self.dataset, self.position = dataset, 0
        self._it = self._forever()
        self.skip_to(start)

    def _forever(self) -> Iterator:
        while True:
            empty = True
            for sample in self.dataset:
                empty = False
                yield sample
            if empty:
                raise ValueError("the training stream yielded no samples")

    def skip_to(self, position: int) -> None:
        if position < self.position:
            raise ValueError("a stream cannot go back")
        next(itertools.islice(self._it, position - self.position, position - self.position), None)
        self.position = position

    def take(self, start: int, count: int) -> list:
        """Samples at stream positions [start, start + count); `start` must be where we stand."""
        self.skip_to(start)
        self.position += count
        return list(itertools.islice(self._it, count))


def micro_batches(items: list, batch_size: int, accum_steps: int, rank: int, world_size: int) -> list[list]:
    """A step's items -> this rank's share of each of the `accum_steps` micro-batches."""
    return [rank_slice(items[j * batch_size : (j + 1) * batch_size], rank, world_size) for j in range(accum_steps)]

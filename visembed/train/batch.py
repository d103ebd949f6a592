"""What travels from the loader through the loop to a task: micro-batches, and what a task asks of
the data. The lowest piece of `train/`: the loop, the loader, the step functions and every task
import it, and it imports none of them.

A micro-batch is a dict. The loader fills it with

    "pixels"     uint8 (b, 3, S, S): the decoded images of this rank's share of the micro-batch
    ...          whatever the task's `fields(samples)` makes of those b samples, e.g. "tokens"
                 (the text tower's `input_ids`, `attention_mask`, ...), "captions", "labels"

and the loop, before it hands the micro-batch to the task, replaces "pixels" by float (b, 3, S, S)
in [0, 1] augmented with the step's seeded RNG, and adds one more augmented draw of the same images
per extra view the task asked for ("pixels_2", "pixels_3", ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

MicroBatch = dict[str, Any]
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class Needs:
    """What a task needs of a sample, and how many augmented views of its image.

    sample: "caption" (a sample with a blank caption is skipped and counted as `empty_caption`),
    "label" (one without a label is skipped as `missing_label`) or "nothing" (every sample whose
    image decodes). views: augmented draws of each image (the first is "pixels")."""

    sample: Literal["caption", "label", "nothing"] = "caption"
    views: int = 1

    def __post_init__(self):
        if self.sample not in ("caption", "label", "nothing"):
            raise ValueError(f"a task needs a caption, a label or nothing of a sample, not {self.sample!r}")
        if self.views < 1:
            raise ValueError(f"a task needs at least one view of each image, not {self.views}")


def view_keys(views: int) -> list[str]:
    """The micro-batch keys of `views` augmented views: "pixels", "pixels_2", ..."""
    return ["pixels"] + [f"pixels_{i}" for i in range(2, views + 1)]


__all__ = ["Autocast", "MicroBatch", "Needs", "view_keys"]

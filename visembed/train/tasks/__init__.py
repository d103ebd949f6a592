"""Tasks: what a training run optimises. The loop (`visembed.train.loop`) is the same for every
task (data plan, augmentation, optimiser, schedule, checkpoints, resume, DDP); a task brings what
is particular to one objective:

    prepare_assets(dataset, out_dir)   before the model is built, on the main process of a fresh
                                       run: files the model needs (a BPE vocabulary learnt on the
                                       captions)
    configure(model)                   before the optimiser is built: which parameters learn
    target(sample)                     what a micro-batch carries of each sample besides its pixels
                                       (its caption; a captioner's candidate conversations)
    prepare(model, dataset, fresh=, progress=)
                                       after the weights are in place (initialised, or restored by a
                                       resume): caches and warm-ups (a caption bank; distilling a
                                       CJK student, on a fresh run only)
    backward(model, micro_batches, autocast) -> {"loss": float, ...}
                                       forward and backward of one optimisation step; gradients
                                       accumulate in `.grad`, the loop clips and steps. The
                                       returned numbers are logged under their names.
    finalize(model)                    after the last step, before the final model folder is
                                       written and evaluated: the model in the form it is saved
                                       (a captioner's LoRA adapters merged into its LM)
    evaluate(model) -> {name: float}   metrics on validation data (main process only)
    find_unused_parameters             whether DDP must expect parameters without gradients

A task is chosen by `train.task` (`build_task`), or passed to `train(..., task=...)` directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

MicroBatch = tuple[torch.Tensor, list]  # pixels (b, 3, S, S) in [0, 1], augmented; b targets (captions)
Autocast = Callable[[], contextlib.AbstractContextManager]


class Task(Protocol):
    find_unused_parameters: bool

    def prepare_assets(self, dataset, out_dir: Path) -> None: ...

    def configure(self, model: nn.Module) -> None: ...

    def target(self, sample): ...

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None: ...

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]: ...

    def finalize(self, model: nn.Module) -> None: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


def build_task(cfg, rank: int, world: int) -> Task:
    """The task `cfg.train.task` names, for this process of `world`."""
    if cfg.train.task == "contrastive":
        from visembed.train.tasks.contrastive import ContrastiveTask

        return ContrastiveTask(cfg, rank, world)
    if cfg.train.task in ("caption_align", "caption_instruct"):
        from visembed.train.tasks.captioning import CaptioningTask

        return CaptioningTask(cfg, rank, world)
    raise ValueError(f"unknown train.task {cfg.train.task!r}")


__all__ = ["Autocast", "MicroBatch", "Task", "build_task"]

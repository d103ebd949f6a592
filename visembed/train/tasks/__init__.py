"""Tasks: what a training run optimises. The loop (`visembed.train.loop`) is the same for every
task (data plan, augmentation, optimiser, schedule, checkpoints, resume, DDP); a task brings what
is particular to one objective:

    needs                              what it needs of a sample (`Needs`: a caption, a label or
                                       nothing) and how many augmented views of each image
    find_unused_parameters             whether DDP must expect parameters without gradients
    prepare_assets(dataset, out_dir)   before the model is built, on the main process of a fresh
                                       run: files the model needs (a BPE vocabulary learnt on the
                                       captions)
    build_model(cfg, assets, pretrained) -> model
                                       the model it trains, its tower assets read from `assets`;
                                       `pretrained=False` where weights are loaded over it anyway
    configure(model)                   before the optimiser is built: which parameters learn
    fields(samples) -> dict            what a micro-batch carries besides its pixels, made of the
                                       samples whose images decoded: token ids, labels, captions.
                                       Runs in the loader (on the CPU, in a background thread when
                                       data.num_workers > 0): tokenisation belongs here, random
                                       draws do not (they belong to the step's seeded RNG)
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

Micro-batches are dicts (`visembed.train.batch`). A task is chosen by name, `train.task`, among
those registered here (`register_task`), or passed to `train(..., task=...)` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import nn

from visembed.config import ConfigError, registered
from visembed.train.batch import Autocast, MicroBatch, Needs


class Task(Protocol):
    needs: Needs
    find_unused_parameters: bool

    def prepare_assets(self, dataset, out_dir: Path) -> None: ...

    def build_model(self, cfg, assets: Path, pretrained: bool) -> nn.Module: ...

    def configure(self, model: nn.Module) -> None: ...

    def fields(self, samples: list) -> dict: ...

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None: ...

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]: ...

    def finalize(self, model: nn.Module) -> None: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


TaskFactory = Callable[..., Task]  # (cfg, rank, world) -> Task
# name -> (a factory, or "module:Class" imported when first asked for (tasks pull in heavy modules);
#          the model.architecture the task trains)
_TASKS: dict[str, tuple[TaskFactory | str, str]] = {
    "contrastive": ("visembed.train.tasks.contrastive:ContrastiveTask", "dual_encoder"),
    "caption_align": ("visembed.train.tasks.captioning:CaptioningTask", "captioner"),
    "caption_instruct": ("visembed.train.tasks.captioning:CaptioningTask", "captioner"),
    "classification": ("visembed.train.tasks.classification:ClassificationTask", "dual_encoder"),
    "simclr": ("visembed.train.tasks.simclr:SimCLRTask", "dual_encoder"),
    "slip": ("visembed.train.tasks.slip:SLIPTask", "dual_encoder"),
}


def register_task(name: str, factory: TaskFactory | str, architecture: str = "dual_encoder") -> None:
    """Make `train.task=name` build `factory(cfg, rank, world)`, for models of `architecture`."""
    _TASKS[name] = (factory, architecture)


def task_names() -> list[str]:
    return sorted(_TASKS)


def check_task(cfg) -> None:
    """`ConfigError` naming `train.task` unless it names a registered task for `model.architecture`."""
    if cfg.train.task not in _TASKS:
        raise ConfigError(f"train.task: must be one of {', '.join(map(repr, task_names()))}, got {cfg.train.task!r}")
    architecture = _TASKS[cfg.train.task][1]
    if architecture != cfg.model.architecture:
        fitting = [name for name in task_names() if _TASKS[name][1] == cfg.model.architecture]
        raise ConfigError(f"train.task: {cfg.train.task!r} trains a model.architecture {architecture!r}; for "
                          f"{cfg.model.architecture!r} use one of {', '.join(map(repr, fitting))}")


def build_task(cfg, rank: int, world: int) -> Task:
    """The task `cfg.train.task` names, for this process of `world`."""
    check_task(cfg)
    return registered(_TASKS[cfg.train.task][0])(cfg, rank, world)


__all__ = ["Autocast", "MicroBatch", "Needs", "Task", "build_task", "check_task", "register_task", "task_names"]

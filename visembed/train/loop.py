"""The one training loop. Pretraining and fine-tuning are the same loop: fine-tuning starts from
the weights (and tokenizer) of a model folder given as `init`. What is optimised is a task's
business (`visembed.train.tasks`): the loop knows data, steps and state, not losses.

Reads top to bottom: set-up (processes, data, task assets, the task's model, optimiser, resume,
task preparation), the loop (samples of this step -> micro-batches as the task asked for them ->
augment each view -> the task's forward/backward -> clip -> step), evaluation, checkpoints, and the
final model folder. Everything a step does is a function of (seed, step), so `resume=True` ends
with the same weights as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from visembed import checkpoint
from visembed.config import RunConfig
from visembed.data import DataError, SkipCounter, build_train_augment, open_dataset
from visembed.distributed import barrier, cleanup, init_distributed, reduce_number
from visembed.atomic import atomic_write_text
from visembed.models.card import model_card
from visembed.models.text_hf import ENCODER_DIR
from visembed.train.batch import MicroBatch, view_keys
from visembed.train.compile import compile_towers, wants_compile
from visembed.train.loader import StepLoader
from visembed.train.metrics_log import MetricsLog
from visembed.train.optim import build_optimizer
from visembed.train.schedule import lr_at
from visembed.train.state import restore_rng, rng_state, seed_everything, step_seed
from visembed.train.tasks import Task, build_task


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the weights are no longer a model."""


def train(cfg: RunConfig, out_dir, *, init=None, resume: bool = False, progress: bool = True,
          task: Task | None = None) -> dict:
    """Train `cfg` into the run folder `out_dir`; returns the final metrics (JSON-ready). `task`
    replaces the one `cfg.train.task` names (it must be made for this process's rank)."""
    joined = dist.is_available() and dist.is_initialized()  # a caller that runs several trainings keeps the group
    rank, world, local_rank, device = init_distributed()
    try:
        return _train(cfg, Path(out_dir), init, resume, progress, task, rank, world, local_rank, device)
    finally:
        if world > 1 and not joined:
            cleanup()


def _train(cfg, out, init, resume, progress, task, rank, world, local_rank, device) -> dict:
    main = rank == 0
    tc = cfg.train
    if tc.batch_size < world:
        raise ValueError(f"train.batch_size ({tc.batch_size}) must be at least the number of processes ({world})")
    autocast = _autocast(tc.precision, device)

    # ---- set-up ----------------------------------------------------------------------------
    if init is not None:  # the architecture must be the one the weights were trained with
        cfg = dataclasses.replace(cfg, model=checkpoint.read_config(init).model)
    task = task if task is not None else build_task(cfg, rank, world)
    seed_everything(tc.seed)
    ckpt = checkpoint.latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise ValueError(f"{out} already holds a run (checkpoint {ckpt.name}); pass --resume to continue it, "
                         "or choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(cfg.data.train, "train", language=cfg.data.language, need=task.needs.sample,
                           image_column=cfg.data.image_column, caption_column=cfg.data.caption_column)
    fresh = ckpt is None and init is None  # nothing to start from: the task learns its assets
    if ckpt is not None:
        saved = checkpoint.read_config(out)
        if saved.model != cfg.model or saved.data != cfg.data:
            raise ValueError(f"{out} holds a run with a different model or data config; resume it with the same "
                             "preset and --set overrides, or choose another --out")
    assets = _asset_dir(task, dataset, out, init, ckpt is not None, main)
    model = task.build_model(cfg, assets, pretrained=fresh)  # else weights come from init or ckpt
    if init is not None:
        checkpoint.load_weights(model, checkpoint.weights_path(init))
    task.configure(model)  # which parameters learn
    model.to(device).train()
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.layer_decay)
    total_steps = _total_steps(cfg, dataset)
    per_step = tc.batch_size * tc.accum_steps  # samples of the global stream each step consumes

    start_step, skipped = 0, SkipCounter()
    if ckpt is not None:
        state = checkpoint.load_training_state(ckpt, model, optimizer)
        start_step = int(state["step"])
        restore_rng(state["rng"])
        if main:  # the checkpoint holds the counts of all ranks
            for reason, n in state["skipped"].items():
                skipped.add(reason, n)
            print(f"resuming from {ckpt} (step {start_step} of {total_steps})")
    elif resume and main:
        print(f"no checkpoint in {out}: starting from scratch")
    task.prepare(model, dataset, fresh=fresh, progress=progress and main)
    if main:
        checkpoint.write_model_metadata(model, cfg, out)  # config + tokenizer: the folder loads mid-run
    barrier()
    if wants_compile(tc.compile, device):  # after the task's preparation (distillation, caches): eager
        compile_towers(model)

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    augment = build_train_augment(cfg.data.augment).to(device)
    loader = StepLoader(dataset, cfg, rank, world, start_step * per_step, task)
    views = view_keys(task.needs.views)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if resume else None) if main else None
    bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not (progress and main), dynamic_ncols=True)

    # ---- the loop --------------------------------------------------------------------------
    last: dict = {"loss": None}
    trained = start_step > 0  # whether any step has learnt from a sample
    interval_samples, interval_start = 0, time.perf_counter()
    for step in range(start_step, total_steps):
        lr = lr_at(step, tc.lr, tc.warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # (checkpoints from before layer decay have none)

        batch = loader.load(step, skipped)  # this rank's micro-batches: [{"pixels": uint8, **task fields}]
        if step + 1 < total_steps:
            loader.prefetch(step + 1)
        local_sizes = [len(micro["pixels"]) for micro in batch]
        if reduce_number(min(local_sizes), "min", device) == 0:
            if main:  # every sample of a micro-batch was broken somewhere: nothing to learn this step
                skipped.add("empty_batch_step")
        else:
            torch.manual_seed(step_seed(tc.seed, step, rank))  # augmentations depend on the step only
            with torch.no_grad():
                batch = [_augmented(micro, augment, views, device) for micro in batch]
            optimizer.zero_grad(set_to_none=True)
            last = task.backward(ddp, batch, autocast)
            if not math.isfinite(last["loss"]):
                raise TrainingDiverged(
                    f"the loss became {last['loss']} at step {step + 1}: training stopped and no model was saved "
                    f"(the last good checkpoint, if any, is under {out / checkpoint.CHECKPOINT_DIR}). Try a lower "
                    f"train.lr (now {tc.lr:g}), more train.warmup_steps (now {tc.warmup_steps}), gradient clipping "
                    "(train.grad_clip=1.0) or train.precision=fp32")
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
            optimizer.step()
            trained = True
            interval_samples += sum(local_sizes)
        bar.update(1)

        done = step + 1
        if _due(done, tc.log_every, total_steps):
            interval_samples = reduce_number(interval_samples, "sum", device)
            rate = interval_samples / max(time.perf_counter() - interval_start, 1e-9)
            record = {"step": done, "loss": last["loss"], "lr": lr, "samples_per_s": round(rate, 1),
                      **{k: v for k, v in last.items() if k != "loss"},
                      "skipped": _merged_skips(skipped, dataset, world)}
            if main:
                log.write(record)
                bar.set_postfix(loss=f"{last['loss']:.4f}" if last["loss"] is not None else "-", lr=f"{lr:.2e}",
                                samples_s=f"{rate:.0f}")
            interval_samples, interval_start = 0, time.perf_counter()
        if done < total_steps and _due(done, tc.eval_every, total_steps):
            _evaluate(task, model, done, log, main)
        if _due(done, tc.checkpoint_every, total_steps):
            if not trained:  # never save an untrained model as if it were the result
                raise DataError(f"no usable training sample in {cfg.data.train!r} after {done} step(s) "
                                f"(skipped: {_merged_skips(skipped, dataset, world)}); nothing was saved")
            seen_skips = _skips_over_ranks(skipped, world)
            if main:
                checkpoint.save_training_state(out, done, model, optimizer, _resume_state(done * per_step, seen_skips))
            barrier()
    bar.close()
    loader.close()

    # ---- the final model folder, evaluation, report ----------------------------------------
    skips = _merged_skips(skipped, dataset, world)
    final = {"step": total_steps, **last, "world_size": world, "skipped": skips, "skipped_total": sum(skips.values())}
    task.finalize(model)  # the form the model is saved in (checkpoints keep the training form)
    if main:
        checkpoint.save_model_folder(model, cfg, out)
    final.update(_evaluate(task, model, total_steps, None, main))
    if main:
        atomic_write_text(out / "README.md", model_card(cfg, final))
        log.write({**final, "final": True})
        total = sum(skips.values())
        summary = ", ".join(f"{reason}={n}" for reason, n in skips.items())
        print(f"run finished: {out}; skipped {total} input(s)" + (f" ({summary})" if summary else ""))
    barrier()
    return final


# ---- the loop's helpers --------------------------------------------------------------------


def _augmented(micro: MicroBatch, augment, views: list[str], device: torch.device) -> MicroBatch:
    """The micro-batch with its uint8 "pixels" replaced by float views in [0, 1], each an augmented
    draw (in `views` order) from the global RNG the loop has just seeded for this step."""
    pixels = micro["pixels"].to(device).float() / 255
    return {**micro, **{key: augment(pixels) for key in views}}


# ---- set-up helpers ------------------------------------------------------------------------


def _asset_dir(task: Task, dataset, out: Path, init, resuming: bool, main: bool) -> Path:
    """Where the model finds its assets (tokenizer, an hf tower's config): the checkpointed run
    being resumed, the `init` model folder when fine-tuning, or the run folder after the task has
    prepared them from the training data."""
    if resuming:
        return out
    if init is not None:
        return Path(init)
    if main:
        # left by a run killed before its first checkpoint: without weights to load it would
        # turn the pretrained hf encoder into a randomly initialised one
        shutil.rmtree(out / ENCODER_DIR, ignore_errors=True)
        task.prepare_assets(dataset, out)
    barrier()  # the other ranks read the files rank 0 wrote
    return out


def _total_steps(cfg: RunConfig, dataset) -> int:
    tc = cfg.train
    if tc.epochs > 0:
        if getattr(dataset, "streaming", False):
            raise DataError("train.epochs needs data with a known length; streamed shards train for train.steps")
        return max(1, -(-tc.epochs * len(dataset) // (tc.batch_size * tc.accum_steps)))
    return tc.steps


def _due(done: int, every: int, total: int) -> bool:
    """Periodic work (log, eval, checkpoint) every `every` steps (0: never) and after the last step."""
    return done == total or (every > 0 and done % every == 0)


def _autocast(precision: str, device: torch.device):
    """bf16 autocast on CUDA ("auto"), fp32 on CPU; "bf16" and "fp32" force a choice."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _resume_state(samples_seen: int, skipped: dict[str, int]) -> dict:
    return {"samples_seen": samples_seen, "rng": rng_state(), "skipped": skipped}


# ---- distributed bookkeeping ----------------------------------------------------------------


def _skips_over_ranks(skipped: SkipCounter, world: int) -> dict[str, int]:
    """Samples skipped by the loaders of all ranks, by reason."""
    if world == 1:
        return skipped.as_dict()
    parts = [None] * world
    dist.all_gather_object(parts, skipped.as_dict())
    counts = SkipCounter()
    for part in parts:
        for reason, n in part.items():
            counts.add(reason, n)
    return counts.as_dict()


def _merged_skips(skipped: SkipCounter, dataset, world: int) -> dict[str, int]:
    """Skips of all ranks, plus rows the data source itself left out (rank 0's reading counts)."""
    counts = SkipCounter()
    for reason, n in _skips_over_ranks(skipped, world).items():
        counts.add(reason, n)
    source = getattr(dataset, "skipped", None)
    if source is not None:
        counts.update(source)
    return counts.as_dict()


# ---- evaluation ---------------------------------------------------------------------------


def _evaluate(task: Task, model, step: int, log: MetricsLog | None, main: bool) -> dict:
    """The task's validation metrics, on rank 0 while the others wait."""
    metrics = task.evaluate(model) if main else {}
    if main and log is not None and metrics:
        log.write({"step": step, **metrics})
    barrier()
    return metrics

"""The one training loop. Pretraining and fine-tuning are the same loop: fine-tuning starts from
the weights (and tokenizer) of a model folder given as `init`.

Reads top to bottom: set-up (processes, data, tokenizer, model, optimiser, resume), the loop
(samples of this step -> batch -> augment -> forward/backward -> clip -> step), evaluation,
checkpoints, and the final model folder. Everything a step does is a function of (seed, step), so
`resume=True` ends with the same weights as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from visembed.losses import ContrastiveLoss
from visembed.models import build_model, needs_bpe_tokenizer
from visembed.train.caption_bank import build_caption_bank
from visembed.train.loader import StepLoader
from visembed.train.metrics_log import MetricsLog
from visembed.train.optim import build_optimizer
from visembed.train.schedule import lr_at
from visembed.train.state import restore_rng, rng_state, seed_everything, step_seed
from visembed.train.step import train_step

EVAL_LIMIT = 1000  # images per periodic evaluation: a trend, not the final benchmark
TOKENIZER_TEXTS = 200_000  # captions read to learn the BPE vocabulary


def train(cfg: RunConfig, out_dir, *, init=None, resume: bool = False, progress: bool = True) -> dict:
    """Train `cfg` into the run folder `out_dir`; returns the final metrics (JSON-ready)."""
    rank, world, local_rank, device = init_distributed()
    try:
        return _train(cfg, Path(out_dir), init, resume, progress, rank, world, local_rank, device)
    finally:
        if world > 1:
            cleanup()


def _train(cfg, out, init, resume, progress, rank, world, local_rank, device) -> dict:
    main = rank == 0
    tc = cfg.train
    _check(cfg, world)
    autocast = _autocast(tc.precision, device)

    # ---- set-up ----------------------------------------------------------------------------
    if init is not None:  # the architecture must be the one the weights were trained with
        cfg = dataclasses.replace(cfg, model=checkpoint.read_config(init).model)
    seed_everything(tc.seed)
    ckpt = checkpoint.latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise ValueError(f"{out} already holds a run (checkpoint {ckpt.name}); pass --resume to continue it, "
                         "or choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(cfg.data.train, "train", language=cfg.data.language,
                           image_column=cfg.data.image_column, caption_column=cfg.data.caption_column)
    tokenizer_dir = _tokenizer_dir(cfg, dataset, out, init, ckpt is not None, main)
    model = build_model(cfg.model, tokenizer_dir=tokenizer_dir)
    if init is not None:
        checkpoint.load_weights(model, checkpoint.weights_path(init))
    model.to(device).train()
    bank = None
    if tc.caption_bank_weight > 0:  # the frozen tower's features of every training caption, once
        bank = build_caption_bank(model, dataset, progress=progress and main)
        if main:
            print(f"caption bank: {len(bank):,} distinct training captions")
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    total_steps = _total_steps(cfg, dataset)
    per_step = tc.batch_size * tc.accum_steps  # samples of the global stream each step consumes

    start_step, skipped = 0, SkipCounter()
    if ckpt is not None:
        saved = checkpoint.read_config(out)
        if saved.model != cfg.model or saved.data != cfg.data:
            raise ValueError(f"{out} holds a run with a different model or data config; resume it with the same "
                             "preset and --set overrides, or choose another --out")
        state = checkpoint.load_training_state(ckpt, model, optimizer)
        start_step = int(state["step"])
        restore_rng(state["rng"])
        if main:  # the checkpoint holds the counts of all ranks
            for reason, n in state["skipped"].items():
                skipped.add(reason, n)
            print(f"resuming from {ckpt} (step {start_step} of {total_steps})")
    elif resume and main:
        print(f"no checkpoint in {out}: starting from scratch")
    if ckpt is None and init is None and cfg.model.text.kind == "hf" and cfg.model.text.cjk_student \
            and cfg.model.text.student_distill_steps > 0:
        from visembed.train.distill import distill_student, translation_pairs

        with torch.random.fork_rng(devices=[]):  # every rank distils identically; the main RNG stays as seeded
            loss = distill_student(model.text, translation_pairs(dataset), steps=cfg.model.text.student_distill_steps,
                                   seed=tc.seed, progress=progress and main)
        if main:
            print(f"CJK student distilled from the frozen text tower (1 - cos = {loss:.3f})")
    if main:
        checkpoint.write_model_metadata(model, cfg, out)  # config + tokenizer: the folder loads mid-run
    barrier()

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=cfg.model.text.kind == "hf")  # a CJK student idles on all-English batches
    loss_fn = ContrastiveLoss(cfg.model.loss, rank=rank, world_size=world, bank_weight=tc.caption_bank_weight)
    augment = build_train_augment(cfg.data.augment).to(device)
    loader = StepLoader(dataset, cfg, rank, world, start_step * per_step)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if resume else None) if main else None
    bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not (progress and main), dynamic_ncols=True)

    # ---- the loop --------------------------------------------------------------------------
    last = {"loss": None, "logit_scale": None}
    interval_samples, interval_start = 0, time.perf_counter()
    for step in range(start_step, total_steps):
        lr = lr_at(step, tc.lr, tc.warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = loader.load(step, skipped)  # this rank's micro-batches: [(uint8 pixels, captions)]
        if step + 1 < total_steps:
            loader.prefetch(step + 1)
        local_sizes = [len(texts) for _, texts in batch]
        if reduce_number(min(local_sizes), "min", device) == 0:
            if main:  # every sample of a micro-batch was broken somewhere: nothing to learn this step
                skipped.add("empty_batch_step")
        else:
            torch.manual_seed(step_seed(tc.seed, step, rank))  # augmentations depend on the step only
            with torch.no_grad():
                batch = [(augment(pixels.to(device).float() / 255), texts) for pixels, texts in batch]
            last = train_step(ddp, loss_fn, optimizer, batch, tc.grad_clip, autocast, bank)
            interval_samples += sum(local_sizes)
        bar.update(1)

        done = step + 1
        if _due(done, tc.log_every, total_steps):
            interval_samples = reduce_number(interval_samples, "sum", device)
            rate = interval_samples / max(time.perf_counter() - interval_start, 1e-9)
            record = {"step": done, "loss": last["loss"], "lr": lr, "samples_per_s": round(rate, 1),
                      "logit_scale": last["logit_scale"], "skipped": _merged_skips(skipped, dataset, world)}
            if main:
                log.write(record)
                bar.set_postfix(loss=f"{last['loss']:.4f}" if last["loss"] is not None else "-", lr=f"{lr:.2e}",
                                samples_s=f"{rate:.0f}")
            interval_samples, interval_start = 0, time.perf_counter()
        if done < total_steps and _due(done, tc.eval_every, total_steps):
            _evaluate(model, cfg, done, log, main)
        if _due(done, tc.checkpoint_every, total_steps):
            seen_skips = _skips_over_ranks(skipped, world)
            if main:
                checkpoint.save_training_state(out, done, model, optimizer, _resume_state(done * per_step, seen_skips))
            barrier()
    bar.close()
    loader.close()

    # ---- the final model folder, evaluation, report ----------------------------------------
    skips = _merged_skips(skipped, dataset, world)
    final = {"step": total_steps, "loss": last["loss"], "logit_scale": last["logit_scale"], "world_size": world,
             "skipped": skips, "skipped_total": sum(skips.values())}
    if main:
        checkpoint.save_model_folder(model, cfg, out)
    final.update(_evaluate(model, cfg, total_steps, None, main))
    if main:
        log.write({**final, "final": True})
        total = sum(skips.values())
        summary = ", ".join(f"{reason}={n}" for reason, n in skips.items())
        print(f"run finished: {out}; skipped {total} input(s)" + (f" ({summary})" if summary else ""))
    barrier()
    return final


# ---- set-up helpers ------------------------------------------------------------------------


def _tokenizer_dir(cfg: RunConfig, dataset, out: Path, init, resuming: bool, main: bool) -> Path:
    """Where the text tower finds its tokenizer (and an hf tower its config): the checkpointed run
    being resumed, the `init` model folder when fine-tuning, or the run folder after learning a
    BPE vocabulary on the training captions."""
    if resuming:
        return out
    if init is not None:
        return Path(init)
    if main:
        from visembed.models.text_hf import ENCODER_DIR

        # left by a run killed before its first checkpoint: without weights to load it would
        # turn the pretrained hf encoder into a randomly initialised one
        shutil.rmtree(out / ENCODER_DIR, ignore_errors=True)
        if needs_bpe_tokenizer(cfg.model):
            from visembed.data import train_bpe_tokenizer

            every_language = cfg.data.language == "both" or cfg.model.text.cjk_student
            train_bpe_tokenizer(_caption_texts(dataset, every_language), cfg.model.text.vocab_size, out)
    barrier()  # the other ranks read the file rank 0 wrote
    return out


def _caption_texts(dataset, every_language: bool):
    """The training captions; every language's when training on "both" or for a CJK student."""
    for i, sample in enumerate(dataset):
        if i >= TOKENIZER_TEXTS:
            break
        if every_language and sample.captions:
            yield from sample.captions.values()
        else:
            yield sample.caption


def _total_steps(cfg: RunConfig, dataset) -> int:
    tc = cfg.train
    if tc.epochs > 0:
        if getattr(dataset, "streaming", False):
            raise DataError("train.epochs needs data with a known length; streamed shards train for train.steps")
        return max(1, -(-tc.epochs * len(dataset) // (tc.batch_size * tc.accum_steps)))
    return tc.steps


def _check(cfg: RunConfig, world: int) -> None:
    tc = cfg.train
    if tc.batch_size < world:
        raise ValueError(f"train.batch_size ({tc.batch_size}) must be at least the number of processes ({world})")
    if tc.accum_steps < 1:
        raise ValueError(f"train.accum_steps must be 1 or more, got {tc.accum_steps}")
    if tc.caption_bank_weight < 0:
        raise ValueError(f"train.caption_bank_weight must be 0 (off) or more, got {tc.caption_bank_weight}")
    if tc.steps < 1 and tc.epochs < 1:
        raise ValueError("set train.steps or train.epochs to 1 or more")


def _due(done: int, every: int, total: int) -> bool:
    """Periodic work (log, eval, checkpoint) every `every` steps (0: never) and after the last step."""
    return done == total or (every > 0 and done % every == 0)


def _autocast(precision: str, device: torch.device):
    """bf16 autocast on CUDA ("auto"), fp32 on CPU; "bf16" and "fp32" force a choice."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
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


def _evaluate(model, cfg: RunConfig, step: int, log: MetricsLog | None, main: bool) -> dict:
    """Retrieval (and zero-shot) metrics on the validation data, on rank 0 while the others wait.
    Missing validation data is reported, never fatal."""
    metrics: dict = {}
    if main:
        spec = cfg.data.val or cfg.data.train
        try:
            from visembed.models.inference import Model
            from visembed.eval.run import evaluate
        except ImportError:
            evaluate = None
        if evaluate is not None:
            model.eval()
            try:
                result = evaluate(Model(model, cfg), spec, "val", language=cfg.data.language, limit=EVAL_LIMIT,
                                  progress=False)
                metrics = {f"val_{k}": v for k, v in result.items() if isinstance(v, float)}
            except (DataError, ValueError, FileNotFoundError) as err:
                print(f"evaluation skipped: {err}")
            finally:
                model.train()
        if log is not None and metrics:
            log.write({"step": step, **metrics})
    barrier()
    return metrics

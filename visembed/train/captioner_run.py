"""Training a captioner on a trained dual encoder: the config it gets, and its two stages.

    stage "align"     OUT/align/: a run of the `caption_align` task
    stage "instruct"  OUT/: a run of the `caption_instruct` task (from OUT/align/ after "align")
    stage "both"      one, then the other; `resume` continues whichever was under way

The model section comes from the dual encoder's folder (its towers, frozen, become the captioner's
eyes); the rest from `CAPTIONER_DEFAULTS`, then the caller's overrides.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from visembed.checkpoint import MODEL_FILE, ModelFolderError, read_config
from visembed.config import CaptionerConfig, ConfigError, RunConfig, apply_overrides
from visembed.distributed import cleanup, init_distributed
from visembed.train.loop import train

STAGES = ("align", "instruct", "both")
ALIGN_SHARE = 0.25  # of the steps, with --stage both
# what a captioner run changes from the defaults of RunConfig (a dual encoder's model section comes with --vision)
CAPTIONER_DEFAULTS = [
    "train.batch_size=64", "train.steps=600", "train.lr=0.001", "train.warmup_steps=50", "train.weight_decay=0.05",
    "train.checkpoint_every=200", "train.log_every=20", "data.augment.enabled=false",
]


def captioner_config(vision: str | Path, data: str, *, lm: str | None = None, steps: int | None = None,
                     batch_size: int | None = None, lora: int | None = None, overrides: list[str] = ()) -> RunConfig:
    """The config of a captioner on the dual encoder in `vision`, trained on `data`."""
    base = read_config(vision)
    if base.model.architecture != "dual_encoder":
        raise ModelFolderError(f"--vision {vision} holds a {base.model.architecture}, not a dual encoder "
                               "(train one with `visembed train`, or use the demo's model folder)")
    model = dataclasses.replace(base.model, architecture="captioner",
                                captioner=CaptionerConfig(vision=str(Path(vision).resolve())))
    cfg = RunConfig(model=model)
    flags = [f"data.train={data}", "train.task=caption_instruct"]
    flags += [f"model.captioner.lm={lm}"] if lm else []
    flags += [f"train.steps={steps}"] if steps is not None else []
    flags += [f"train.batch_size={batch_size}"] if batch_size is not None else []
    flags += [f"model.captioner.lora_rank={lora}"] if lora is not None else []
    if base.model.vision.kind == "efficientnet_lite" and base.model.vision.feature_cache == 0:
        flags.append("model.vision.feature_cache=50000")  # the captioner caches its frozen encoder's features
    return apply_overrides(cfg, CAPTIONER_DEFAULTS + flags + list(overrides))


def train_captioner(cfg: RunConfig, out: str | Path, *, stage: str = "both", resume: bool = False,
                    progress: bool = True) -> dict:
    """Run `stage` of `cfg` into `out`; returns the last stage's final metrics."""
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    if cfg.model.captioner.lora_rank > 0 and stage != "align":
        from visembed.models.lora import require_peft

        require_peft()  # before the align stage spends its time
    _, world, _, _ = init_distributed()  # one process group for both stages (re-creating it can hang)
    try:
        return _stages(cfg, Path(out), stage, resume, progress)
    finally:
        if world > 1:
            cleanup()


def _stages(cfg: RunConfig, out: Path, stage: str, resume: bool, progress: bool) -> dict:
    if stage == "instruct":
        return train(cfg, out, resume=resume, progress=progress)
    align_steps = cfg.train.steps if stage == "align" else max(1, round(cfg.train.steps * ALIGN_SHARE))
    align = _with(cfg, task="caption_align", steps=align_steps)
    align_dir = out / "align" if stage == "both" else out
    if resume and (align_dir / MODEL_FILE).is_file() and stage == "both":
        print(f"stage 1 (align) already finished in {align_dir}")
    else:
        metrics = train(align, align_dir, resume=resume, progress=progress)
        if stage == "align":
            return metrics
    instruct = _with(cfg, task="caption_instruct", steps=max(1, cfg.train.steps - align_steps))
    return train(instruct, out, init=align_dir, resume=resume, progress=progress)


def _with(cfg: RunConfig, *, task: str, steps: int) -> RunConfig:
    return apply_overrides(cfg, [f"train.task={task}", f"train.steps={json.dumps(steps)}"])

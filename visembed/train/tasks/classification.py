"""Fine-tuning a classifier (`visembed classify fit --method finetune`): LP-FT, then WiSE-FT.

LP-FT (Kumar et al. 2022): the head is first fitted on cached features (the linear probe, here the
zs-probe, which starts at the zero-shot head), then the image tower, its projection and the head
are trained end to end by the training loop (resume, checkpoints, progress, augmentation, DDP
under `torchrun`), so the features move less than they would under a random head. WiSE-FT
(Wortsman et al. 2022): the fine-tuned weights are interpolated with the zero-shot model's,
`(1 - alpha) * zero-shot + alpha * fine-tuned` (the zero-shot head has no linear part, so the
head's linear part is scaled by alpha).

The task (`ClassificationTask`, `train.task=classification`) needs a label of each sample. It reads
its head and classes from the classifier folder `LP_FOLDER` beside the training manifest, which
`finetune_classifier` writes (shots manifest + probe head), so a run resumes from its folder alone.
The head is attached to the dual encoder in `configure` (after the pretrained weights are loaded)
and taken off in `finalize`: the run's model folder is a plain dual encoder, and the trained head
is written beside it (`HEAD_FILE`). The model is a `ClassifierDualEncoder`, whose `forward(pixels)`
gives the head's logits, so a step goes through the DDP wrapper like any other and 2 processes
take the step 1 process takes with the whole batch. Under `torchrun`, rank 0 fits the LP head and
writes the shots and the merged classifier; every rank trains.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.classify.features import pixel_features
from visembed.classify.folder import read_config as read_classifier_config
from visembed.classify.folder import read_head
from visembed.classify.torch_head import HeadModule
from visembed.models.dual_encoder import DualEncoder
from visembed.train.batch import Autocast, MicroBatch, Needs
from visembed.train.tasks.simclr import no_sync

LP_FOLDER = "linear-probe"  # beside the shots manifest: the LP head and classes the task starts from
SHOTS_FILE = "shots.jsonl"
RUN_FOLDER = "run"
FINETUNE_STEPS = 60
FINETUNE_LR = 1e-4
FINETUNE_BATCH = 32
WISE_ALPHA = 1.0  # default weight of the fine-tuned model: measured best of 0.25, 0.5, 0.75, 1 (docs/classify.md)


class ClassifierDualEncoder(DualEncoder):
    """A dual encoder that, given pixels alone, answers its classifier head's logits: `forward(pixels)`
    -> {"logits": (B, C)}; with text, the dual encoder's outputs. One forward per micro-batch, so DDP
    sees one call. The head (`classifier_head`) is attached by the task's `configure`."""

    def forward(self, pixels, input_ids=None, attention_mask=None, bank=None, **text_tokens):
        if input_ids is None:
            return {"logits": self.classifier_head(pixel_features(self, pixels))}
        return super().forward(pixels, input_ids, attention_mask, bank, **text_tokens)


class ClassificationTask:
    needs = Needs(sample="label", views=1)
    find_unused_parameters = False  # the text tower is frozen; every parameter that learns is in the forward

    def __init__(self, cfg, rank: int = 0, world: int = 1):
        self.cfg = cfg
        folder = Path(cfg.data.train).parent / LP_FOLDER
        config = read_classifier_config(folder)
        self.classes = config["classes"]
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.start_head = read_head(folder, config)
        self.trained_head = None

    def prepare_assets(self, dataset, out_dir: Path) -> None:
        pass  # the dual encoder comes with its tokenizer (train --init)

    def build_model(self, cfg, assets: Path, pretrained: bool) -> nn.Module:
        from visembed.models.towers import build_text, build_vision

        return ClassifierDualEncoder(cfg.model, build_vision(cfg.model, pretrained), build_text(cfg.model, assets))

    def configure(self, model: nn.Module) -> None:
        """The image tower and its projection learn (BatchNorm statistics of groups a tower keeps
        locked stay as they are), the text tower does not; the head is attached here."""
        model.without_feature_cache()
        model.requires_grad_(False)
        model.vision.requires_grad_(True)
        model.visual_projection.requires_grad_(True)
        model.classifier_head = HeadModule(self.start_head, trainable=True)

    def fields(self, samples: list) -> dict:
        return {"labels": torch.tensor([self.index.get(s.label, -100) for s in samples], dtype=torch.long)}

    def prepare(self, model: nn.Module, dataset, *, fresh: bool, progress: bool) -> None:
        pass

    def backward(self, model: nn.Module, micro_batches: list[MicroBatch], autocast: Autocast) -> dict[str, float]:
        total, correct, seen = 0.0, 0, 0
        last = len(micro_batches) - 1
        for j, micro in enumerate(micro_batches):
            labels = micro["labels"].to(micro["pixels"].device)
            with no_sync(model, sync=j == last):  # DDP averages the gradients once, at the end
                with autocast():
                    logits = model(micro["pixels"])["logits"]
                loss = F.cross_entropy(logits.float(), labels, ignore_index=-100) / len(micro_batches)
                loss.backward()
            total += float(loss.detach())
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        return {"loss": total, "train_top1": correct / max(seen, 1)}

    def finalize(self, model: nn.Module) -> None:
        head = model.classifier_head
        del model.classifier_head
        self.trained_head = head.to_head(copy.deepcopy(self.start_head))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


def finetune_classifier(model_dir, spec: str, out, *, shots: int = 16, seed: int = 0, split: str = "train",
                        templates=None, wise_alpha: float | None = None, steps: int | None = None,
                        batch_size: int = FINETUNE_BATCH, lr: float = FINETUNE_LR, progress: bool = True,
                        eval_split: str | None = "test", augment: bool = True, **data_options) -> dict:
    """LP (zs-probe on cached features) -> FT (the training loop, in `OUT.work/run`, resumable) ->
    WiSE-FT with the zero-shot model -> the classifier folder `out` (its dual encoder in `out/model`).
    `augment`: the loop's augmentation of the shots (`data.augment`). Under `torchrun` every rank
    trains its share of each batch; rank 0 alone fits the LP head, writes files, evaluates and returns
    the summary (the other ranks return {})."""
    from visembed.distributed import cleanup, init_distributed, reduce_number

    alpha = WISE_ALPHA if wise_alpha is None else float(wise_alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--wise-alpha must be in [0, 1], got {alpha}")
    if shots < 1:
        raise ValueError("--method finetune needs labelled shots (--shots 1 or more)")
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty; choose a new --out")
    work = out.with_name(out.name + ".work")
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world, _, _ = init_distributed()  # under torchrun: the group the training loop then uses
    try:
        failure = None
        if rank == 0:
            try:
                _fit_lp(model_dir, spec, work, shots=shots, seed=seed, templates=templates, split=split,
                        progress=progress, data_options=data_options)
                init_without_feature_cache(model_dir, work)
            except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised as it is
                failure = err
        # the other ranks read the shots, the LP head and the init folder rank 0 wrote, or stop with it
        if reduce_number(int(failure is not None)):
            if failure is not None:
                raise failure
            raise ValueError(f"rank {rank}: rank 0 could not prepare the fine-tuning (its error says why)")
        init = init_without_feature_cache(model_dir, work)
        result = _fine_tune(model_dir, init, spec, out, work, rank=rank, world=world, shots=shots, seed=seed,
                            split=split, alpha=alpha, steps=steps, batch_size=batch_size, lr=lr, progress=progress,
                            eval_split=eval_split, augment=augment, data_options=data_options)
    finally:
        if world > 1 and not joined:
            cleanup()
    return result


def _fit_lp(model_dir: Path, spec: str, work: Path, *, shots, seed, templates, split, progress, data_options) -> None:
    """LP: the zs-probe head on the shots (`work/LP_FOLDER`) and the shots' manifest, unless a
    resumed run already has them."""
    from visembed.classify.run import fit_classifier
    from visembed.models.inference import Model

    lp_dir = work / LP_FOLDER
    if (lp_dir / "classifier.json").is_file():
        return
    import shutil

    shutil.rmtree(lp_dir, ignore_errors=True)
    model = Model.from_folder(model_dir, "cpu")
    fit_classifier(model, model_dir, spec, lp_dir, method="zs-probe", shots=shots, seed=seed, templates=templates,
                   split=split, eval_split=None, progress=progress, **data_options)
    _write_shots(model, model_dir, spec, split, shots, seed, work / SHOTS_FILE, data_options)


def _fine_tune(model_dir: Path, init: Path, spec: str, out: Path, work: Path, *, rank, world, shots, seed, split,
               alpha, steps, batch_size, lr, progress, eval_split, augment, data_options) -> dict:
    """FT on every rank, then (rank 0) WiSE-FT and the classifier folder."""
    from visembed.atomic import atomic_write_text, new_dir
    from visembed.checkpoint import read_config
    from visembed.classify.folder import save_classifier
    from visembed.classify.run import model_card
    from visembed.config import apply_overrides
    from visembed.models.merge import merge_models
    from visembed.train.loop import train

    lp_dir = work / LP_FOLDER
    lp_config = read_classifier_config(lp_dir)
    cfg = read_config(model_dir)
    steps = steps or FINETUNE_STEPS
    cfg = apply_overrides(cfg, [f"data.train={work / SHOTS_FILE}", "data.val=", f"train.steps={steps}",
                                f"train.batch_size={batch_size}", f"train.lr={lr}", f"train.seed={seed}",
                                f"train.warmup_steps={max(1, steps // 10)}", f"train.checkpoint_every={steps}",
                                "train.epochs=0", "model.vision.feature_cache=0",
                                f"data.augment.enabled={str(augment).lower()}"])
    run_dir = work / RUN_FOLDER
    task = ClassificationTask(cfg, rank, world)
    metrics = train(cfg, run_dir, init=init, resume=run_dir.exists(), progress=progress, task=task)
    head = task.trained_head
    if head is None:
        raise RuntimeError("fine-tuning ended without a head")
    if rank != 0:
        return {}
    start = read_head(lp_dir, lp_config)
    head.weight = alpha * head.weight
    head.bias = alpha * head.bias
    head.zs_weight = (1 - alpha) * start.zs_weight + alpha * head.zs_weight
    info = {"data": spec, "split": split, "shots": shots, "seed": seed, "steps": steps, "lr": lr,
            "wise_alpha": alpha, "images_used": lp_config["fit"]["images_used"], "fit_seconds": None,
            "notes": lp_config["fit"].get("notes", []), "final_train_loss": metrics.get("loss")}
    with new_dir(out) as tmp:
        merge_models(init, run_dir, alpha, tmp / "model")
        save_classifier(tmp, head, lp_config["classes"], "model", method="finetune", fit_info=info,
                        card=model_card("finetune", head.features, lp_config["classes"], {**info, "fit_seconds": "-"},
                                        model_dir))
    if eval_split:
        from visembed.classify.folder import Classifier
        from visembed.classify.run import evaluate_classifier
        from visembed.data import DataError

        try:
            figures = evaluate_classifier(Classifier.from_folder(out, "cpu"), spec, eval_split, progress=progress,
                                          **data_options)
            info["eval"] = {k: v for k, v in figures.items() if k != "per_class_recall"}
            atomic_write_text(out / "README.md", model_card("finetune", head.features, lp_config["classes"],
                                                            {**info, "fit_seconds": "-"}, model_dir))
        except DataError:
            pass
    return {"out": str(out), "method": "finetune", "features": head.features, "classes": len(lp_config["classes"]),
            **info}


def init_without_feature_cache(model_dir: Path, work: Path) -> Path:
    """The folder fine-tuning starts from. A model whose locked tower keeps a feature cache (the demo
    model's: 50,000 images) is copied to `work/init` with the cache off: the training loop takes the
    init folder's architecture, and a feature cache beside augmentation is a config the check refuses
    when the run is resumed or merged (WiSE-FT); the run trains without it anyway (`configure`). The
    weights are hard-linked where the file system allows (else copied)."""
    import os
    import shutil

    from visembed.atomic import atomic_write_json

    raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vision = raw.get("model", {}).get("vision", {})
    if not vision.get("feature_cache"):
        return model_dir
    init = work / "init"
    if (init / "config.json").is_file():
        return init
    shutil.rmtree(init, ignore_errors=True)
    init.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name == "config.json":
            continue
        if item.is_dir():
            shutil.copytree(item, init / item.name)
            continue
        try:
            os.link(item, init / item.name)
        except OSError:
            shutil.copy2(item, init / item.name)
    vision["feature_cache"] = 0
    atomic_write_json(init / "config.json", raw)  # written last: its presence says the copy is whole
    return init


def _write_shots(model, model_dir, spec, split, shots, seed, path: Path, data_options: dict) -> None:
    """The drawn shots as a manifest (image path, caption = label, label) the training loop reads:
    the same draw as the probe's (`draw_shots` with the same seed over the same features)."""
    from visembed.atomic import atomic_write_text
    from visembed.classify.features import dataset_features
    from visembed.classify.run import training_classes
    from visembed.classify.shots import class_index, draw_shots
    from visembed.data import DataError, open_dataset

    fs = dataset_features(model, spec, split, model_dir=model_dir, progress=False, **data_options)
    classes = training_classes(fs, spec)
    y = class_index(fs.labels, classes)
    chosen, _ = draw_shots(y, len(classes), shots, seed)
    wanted = {fs.ids[i] for i in chosen}
    rows = []
    for part in [s for s in split.split("+") if s]:
        for sample in open_dataset(spec, part, need="label", **data_options):
            if sample.id in wanted:
                image = sample.path or (sample.image if isinstance(sample.image, str) else None)
                if image is None:
                    raise DataError(f"{spec}: fine-tuning needs images stored as files (sample {sample.id})")
                rows.append({"image": str(Path(image).resolve()), "caption": str(sample.label),
                             "label": str(sample.label), "id": sample.id})
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

"""The task seam: the loop trains whatever a task defines, with the loop's own qualities (logs,
checkpoints, exact resume) and its guards (a diverging loss stops the run, nothing is saved); a
task says what it needs of a sample and how many views, and caption-less samples reach a task that
needs no caption."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from visembed.config import apply_overrides, load_preset
from visembed.data import ListDataset, SkipCounter, load_image, open_dataset
from visembed.models import build_vision
from visembed.train.batch import Needs
from visembed.train.loader import StepLoader
from visembed.train.loop import TrainingDiverged, train
from visembed.train.tasks import build_task, register_task
from visembed.train.tasks.contrastive import ContrastiveTask

QUICK = ["train.warmup_steps=1", "data.train=builtin:shapes?n=96", "train.batch_size=16", "train.log_every=1"]


class MeanColourTask(ContrastiveTask):
    """A toy objective: the first three image-embedding dimensions predict the image's mean colour.
    It keeps the contrastive task's assets (the BPE vocabulary) and replaces its loss."""

    def __init__(self, cfg, scale=1.0):
        super().__init__(cfg)
        self.find_unused_parameters = True  # the text tower takes no part
        self.scale, self.calls = scale, []

    def prepare(self, model, dataset, *, fresh, progress):
        self.calls.append(("prepare", fresh))

    def backward(self, model, micro_batches, autocast):
        total = sum(len(micro["pixels"]) for micro in micro_batches)
        losses = []
        for micro in micro_batches:
            pixels = micro["pixels"]
            with autocast():
                predicted = model.encode_image(pixels)[:, :3]  # (b, 3)
                target = pixels.mean(dim=(2, 3))  # (b, 3)
                loss = self.scale * F.mse_loss(predicted, target, reduction="sum") / total
            loss.backward()
            losses.append(loss.item())
        return {"loss": sum(losses), "mse": sum(losses) / self.scale}

    def evaluate(self, model):
        return {"val_probe": 1.0}


class ImageOnly(nn.Module):
    """An image tower and a small head, no text tower: what image-only pretraining trains."""

    def __init__(self, cfg, pretrained):
        super().__init__()
        self.vision = build_vision(cfg.model, pretrained)
        self.head = nn.Linear(self.vision.width, 16)

    def forward(self, pixels):
        return F.normalize(self.head(self.vision(pixels)), dim=-1)  # (b, 16)

    def save_assets(self, out_dir):
        pass  # no tokenizer

    # what the optimiser asks of every model (`visembed.train.optim.Trainable`)
    def layer_groups(self):
        return self.vision.layer_groups()

    def no_weight_decay(self):
        return {f"vision.{name}" for name in self.vision.no_weight_decay()}


class TwoViewTask:
    """A toy image-only objective (SimCLR's in miniature): two augmented views of each image are
    pulled together, the batch's other images pushed away. It needs nothing of a sample but its
    image, and builds its own model."""

    needs = Needs(sample="nothing", views=2)
    find_unused_parameters = False

    def __init__(self, cfg, rank=0, world=1):
        self.cfg, self.keys, self.views_differ = cfg, set(), []

    def prepare_assets(self, dataset, out_dir):
        pass

    def build_model(self, cfg, assets, pretrained):
        return ImageOnly(cfg, pretrained)

    def configure(self, model):
        pass

    def fields(self, samples):
        return {"ids": [sample.id for sample in samples]}

    def prepare(self, model, dataset, *, fresh, progress):
        pass

    def backward(self, model, micro_batches, autocast):
        total, agreement = 0.0, []
        for micro in micro_batches:
            self.keys |= set(micro)
            self.views_differ.append(not torch.equal(micro["pixels"], micro["pixels_2"]))
            with autocast():
                a, b = model(micro["pixels"]), model(micro["pixels_2"])  # (b, 16) each
                logits = a @ b.T / 0.2
                target = torch.arange(len(a))
                loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / (2 * len(micro_batches))
            loss.backward()
            total += loss.item()
            agreement.append((a * b).sum(dim=-1).mean().item())
        return {"loss": total, "view_agreement": sum(agreement) / len(agreement)}

    def finalize(self, model):
        pass

    def evaluate(self, model):
        return {}


register_task("two_views", TwoViewTask)


def _captionless_folder(folder) -> str:
    """A plain folder of photos: the shapes images written out without any caption file."""
    folder.mkdir()
    for sample in open_dataset("builtin:shapes?n=96"):
        load_image(sample.image).save(folder / f"{sample.id}.png")
    return str(folder)


def _log(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_second_task_trains_through_the_same_loop_and_resumes_exactly(tmp_path):
    cfg = apply_overrides(load_preset("tiny"), QUICK + ["train.steps=6", "train.checkpoint_every=3", "train.lr=3e-3"])
    task = MeanColourTask(cfg)
    final = train(cfg, tmp_path / "whole", progress=False, task=task)
    steps = [line for line in _log(tmp_path / "whole") if "lr" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4, 5, 6]
    assert all(set(line) >= {"loss", "mse", "samples_per_s"} for line in steps)  # its named losses are logged
    assert steps[-1]["mse"] < steps[0]["mse"]  # it learns
    assert final["val_probe"] == 1.0 and "mse" in final and "logit_scale" not in final
    assert task.calls == [("prepare", True)]

    resumed_dir = tmp_path / "resumed"
    train(cfg, resumed_dir, progress=False, task=MeanColourTask(cfg))
    (resumed_dir / "model.safetensors").unlink()
    shutil.rmtree(resumed_dir / "checkpoints" / "step_00000006")  # as if killed during step 4
    again = MeanColourTask(cfg)
    train(cfg, resumed_dir, resume=True, progress=False, task=again)
    assert again.calls == [("prepare", False)]  # a resumed run does not warm up again
    whole, resumed = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(resumed_dir / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_diverging_loss_stops_the_run_naming_the_step_and_saves_no_model(tmp_path):
    cfg = apply_overrides(load_preset("tiny"), QUICK + ["train.steps=4", "train.checkpoint_every=1"])
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) at step 1.*train\.lr"):
        train(cfg, tmp_path / "run", progress=False, task=MeanColourTask(cfg, scale=math.inf))
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_without_one_usable_sample_fails_and_saves_nothing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    manifest = data / "train.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"gone{i}.png", "caption": f"caption {i}"}) + "\n" for i in range(20)))
    cfg = apply_overrides(load_preset("tiny"), QUICK + [f"data.train={manifest}", "train.steps=3", "train.checkpoint_every=2"])
    with pytest.raises(ValueError, match="usable"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_captionless_two_view_task_trains_logs_and_resumes_exactly(tmp_path):
    data = _captionless_folder(tmp_path / "photos")
    cfg = apply_overrides(load_preset("tiny"), QUICK + ["train.task=two_views", "train.steps=6", f"data.train={data}",
                                                        "train.checkpoint_every=3", "train.lr=3e-3"])
    assert isinstance(build_task(cfg, 0, 1), TwoViewTask)  # train.task names it
    task = TwoViewTask(cfg)
    final = train(cfg, tmp_path / "whole", progress=False, task=task)
    assert task.keys == {"pixels", "pixels_2", "ids"}  # its fields and two views, nothing it did not ask for
    assert all(task.views_differ)  # two augmented draws, not one image twice
    assert final["skipped_total"] == 0  # every caption-less sample reached it
    steps = [line for line in _log(tmp_path / "whole") if "lr" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4, 5, 6]
    assert all("view_agreement" in line for line in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns

    resumed_dir = tmp_path / "resumed"
    train(cfg, resumed_dir, progress=False)  # built from train.task this time
    (resumed_dir / "model.safetensors").unlink()
    shutil.rmtree(resumed_dir / "checkpoints" / "step_00000006")  # as if killed during step 4
    train(cfg, resumed_dir, resume=True, progress=False)
    whole, resumed = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(resumed_dir / "model.safetensors"))
    assert whole.keys() == resumed.keys() and "head.weight" in whole
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_an_unknown_task_name_is_a_config_error_naming_the_key():
    cfg = apply_overrides(load_preset("tiny"), ["train.task=no_such_task"])
    with pytest.raises(ValueError, match=r"train\.task.*'contrastive'.*'two_views'"):
        build_task(cfg, 0, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_keeps_what_a_task_needs_and_counts_what_it_skips(workers):
    cfg = apply_overrides(load_preset("tiny"), ["train.batch_size=8", f"data.num_workers={workers}"])
    samples = ListDataset([dataclasses.replace(s, caption="" if i % 2 else s.caption, label=None if i % 4 == 0 else s.label)
                           for i, s in enumerate(list(open_dataset("builtin:shapes?n=32"))[:8])])
    for need, kept, skipped in (("nothing", 8, {}), ("caption", 4, {"empty_caption": 4}),
                                ("label", 6, {"missing_label": 2})):
        task = TwoViewTask(cfg)
        task.needs = Needs(sample=need, views=2)
        loader = StepLoader(samples, cfg, 0, 1, 0, task)
        counter = SkipCounter()
        (micro,) = loader.load(0, counter)
        loader.close()
        assert micro["pixels"].dtype == torch.uint8 and len(micro["pixels"]) == len(micro["ids"]) == kept, need
        assert counter.as_dict() == skipped, need

"""The task seam: the loop trains whatever a task defines, with the loop's own qualities (logs,
checkpoints, exact resume) and its guards (a diverging loss stops the run, nothing is saved)."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from visembed.config import apply_overrides, load_preset
from visembed.train.loop import TrainingDiverged, train
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
        total = sum(len(texts) for _, texts in micro_batches)
        losses = []
        for pixels, texts in micro_batches:
            with autocast():
                predicted = model.encode_image(pixels)[:, :3]  # (b, 3)
                target = pixels.mean(dim=(2, 3))  # (b, 3)
                loss = self.scale * F.mse_loss(predicted, target, reduction="sum") / total
            loss.backward()
            losses.append(loss.item())
        return {"loss": sum(losses), "mse": sum(losses) / self.scale}

    def evaluate(self, model):
        return {"val_probe": 1.0}


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

"""Image-only pretraining (issue #20): NT-Xent against a naive loop, the `simclr` and `slip` tasks
through the one loop (caption-less data, exact resume, accumulation keeping every negative), and a
simclr model folder used as any other (load, index, ONNX, --init, eval), its text side refused."""

from __future__ import annotations

import contextlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visembed
from visembed.config import ConfigError, apply_overrides, load_preset, trains_text_tower
from visembed.data import open_dataset
from visembed.losses import NTXentLoss, nt_xent_loss
from visembed.models.inference import TextTowerUntrained
from visembed.train.loop import train
from visembed.train.tasks import build_task

QUICK = ["train.warmup_steps=1", "data.train=builtin:shapes?n=96", "train.batch_size=16", "train.log_every=1",
         "train.lr=3e-3"]


def _cfg(*extra):
    return apply_overrides(load_preset("tiny"), [*QUICK, *extra])


def _log(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _image_folder(folder, n=48):
    """A plain folder of images, no captions, no labels: what a user's unlabelled photos look like."""
    from visembed.data import load_image

    folder.mkdir()
    for i, sample in enumerate(list(open_dataset("builtin:shapes?n=96"))[:n]):
        load_image(sample.image).save(folder / f"{i:03d}.png")
    return folder


# ---- the loss ------------------------------------------------------------------------------


def naive_nt_xent(a, b, t):
    views = a.tolist() + b.tolist()
    n = len(a)
    total = 0.0
    for i, zi in enumerate(views):
        partner = (i + n) % (2 * n)
        logits = {j: sum(x * y for x, y in zip(zi, zj)) / t for j, zj in enumerate(views) if j != i}
        total += -logits[partner] + math.log(sum(math.exp(v) for v in logits.values()))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_a_naive_loop_and_prefers_matching_views(t):
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    assert nt_xent_loss(a, b, t).item() == pytest.approx(naive_nt_xent(a, b, t), rel=1e-9)
    close = F.normalize(a + 0.05 * b, dim=-1)  # each image's second view near its first
    assert nt_xent_loss(a, close, t) < nt_xent_loss(a, b, t)
    out = NTXentLoss(t)(a.float().requires_grad_(), b.float())
    assert set(out) == {"simclr_loss"} and out["simclr_loss"].dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


# ---- the tasks -----------------------------------------------------------------------------


def test_simclr_trains_on_captionless_images_and_saves_a_plain_dual_encoder(tmp_path):
    cfg = _cfg("train.task=simclr", "train.steps=6", "train.checkpoint_every=3", "data.augment.enabled=false",
               "train.simclr.views.crop_scale=[0.5,1.0]", f"data.train={_image_folder(tmp_path / 'photos', n=96)}")
    final = train(cfg, tmp_path / "run", progress=False)
    assert final["skipped_total"] == 0  # no sample was dropped for lacking a caption
    steps = [line for line in _log(tmp_path / "run") if "lr" in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6] and all("view_agreement" in s for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert {k for k in ckpt if k.startswith("ssl_head.")} and not {k for k in saved if k.startswith("ssl_head.")}
    assert saved.keys() == ckpt.keys() - {k for k in ckpt if k.startswith("ssl_head.")}
    # the text side took no part: it is exactly as initialised (a same-seed 0-lr run)
    still = apply_overrides(cfg, ["train.steps=1", "train.lr=0"])
    train(still, tmp_path / "init", progress=False)
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    for name in saved:
        if name.startswith(("text.", "text_projection", "logit_scale")):
            assert torch.equal(saved[name], init[name]), name
    assert not torch.equal(saved["visual_projection.weight"], init["visual_projection.weight"])

    model = visembed.load(tmp_path / "run")
    images = [s.image for s in list(open_dataset("builtin:shapes?n=96"))[:3]]
    vectors = model.encode_image(images)
    assert vectors.shape == (3, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    with pytest.raises(TextTowerUntrained, match="trained on images alone.*search by image"):
        model.encode_text(["a red circle"])


def test_simclr_resumes_exactly_and_accumulation_keeps_every_negative(tmp_path):
    cfg = _cfg("train.task=simclr", "train.steps=4", "train.checkpoint_every=2")
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "resumed", progress=False)
    (tmp_path / "resumed" / "model.safetensors").unlink()
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000004")  # as if killed during step 3
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    whole, resumed = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "resumed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    # 2 micro-batches of 8 give the gradient of one batch of 16 (negatives from both micro-batches)
    views_off = ["data.augment.enabled=false", "train.simclr.views.enabled=false"]
    grads = {}
    for name, extra in (("one", []), ("accumulated", ["train.accum_steps=2", "train.batch_size=8"])):
        c = _cfg("train.task=simclr", *views_off, *extra)
        task = build_task(c, 0, 1)
        torch.manual_seed(0)
        model = task.build_model(c, tmp_path / "whole", pretrained=False)
        task.configure(model)
        pixels = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        second = (pixels + 0.1 * torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
        size = 16 // c.train.accum_steps
        micro = [{"pixels": pixels[i : i + size], "pixels_2": second[i : i + size]} for i in range(0, 16, size)]
        task.backward(model, micro, contextlib.nullcontext)
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["one"].keys() == grads["accumulated"].keys() and "ssl_head.0.weight" in grads["one"]
    for n in grads["one"]:
        torch.testing.assert_close(grads["accumulated"][n], grads["one"][n], atol=1e-6, rtol=1e-4, msg=n)


def test_slip_trains_both_losses_and_keeps_its_text_tower(tmp_path):
    cfg = _cfg("train.task=slip", "train.steps=4", "train.checkpoint_every=0")
    final = train(cfg, tmp_path / "run", progress=False)
    steps = [line for line in _log(tmp_path / "run") if "lr" in line]
    assert all({"clip_loss", "simclr_loss", "logit_scale"} <= set(s) for s in steps)
    assert steps[-1]["loss"] == pytest.approx(steps[-1]["clip_loss"] + steps[-1]["simclr_loss"], rel=1e-5)
    assert "val_text_to_image_R@1" in final  # retrieval is measured: it has a text tower
    assert not {k for k in load_file(str(tmp_path / "run" / "model.safetensors")) if k.startswith("ssl_head.")}
    assert visembed.load(tmp_path / "run").encode_text(["a red circle"]).shape == (1, 64)
    with pytest.raises(ConfigError, match="caption_bank_weight"):
        build_task(apply_overrides(cfg, ["train.contrastive.caption_bank_weight=1"]), 0, 1)


def test_task_settings_are_checked_and_image_only_tasks_are_known():
    for bad, key in (("train.simclr.temperature=0", "train.simclr.temperature"),
                     ("train.slip.simclr_weight=-1", "train.slip.simclr_weight"),
                     ("train.simclr.views.crop_scale=[0.5,0.2]", "train.simclr.views.crop_scale"),
                     ("train.simclr.head_input=middle", "train.simclr.head_input")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            _cfg(bad)
    assert not trains_text_tower(_cfg("train.task=simclr")) and trains_text_tower(_cfg("train.task=slip"))


# ---- the model folder, used as any other ----------------------------------------------------


@pytest.fixture(scope="module")
def simclr_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl") / "simclr"
    train(_cfg("train.task=simclr", "train.steps=3", "train.checkpoint_every=0"), out, progress=False)
    return out


def test_init_continues_pretraining_and_a_clip_run_starts_from_it(simclr_folder, tmp_path):
    more = train(_cfg("train.task=simclr", "train.steps=2"), tmp_path / "more", init=simclr_folder, progress=False)
    assert more["step"] == 2
    clip = train(_cfg("train.steps=2"), tmp_path / "clip", init=simclr_folder, progress=False)
    assert "val_text_to_image_R@1" in clip
    assert visembed.load(tmp_path / "clip").encode_text(["a red circle"]).shape == (1, 64)  # text trained now


def test_eval_reports_probe_and_knn_and_no_text_metrics(simclr_folder):
    from visembed.eval.run import evaluate_folder

    metrics = evaluate_folder(simclr_folder, "builtin:shapes?n=96", "test", progress=False)
    assert {"probe_top1", "knn_top1"} <= set(metrics) and 0 <= metrics["probe_top1"] <= 1
    assert not any("text" in key or "zeroshot" in key for key in metrics)
    with pytest.raises(ValueError, match="split other than train"):
        evaluate_folder(simclr_folder, "builtin:shapes?n=96", "train", progress=False)


# ---- the loop's qualities, as `visembed train` runs them -------------------------------------

REPO = __import__("pathlib").Path(visembed.__file__).resolve().parents[1]
CLI_ENV = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread each: 2 cores


def _cli(out, *args, torchrun=False):
    import os
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "visembed.cli", "train", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **CLI_ENV},
                            cwd=REPO)


def _finish(proc):
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_simclr_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    import signal
    import time

    from visembed.checkpoint import latest_checkpoint

    # both views augmented (data.augment and the SimCLR views): a resumed run draws the same ones
    args = ["--data", "builtin:shapes?n=400", "--preset", "tiny", "--steps", "8", "--batch-size", "24",
            "--checkpoint-every", "2", "--seed", "7", "--no-progress", "--set", "train.warmup_steps=2",
            "--set", "train.task=simclr"]
    whole, killed = _cli(tmp_path / "whole", *args), _cli(tmp_path / "killed", *args)
    deadline = time.time() + 300
    while latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"
    assert "resuming from" in _finish(_cli(tmp_path / "killed", *args, "--resume"))
    _finish(whole)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "killed"))
    assert a.keys() == b.keys()
    assert not [name for name in a if not torch.equal(a[name], b[name])]


@pytest.mark.slow
def test_simclr_on_two_processes_trains_like_one_with_the_whole_batch(tmp_path):
    """2 ranks x 32 images against 1 x 64: the negatives of the other rank are gathered, so the
    weights agree (each rank would draw its own augmentations: views off, the views then identical)."""
    args = ["--data", "builtin:shapes?n=200", "--preset", "tiny", "--steps", "2", "--batch-size", "64",
            "--checkpoint-every", "100", "--no-progress", "--set", "data.augment.enabled=false",
            "--set", "train.simclr.views.enabled=false", "--set", "train.task=simclr", "--set", "train.lr=1e-2"]
    one, two = _cli(tmp_path / "one", *args), _cli(tmp_path / "two", *args, torchrun=True)
    _finish(one)
    _finish(two)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    assert json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])["world_size"] == 2


def test_an_index_of_an_image_only_model_searches_by_image_and_refuses_text(simclr_folder, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from visembed.cli import app
    from visembed.index import Searcher
    from visembed.serve.app import create_app

    runner = CliRunner()
    index_dir = tmp_path / "index"
    built = runner.invoke(app, ["index", "build", str(simclr_folder), "--data", "builtin:shapes?n=30", "--out",
                                str(index_dir), "--quiet"])
    assert built.exit_code == 0, built.output
    searcher = Searcher.open(index_dir)
    example = tmp_path / "example.png"
    first = searcher.store.ids()[0]
    example.write_bytes(searcher.thumbnail(first)[0])
    hits = json.loads(runner.invoke(app, ["search", str(index_dir), "--image", str(example), "-k", "3", "--json"]).output)
    assert hits[0]["id"] == first  # image -> image search works
    refused = runner.invoke(app, ["search", str(index_dir), "a red circle", "--json"])
    assert refused.exit_code == 2 and "trained on images alone" in refused.output and "Traceback" not in refused.output
    with TestClient(create_app(index_dir), base_url="http://localhost") as client:
        answer = client.get("/search", params={"q": "a red circle"})
        assert answer.status_code == 422 and "images alone" in answer.json()["detail"]


def test_an_image_only_model_exports_to_onnx(simclr_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from visembed.interop.onnx import export_onnx

    export_onnx(simclr_folder, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "image.onnx").is_file() or any(p.suffix == ".onnx" for p in (tmp_path / "onnx").iterdir())

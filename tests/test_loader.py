"""The training loader: worker processes, WebDataset shards read through their index, and what stays
as it was (a step's samples depend on the step alone; 2 ranks load what 1 process loads; broken
images are skipped and counted wherever they are decoded)."""

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file

import visembed
from visembed.config import apply_overrides, load_preset
from visembed.data import ListDataset, Sample, SkipCounter, open_dataset
from visembed.data.gpu_decode import GpuJpegDecoder
from visembed.train.batch import Needs
from visembed.train.loader import StepLoader

REPO = Path(visembed.__file__).resolve().parents[1]


class IdsTask:
    """What the loader asks of a task, and nothing more: each micro-batch carries its samples' ids."""

    needs = Needs(sample="caption")

    @staticmethod
    def fields(samples):
        return {"ids": [s.id for s in samples]}


def _jpeg(color, size=(20, 14)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_shards(folder: Path, shards: int, per_shard: int, odd=()) -> list[str]:
    """Shards of `per_shard` samples "s{shard}-{i}"; keys in `odd` get no image or a blank caption."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i in range(per_shard):
                key = f"s{shard}-{i}"
                record = {"__key__": key, "jpg": _jpeg((shard * 40, i * 9 % 256, 100)), "txt": f"sample {key}",
                          "json": '{"n": %d}' % i}
                if key in odd:
                    record.pop("jpg") if i % 2 else record.update(txt="  ")
                else:
                    ids.append(key)
                sink.write(record)
    return ids


def _cfg(*overrides):
    return apply_overrides(load_preset("tiny"), ["model.vision.image_size=16", *overrides])


def _loaded_ids(dataset, cfg, rank, world, steps, start=0):
    loader = StepLoader(dataset, cfg, rank, world, start * cfg.train.batch_size * cfg.train.accum_steps, IdsTask())
    counter = SkipCounter()
    try:
        batches = [loader.load(step, counter) for step in range(start, start + steps)]
    finally:
        loader.close()
    return [[micro.get("ids", []) for micro in batch] for batch in batches], [
        [micro["pixels"] for micro in batch] for batch in batches], counter


# ---- WebDataset shards through their index ------------------------------------------------------


def test_the_shard_index_gives_the_stream_s_samples_in_its_order(tmp_path):
    _write_shards(tmp_path, 3, 5, odd={"s0-1", "s1-2", "s2-3"})
    source = open_dataset(str(tmp_path / "{00000..00002}.tar"))
    streamed = list(source)
    assert source.skipped.as_dict() == {"empty_caption": 1, "missing_image": 2}
    index = source.indexed()
    assert [s.id for s in index] == [s.id for s in streamed] and len(index) == 12
    for a, b in zip(index, streamed):
        assert (a.image, a.caption, a.meta) == (b.image, b.caption, b.meta)
    # the index counts what it leaves out once, for the same reasons, into the source's counter
    assert index.skipped is source.skipped and source.skipped.as_dict() == {"empty_caption": 2, "missing_image": 4}
    assert [s.id for s in open_dataset(str(tmp_path)).indexed()] == [s.id for s in streamed]  # a folder of shards


def test_every_shard_sample_is_loaded_once_per_epoch_across_2_ranks_x_2_workers(tmp_path):
    ids = _write_shards(tmp_path, 4, 12)
    cfg = _cfg("train.batch_size=8", "train.accum_steps=2", "data.num_workers=2", "data.prefetch=1")
    steps = len(ids) // 16  # one epoch: 3 steps of 16
    ranks = [_loaded_ids(open_dataset(str(tmp_path)), cfg, rank, 2, steps)[0] for rank in (0, 1)]
    loaded = [i for rank in ranks for batch in rank for micro in batch for i in micro]
    assert sorted(loaded) == sorted(ids)  # every sample once: no duplicates, no losses
    # and rank 0's slice then rank 1's of each micro-batch is what one process loads
    one = _loaded_ids(open_dataset(str(tmp_path)), cfg, 0, 1, steps)[0]
    assert [[r0 + r1 for r0, r1 in zip(b0, b1)] for b0, b1 in zip(*ranks)] == one
    assert [i for batch in one for micro in batch for i in micro] == ids  # in stream order, as streamed before
    shuffled = _loaded_ids(open_dataset(str(tmp_path)), _cfg("train.batch_size=16", "data.shard_order=shuffled"), 0, 1,
                           steps)[0]
    order = [i for batch in shuffled for micro in batch for i in micro]
    assert sorted(order) == sorted(ids) and order != ids


# ---- worker processes keep the guarantees -------------------------------------------------------


def _with_broken_images(n=30):
    samples = list(open_dataset("builtin:shapes?n=60"))[:n]
    broken = {3: b"", 7: b"\xff\xd8\xff\xe0 not a jpeg at all", 8: _jpeg("red")[:60], 21: b"GIF89a..."}
    return ListDataset([dataclasses.replace(s, image=broken.get(i, s.image)) for i, s in enumerate(samples)])


def test_workers_load_what_the_training_process_loads_and_count_broken_images(tmp_path):
    dataset = _with_broken_images()
    runs = {}
    for workers in (0, 2):
        cfg = _cfg("train.batch_size=6", f"data.num_workers={workers}")
        runs[workers] = _loaded_ids(dataset, cfg, 0, 1, steps=7)  # 42 samples: across an epoch boundary
    (ids0, pixels0, skipped0), (ids2, pixels2, skipped2) = runs[0], runs[2]
    assert ids2 == ids0
    assert all(torch.equal(a, b) for step0, step2 in zip(pixels0, pixels2) for a, b in zip(step0, step2))
    # 4 broken images in the epoch, some seen twice in 42 draws of 30: counted in the workers, all of them
    assert skipped2.as_dict() == skipped0.as_dict() and sum(skipped2.as_dict().values()) >= 4
    assert set(skipped2.as_dict()) <= {"empty_file", "unreadable", "truncated"}


def test_a_loader_started_at_a_later_step_loads_what_an_uninterrupted_one_did(tmp_path):
    _write_shards(tmp_path, 2, 10)
    cfg = _cfg("train.batch_size=6", "data.num_workers=2")
    whole = _loaded_ids(open_dataset(str(tmp_path)), cfg, 0, 1, steps=6)[0]
    resumed = _loaded_ids(open_dataset(str(tmp_path)), cfg, 0, 1, steps=2, start=4)[0]
    assert resumed == whole[4:]


def test_a_worker_loader_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    _loaded_ids(_with_broken_images(), _cfg("train.batch_size=4", "data.num_workers=1"), 0, 1, steps=1)
    assert torch.equal(torch.rand(3), expected)


def test_prefetch_and_workers_are_checked():
    for key, value in (("data.prefetch", 0), ("data.num_workers", -1)):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            _cfg(f"{key}={value}")


# ---- the GPU JPEG path, on the CPU ---------------------------------------------------------------


def _pil_decode(data, device):
    """A stand-in for nvJPEG that decodes like it (uint8 (3, H, W)), failing the batch on a broken JPEG."""
    out = []
    for one in data:
        try:
            image = Image.open(io.BytesIO(one.numpy().tobytes()))
            image.load()
        except OSError as err:
            raise RuntimeError(str(err)) from err
        out.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).to(device))
    return out


def test_without_torchvision_or_cuda_the_workers_decode_on_the_cpu():
    assert GpuJpegDecoder.create("auto", None, 64) is None  # no GPU
    assert GpuJpegDecoder.create("cpu", torch.device("cpu"), 64, decode=_pil_decode) is None  # asked for the CPU
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # the case here: the CPU torch wheel
        assert GpuJpegDecoder.create("auto", torch.device("cpu"), 64) is None


def test_the_gpu_path_resizes_like_to_tensor_and_counts_what_only_the_gpu_refuses():
    photos = [_jpeg((200, 30, 30), (40, 24)), _jpeg((30, 200, 90), (17, 33)), _jpeg((9, 9, 240), (16, 16))]
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise, format="JPEG")
    truncated = noise.getvalue()[: len(noise.getvalue()) // 2]  # passes the header check, fails to decode
    png = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(png, format="PNG")
    samples = [Sample(id=str(i), image=data, caption=f"c{i}") for i, data in
               enumerate([*photos, truncated, png.getvalue(), b""])]
    counter = SkipCounter()
    items, kept = GpuJpegDecoder.prepare(samples, 16, counter, need="caption")
    assert [s.id for s in kept] == ["0", "1", "2", "3", "4"] and counter.as_dict() == {"empty_file": 1}
    assert [item.dim() for item in items] == [1, 1, 1, 1, 3]  # JPEGs stay encoded, the PNG is decoded here
    gpu = GpuJpegDecoder.create("auto", torch.device("cpu"), 16, decode=_pil_decode)
    micro = gpu.decode({"pixels": items, "_samples": kept, **IdsTask.fields(kept)}, counter, IdsTask.fields)
    assert micro["ids"] == ["0", "1", "2", "4"] and micro["pixels"].shape == (4, 3, 16, 16)  # fields remade
    assert counter.as_dict() == {"empty_file": 1, "truncated": 1}
    cpu = GpuJpegDecoder.create("cpu", None, 16)
    assert cpu is None
    from visembed.data import collate

    reference, _ = collate([samples[i] for i in (0, 1, 2, 4)], 16, SkipCounter())
    assert (micro["pixels"].int() - reference.int()).abs().max() <= 12  # bicubic in torch vs PIL: rounding


# ---- end to end: resume after SIGKILL, and 2 ranks, with worker processes -------------------------


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_with_worker_processes_matches_an_uninterrupted_run(tmp_path):
    import signal
    import time

    from visembed.checkpoint import latest_checkpoint

    args = ["--data", "builtin:shapes?n=400", "--preset", "tiny", "--steps", "8", "--batch-size", "24",
            "--checkpoint-every", "2", "--seed", "7", "--no-progress", "--set", "train.warmup_steps=2",
            "--set", "data.num_workers=2"]

    def run(out, *extra):
        return subprocess.Popen([sys.executable, "-m", "visembed.cli", "train", "--out", str(out), *args, *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)

    whole, killed = run(tmp_path / "whole"), run(tmp_path / "killed")
    deadline = time.time() + 240
    while latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"
    resumed = run(tmp_path / "killed", "--resume")
    for proc in (resumed, whole):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_ranks_with_workers_on_shards_train_like_one_process(tmp_path):
    data = tmp_path / "shards"
    out = subprocess.run([sys.executable, "-m", "visembed.cli", "shards", "builtin:shapes?n=200", "--out", str(data),
                          "--size", "32", "--shard-size", "40", "--no-progress"],
                         capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    args = ["train", "--data", str(data), "--preset", "tiny", "--steps", "2", "--batch-size", "64",
            "--checkpoint-every", "100", "--no-progress", "--set", "data.augment.enabled=false",
            "--set", "data.num_workers=1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {name: subprocess.Popen([*prefix, "-m", "visembed.cli", *args, "--out", str(tmp_path / name)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
            for name, prefix in (("one", [sys.executable]), ("two", torchrun))}
    for name, proc in runs.items():
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{text}"
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_broken_images_decoded_in_workers_reach_the_run_s_summary_and_the_weights_do_not_change(
        tmp_path, capsys, monkeypatch):
    from visembed.train import loop

    broken = _with_broken_images(40)
    monkeypatch.setattr(loop, "open_dataset", lambda *args, **options: broken)  # the training data
    runs = {}
    for workers in (0, 2):
        cfg = _cfg("train.steps=3", "train.warmup_steps=1", "train.batch_size=16", "train.checkpoint_every=100",
                   f"data.num_workers={workers}")
        runs[workers] = loop.train(cfg, tmp_path / str(workers), progress=False)
    assert runs[2]["skipped"] == runs[0]["skipped"] and runs[2]["skipped_total"] >= 4
    assert f"skipped {runs[2]['skipped_total']} input(s)" in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "0" / "model.safetensors")), load_file(str(tmp_path / "2" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

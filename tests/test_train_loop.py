"""The training loop end to end on small data, in-process: accumulation, bad input, fine-tuning, logs."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visembed.config import apply_overrides, load_preset
from visembed.train.loop import train

QUICK = ["train.steps=2", "train.warmup_steps=1", "train.checkpoint_every=100", "data.train=builtin:shapes?n=160"]


def _cfg(*overrides):
    return apply_overrides(load_preset("tiny"), QUICK + list(overrides))


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_accumulated_micro_batches_train_like_one_big_batch(tmp_path):
    """accum_steps=2 x batch 16 takes the same steps as batch 32: same samples, same negatives."""
    no_aug = "data.augment.enabled=false"
    train(_cfg(no_aug, "train.batch_size=32"), tmp_path / "big", progress=False)
    train(_cfg(no_aug, "train.batch_size=16", "train.accum_steps=2"), tmp_path / "accum", progress=False)
    big, accum = _weights(tmp_path / "big"), _weights(tmp_path / "accum")
    assert big.keys() == accum.keys()
    for name in big:
        torch.testing.assert_close(accum[name], big[name], atol=2e-5, rtol=1e-4, msg=name)


def test_loader_worker_processes_feed_the_same_batches(tmp_path):
    train(_cfg("train.batch_size=16"), tmp_path / "plain", progress=False)
    train(_cfg("train.batch_size=16", "data.num_workers=2"), tmp_path / "workers", progress=False)
    plain, workers = _weights(tmp_path / "plain"), _weights(tmp_path / "workers")
    assert all(torch.equal(plain[k], workers[k]) for k in plain)


def test_siglip_run_logs_metrics_evaluates_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    final = train(_cfg("model.loss=siglip", "train.steps=4", "train.log_every=1", "train.eval_every=2",
                       "train.checkpoint_every=2"), out, progress=False)
    lines = _metrics(out)
    steps = [line for line in lines if "lr" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    assert {"step", "loss", "lr", "samples_per_s", "logit_scale", "skipped"} <= steps[0].keys()
    assert all(line["loss"] > 0 and line["samples_per_s"] > 0 for line in steps)
    assert any(line["step"] == 2 and "val_text_to_image_R@1" in line for line in lines)  # periodic eval
    assert lines[-1]["final"] is True and "val_text_to_image_R@1" in lines[-1]
    assert final["step"] == 4 and "val_zeroshot_top1" in final
    assert "logit_bias" in _weights(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert {"config.json", "tokenizer.json", "preprocessing.json"} <= {p.name for p in out.iterdir()}
    with pytest.raises(ValueError, match="--resume"):  # a fresh run never mixes with an old one's checkpoints
        train(_cfg(), out, progress=False)


def test_broken_inputs_are_skipped_counted_and_reported(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 100, 200 - 10 * i)).save(data / f"ok{i}.png")
        rows.append({"image": f"ok{i}.png", "caption": f"a picture number {i}"})
    (data / "empty.png").write_bytes(b"")
    (data / "garbage.jpg").write_bytes(b"this is not an image")
    (data / "cut.png").write_bytes((data / "ok0.png").read_bytes()[:60])
    rows += [{"image": "empty.png", "caption": "empty"}, {"image": "garbage.jpg", "caption": "garbage"},
             {"image": "cut.png", "caption": "truncated"}, {"image": "gone.png", "caption": "missing"},
             {"image": "ok1.png", "caption": ""}]
    manifest = data / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "run"
    final = train(_cfg(f"data.train={manifest}", "train.batch_size=16", "train.steps=2"), out, progress=False)
    skipped = final["skipped"]
    assert skipped.get("empty_file", 0) >= 1 and skipped.get("missing_file", 0) >= 1
    assert skipped.get("unreadable", 0) + skipped.get("truncated", 0) >= 2
    assert skipped.get("empty_caption") == 1  # left out by the manifest reader, still reported
    assert final["skipped_total"] == sum(skipped.values())
    assert _metrics(out)[-1]["skipped"] == skipped
    assert "skipped" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()


def test_fine_tuning_starts_from_the_init_folder(tmp_path, tiny_model_dir):
    """With lr 0 a fine-tuning run must end exactly where its init weights are; the architecture and
    tokenizer come from the init folder whatever the preset says."""
    out = tmp_path / "finetune"
    cfg = _cfg("train.lr=0.0", "model.embed_dim=32", "model.text.vocab_size=999")
    train(cfg, out, init=tiny_model_dir, progress=False)
    before, after = _weights(tiny_model_dir), _weights(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["model"] == json.loads((tiny_model_dir / "config.json").read_text())["model"]


def test_bad_precision_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        train(_cfg("train.precision=fp8"), tmp_path / "run", progress=False)


def test_streamed_shards_resume_at_the_right_position(tmp_path, capsys):
    """WebDataset shards have no length: a resumed run skips the samples already consumed and ends
    where an uninterrupted run ends (here the kill is simulated by deleting what came after step 2)."""
    import io
    import shutil

    import webdataset as wds

    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(2):
        with wds.TarWriter(str(shards / f"{shard:05d}.tar")) as sink:
            for i in range(20):
                png = io.BytesIO()
                Image.new("RGB", (36, 36), (12 * i, 40 * shard, 90)).save(png, format="PNG")
                sink.write({"__key__": f"s{shard}_{i:03d}", "png": png.getvalue(), "txt": f"stripe {i} of shard {shard}"})
    run = tmp_path / "run"
    cfg = _cfg(f"data.train={shards}/{{00000..00001}}.tar", "train.batch_size=12", "train.steps=4",
               "train.checkpoint_every=2", "train.log_every=1")  # 48 samples: the stream wraps around
    train(cfg, run, progress=False)
    whole = _weights(run)
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed during step 3
    capsys.readouterr()
    train(cfg, run, resume=True, progress=False)
    assert "step_00000002" in capsys.readouterr().out
    resumed = _weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert [line["step"] for line in _metrics(run) if "lr" in line] == [1, 2, 3, 4]


def test_resume_refuses_a_different_model_config(tmp_path):
    from visembed.config import apply_overrides, load_preset
    from visembed.train import train

    cfg = apply_overrides(load_preset("tiny"), ["train.steps=2", "train.checkpoint_every=1", "data.train=builtin:shapes?n=64"])
    train(cfg, tmp_path, progress=False)
    changed = apply_overrides(cfg, ["model.embed_dim=32", "train.steps=4"])
    with pytest.raises(ValueError, match="different model or data config"):
        train(changed, tmp_path, resume=True, progress=False)


def test_frozen_hf_text_tower_without_cjk_student_trains(tmp_path):
    """The demo preset with the CJK student switched off: no distillation step to run (it crashed)."""
    cfg = apply_overrides(load_preset("demo-scratch"), QUICK + ["model.text.cjk_student.enabled=false", "model.vision.channels=[8,16]",
                                                        "train.batch_size=16"])
    assert cfg.model.text.cjk_student.distill_steps > 0  # left at the preset's value, as a user would
    final = train(cfg, tmp_path / "run", progress=False)
    assert final["step"] == 2 and "val_text_to_image_R@1" in final
    assert not any(name.startswith("text.student") for name in _weights(tmp_path / "run"))


def test_caption_bank_run_encodes_every_training_caption_once(tmp_path, capsys):
    from visembed.data import open_dataset

    cfg = apply_overrides(load_preset("demo-scratch"), QUICK + ["model.text.cjk_student.enabled=false", "model.vision.channels=[8,16]",
                                                        "train.batch_size=16", "train.contrastive.caption_bank_weight=1.0"])
    final = train(cfg, tmp_path / "run", progress=False)
    distinct = {s.caption for s in open_dataset(cfg.data.train, "train")}
    assert f"caption bank: {len(distinct):,} distinct training captions" in capsys.readouterr().out
    assert final["step"] == 2 and final["loss"] > 0

    tiny = _cfg("train.caption_bank_weight=1.0")  # (the key's old name) a BPE text tower learns: its captions' features move
    with pytest.raises(ValueError, match="needs a frozen text tower"):
        train(tiny, tmp_path / "tiny", progress=False)
    with pytest.raises(ValueError, match="caption_bank_weight: must be 0 or more"):
        train(_cfg("train.contrastive.caption_bank_weight=-1"), tmp_path / "negative", progress=False)

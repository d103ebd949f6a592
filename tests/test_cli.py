"""The command line: `--help` everywhere, one clear line (exit 2) for expected failures, and the
eval/embed contracts on a real trained model."""

import json
import subprocess
import sys

import numpy as np
import pytest

COMMANDS = [[], ["train"], ["eval"], ["embed"], ["demo"], ["augment-preview"], ["index"], ["index", "build"],
            ["search"], ["recommend"], ["serve"]]


def visembed(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "visembed.cli", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "visembed")
def test_every_command_has_help(command):
    result = visembed(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and len(result.stdout.splitlines()) > 3


def test_bad_preset_and_bad_override_give_one_clear_line(tmp_path):
    result = visembed("train", "--out", str(tmp_path / "r"), "--preset", "nope")
    assert result.returncode == 2 and "no preset 'nope'" in result.stderr and "Traceback" not in result.stderr
    result = visembed("train", "--out", str(tmp_path / "r"), "--set", "train.stpes=3")
    assert result.returncode == 2 and "train.stpes" in result.stderr and "Traceback" not in result.stderr


def test_bad_data_spec_and_missing_model_folder(tmp_path):
    result = visembed("train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = visembed("eval", str(tmp_path / "no-model"), "--data", "builtin:shapes?n=40")
    assert result.returncode == 2 and "not a visembed model" in result.stderr


def test_eval_writes_contract_metric_names(tiny_model_dir):
    result = visembed("eval", str(tiny_model_dir), "--data", "builtin:shapes?n=512", "--split", "test")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    for name in ["text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "image_to_text_R@1",
                 "image_to_text_R@5", "image_to_text_R@10", "zeroshot_top1"]:
        assert 0.0 <= metrics[name] <= 1.0
    assert json.loads((tiny_model_dir / "eval_test.json").read_text()) == metrics


def test_embed_writes_vectors_with_their_ids(tiny_model_dir, tmp_path):
    result = visembed("embed", str(tiny_model_dir), "--data", "builtin:shapes?n=512", "--split", "val",
                      "--out", str(tmp_path / "emb"))
    assert result.returncode == 0, result.stderr
    vectors = np.load(tmp_path / "emb.npy")
    ids = (tmp_path / "emb.ids.txt").read_text().split()
    assert vectors.shape == (len(ids), 64) and len(ids) == len(set(ids)) > 10
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_augment_preview_writes_a_grid(tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    result = visembed("augment-preview", "--data", "builtin:shapes?n=64", "--preset", "tiny", "--rows", "3",
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    grid = Image.open(out)
    assert grid.width > grid.height > 0  # originals beside several augmented copies, three rows


def _model_copy(tiny_model_dir, tmp_path):
    import shutil

    return shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("checkpoints", "eval_*"))


def test_eval_on_damaged_weights_is_one_line(tiny_model_dir, tmp_path):
    folder = _model_copy(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 3)
    result = visembed("eval", str(folder), "--data", "builtin:shapes?n=40")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "model.safetensors is corrupt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_eval_on_a_bad_config_json_names_the_file(tiny_model_dir, tmp_path):
    folder = _model_copy(tiny_model_dir, tmp_path)
    config = folder / "config.json"
    for text in ("{\"model\": ", json.dumps({"model": {"embed_dim": "wide"}})):
        config.write_text(text)
        result = visembed("eval", str(folder), "--data", "builtin:shapes?n=40")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert str(config) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_embed_counts_skips_and_leaves_only_its_outputs(tiny_model_dir, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (30, 30), "red" if name == "a" else "blue").save(data / f"{name}.png")
    (data / "c.png").write_bytes(b"not a png")
    (data / "data.jsonl").write_text("".join(json.dumps({"image": f"{n}.png", "caption": n}) + "\n"
                                             for n in ("a", "b", "c", "gone")))
    out = tmp_path / "emb" / "photos"
    result = visembed("embed", str(tiny_model_dir), "--data", str(data / "data.jsonl"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "skipped 2 (missing_file=1, unreadable=1)" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["photos.ids.txt", "photos.npy"]
    assert (out.parent / "photos.ids.txt").read_text().split() == ["a.png", "b.png"]
    assert np.load(out.parent / "photos.npy").shape == (2, 64)

"""Tampered model folders, export and merge, and hostile data files (issue #21): a config never
builds more than its weights file holds, JSON files are read strictly, exports never write over
the source or into a non-empty folder, killed writers' hidden folders are cleaned, and bad paths in
data files are skipped and counted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from visembed.checkpoint import ModelFolderError, parse_json, read_json
from visembed.models import load_model_folder


def copy_of(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("checkpoints", "align"))
    return out


def visembed(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "visembed.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line(result, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-800:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_json_is_read_strictly(tmp_path):
    with pytest.raises(ValueError, match="the key 'a' twice"):
        parse_json('{"a": 1, "a": 2}', "x.json")
    with pytest.raises(ValueError, match="nests too deep"):
        parse_json("[" * 100_000 + "]" * 100_000, "x.json")
    with pytest.raises(ValueError, match="not a finite number"):
        parse_json('{"w": 1e400}', "x.json")
    with pytest.raises(ValueError, match="w holds nan, not a finite number"):
        parse_json('{"w": NaN}', "x.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(ModelFolderError, match="not a regular file"):
        read_json(tmp_path / "zero.json")
    assert parse_json('{"a": [1, {"b": 2.5}]}', "x.json") == {"a": [1, {"b": 2.5}]}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["model"]["vision"].update(width=4096, depth=8, heads=16), "the config makes it"),
    (lambda d: d["model"]["text"].update(vocab_size=3_000_000), "the config makes it"),
], ids=["width 4096 x 8", "vocab 3e6"])
def test_a_tampered_config_is_refused_before_the_model_is_built(tiny_model_dir, tmp_path, edit, message):
    folder = copy_of(tiny_model_dir, tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(folder)


def test_train_captioner_refuses_a_tampered_vision_folder_before_building(tiny_model_dir, tmp_path):
    """`train-captioner --vision DIR` builds the dual encoder of DIR's config: checked against DIR's
    weights first, as every model folder is (before: a 4096-wide config was built, then failed)."""
    folder = copy_of(tiny_model_dir, tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    data["model"]["vision"].update(width=4096, depth=8, heads=16)
    (folder / "config.json").write_text(json.dumps(data))
    result = visembed("train-captioner", "--vision", folder, "--data", "builtin:shapes?n=16", "--out", tmp_path / "cap",
                      "--steps", "1", "--no-progress")
    one_line(result, "the config makes it")


def test_integer_weights_in_a_model_folder_are_refused(tiny_model_dir, tmp_path):
    folder = copy_of(tiny_model_dir, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    name = next(n for n, t in state.items() if t.is_floating_point() and t.dim() == 2)
    state[name] = state[name].to(torch.int8)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelFolderError, match=rf"{name} is stored as int8, not a float"):
        load_model_folder(folder)


@pytest.mark.parametrize("name, content, message", [
    ("lm/config.json", '{"model_type": "llama"}', "do not fit the model its config describes"),
    ("lm/config.json", "{ no", "lm/config.json is not valid JSON"),
    ("lm/config.json", "[1]", "is not a transformers config"),
    ("lm/tokenizer.json", "[" * 100_000, "lm/tokenizer.json nests too deep"),
    ("lm/tokenizer.json", '{"version": "1.0", "model": 5}', "the captioner's tokenizer cannot be loaded"),
], ids=["llama at its default size", "not JSON", "a list", "nested", "garbage"])
def test_a_tampered_captioner_lm_is_refused(tiny_captioner_dir, tmp_path, name, content, message):
    folder = copy_of(tiny_captioner_dir, tmp_path / "c")
    (folder / name).write_text(content)
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(folder)


def test_a_tampered_lm_vocabulary_is_refused_by_the_header(tiny_captioner_dir, tmp_path):
    folder = copy_of(tiny_captioner_dir, tmp_path / "c")
    data = json.loads((folder / "lm" / "config.json").read_text())
    data["vocab_size"] = 3_000_000
    (folder / "lm" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=r"lm\..* has shape .* the config makes it \[3000000"):
        load_model_folder(folder)


def test_merge_refuses_captioners_with_different_lm_tokenizers(tiny_captioner_dir, tmp_path):
    from visembed.models.merge import MergeError, merge_models

    other = copy_of(tiny_captioner_dir, tmp_path / "other")
    tokenizer = json.loads((other / "lm" / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzzz"] = max(tokenizer["model"]["vocab"].values()) + 1
    (other / "lm" / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(MergeError, match=r"different tokenizer assets \(lm/tokenizer.json\)"):
        merge_models(tiny_captioner_dir, other, 0.5, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_onnx_export_never_writes_over_its_source_or_into_a_full_folder(tiny_model_dir, tmp_path):
    from visembed.interop.hf_folder import ExportError
    from visembed.interop.onnx import export_onnx

    folder = copy_of(tiny_model_dir, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_onnx(folder, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_onnx(folder, full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]


def test_stale_temporary_folders_of_dead_processes_are_removed(tiny_model_dir, tmp_path):
    """A killed merge left `.OUT.PID.HEX.tmp`: the next writer of OUT removes it; a live process's stays."""
    from visembed.models.merge import merge_models

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".merged.{dead.stdout.strip()}.deadbeef.tmp"
    live = tmp_path / f".merged.{os.getpid()}.cafebabe.tmp"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    merge_models(tiny_model_dir, tiny_model_dir, 0.5, tmp_path / "merged")
    assert not stale.exists() and live.exists() and (tmp_path / "merged" / "model.safetensors").is_file()


def _image(folder: Path) -> None:
    Image.new("RGB", (32, 32), "red").save(folder / "a.png")


@pytest.mark.parametrize("bad", ["x" * 5000 + ".png", "a\x00.png", "a-\ud800.png", "a.png/b.png"],
                         ids=["5000 characters", "NUL byte", "lone surrogate", "under a file"])
def test_bad_paths_in_data_files_are_skipped_and_counted(tmp_path, bad):
    from visembed.data import open_dataset

    _image(tmp_path)
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]
    (tmp_path / "llava.json").write_text(json.dumps([{"image": "a.png", "conversations": turns},
                                                     {"image": bad, "conversations": turns}]))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "a.png", "caption": "red"}) + "\n"
                                         + json.dumps({"image": bad, "caption": "bad"}) + "\n")
    for name in ("llava.json", "rows.jsonl"):
        dataset = open_dataset(str(tmp_path / name), "train")
        assert len(dataset) == 1 and dataset.skipped.total == 1, (name, dataset.skipped)


def test_a_llava_file_nested_100000_deep_is_one_data_error(tmp_path):
    from visembed.data import DataError, open_dataset

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nests too deep"):
        open_dataset(str(tmp_path / "deep.json"), "train")


def test_load_image_names_an_impossible_path(tmp_path):
    from visembed.data import BadImage, load_image

    for bad in ("a\x00.png", "a-\ud800.png"):
        with pytest.raises(BadImage) as caught:
            load_image(str(tmp_path / bad))
        assert caught.value.reason == "bad_path"


@pytest.mark.parametrize("args, needles", [
    (["eval", "{model}", "--data", "builtin:shapes?n=40", "--template", "{{x}}"], ["--template", "no other braces"]),
    (["eval", "{model}", "--data", "builtin:shapes?n=40", "--template", "a \udcff {{}}"], ["--template", "UTF-8"]),
    (["search", "{tmp}", "a \udcff"], ["TEXT is not valid UTF-8"]),
    (["train", "--data", "builtin:shapes?n=abc", "--out", "{tmp}/r", "--steps", "1"], ["builtin:shapes: n must be"]),
    (["train", "--data", "builtin:shapes?size=0", "--out", "{tmp}/r", "--steps", "1"], ["builtin:shapes: size must"]),
    (["train", "--out", "{tmp}/file.txt/run", "--steps", "1"], ["file.txt", "is a file, not a folder"]),
    (["train", "--init", "{captioner}", "--out", "{tmp}/r", "--steps", "1"], ["--init", "holds a captioner"]),
    (["train", "--set", "model.vision.width=1000000", "--out", "{tmp}/r", "--steps", "1"],
     ["model.vision.width=1000000 is beyond"]),
    (["serve", "{tmp}", "--max-upload-mb", "inf"], ["--max-upload-mb"]),
    (["export", "{model}", "--format", "hf", "--out", "{tmp}/file.txt/x"], ["file.txt"]),
    (["merge", "{model}", "{model}", "--out", "{tmp}/file.txt/x"], ["file.txt"]),
], ids=["template {x}", "template bad UTF-8", "search bad UTF-8", "shapes n=abc", "shapes size=0",
        "train --out under a file", "train --init captioner", "width 1e6", "max-upload-mb inf", "export --out under a file",
        "merge --out under a file"])
def test_bad_arguments_are_one_line(tiny_model_dir, tiny_captioner_dir, tmp_path, args, needles):
    (tmp_path / "file.txt").write_text("x")
    filled = [a.format(model=tiny_model_dir, tmp=tmp_path, captioner=tiny_captioner_dir) for a in args]
    env_args = [a.encode("utf-8", "surrogateescape") if "\udcff" in a else a for a in filled]
    result = subprocess.run([sys.executable, "-m", "visembed.cli", *env_args], capture_output=True, cwd=tmp_path,
                            timeout=300)
    result = subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                         result.stderr.decode(errors="replace"))
    one_line(result, *needles)


@pytest.mark.parametrize("args, option", [
    (["demo", "--out", "{tmp}/demo", "--port", "-1"], "--port"),
    (["index", "build", "{model}", "--data", "builtin:shapes?n=40", "--out", "{tmp}/ix", "--shard-size", "0"],
     "--shard-size"),
    (["index", "add", "{tmp}", "--data", "builtin:shapes?n=40", "--shard-size", "0"], "--shard-size"),
])
def test_out_of_range_options_fail_before_any_work(tiny_model_dir, tmp_path, args, option):
    result = visembed(*[a.format(model=tiny_model_dir, tmp=tmp_path) for a in args], timeout=60)
    assert result.returncode == 2 and option in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "ix").exists()

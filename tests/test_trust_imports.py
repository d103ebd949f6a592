"""Hostile `hf:` and `openclip:` imports (issue #21): configs that would allocate more than their
weights hold, shard indexes that name files outside their folder, pickles, missing tokenizers,
integer weights, image processors of another size (transformers 5's SizeDict), and malformed
configs: each is refused with one ModelFolderError / OpenCLIPImportError naming what is wrong."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_interop_hf import _save_tiny_clip
from visembed.checkpoint import ModelFolderError
from visembed.interop.cache import resolve_model
from visembed.interop.openclip import OpenCLIPImportError

OPENCLIP = Path(__file__).parent / "fixtures" / "openclip"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return _save_tiny_clip(tmp_path_factory.mktemp("hf_clip"))


def copy_of(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    return out


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["text_config"].update(hidden_size=0), r"text_config.hidden_size is 0"),
    (lambda d: d["text_config"].update(hidden_size=None), r"text_config.hidden_size is None"),
    (lambda d: d.update(text_config=[1, 2]), r"text_config is a list"),
    (lambda d: d["vision_config"].update(num_hidden_layers="8"), r"vision_config.num_hidden_layers is 8"),
], ids=["hidden_size 0", "hidden_size null", "text_config a list", "layers a string"])
def test_malformed_hf_configs_are_named(tiny_clip, tmp_path, change, message):
    folder = copy_of(tiny_clip, tmp_path / "f")
    edit_json(folder / "config.json", change)
    with pytest.raises(ModelFolderError, match=message):
        resolve_model(f"hf:{folder}")


@pytest.mark.parametrize("change", [
    lambda d: d["text_config"].update(vocab_size=900_000),
    lambda d: d["vision_config"].update(hidden_size=4096, intermediate_size=16384, num_hidden_layers=8,
                                        num_attention_heads=16),
], ids=["vocab 9e5 over a small file", "width 4096 x 8 layers"])
def test_a_config_larger_than_its_weights_is_refused_before_allocating(tiny_clip, tmp_path, change):
    """The planned model is built on the meta device and compared with the weights: the error is the
    shape comparison's, raised before the real model (hundreds of MB to GBs here) is built."""
    folder = copy_of(tiny_clip, tmp_path / "f")
    edit_json(folder / "config.json", change)
    with pytest.raises(ModelFolderError, match=r"do not fit a CLIPModel|the config makes it"):
        resolve_model(f"hf:{folder}")


def test_sizes_beyond_any_clip_are_refused_from_the_config(tiny_clip, tmp_path):
    folder = copy_of(tiny_clip, tmp_path / "f")
    edit_json(folder / "config.json", lambda d: d["text_config"].update(vocab_size=30_000_000))
    with pytest.raises(ModelFolderError, match=r"text_config.vocab_size is 30000000; a whole number from 1 to"):
        resolve_model(f"hf:{folder}")
    text = (tiny_clip / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"model_type": "clip"', '"model_type": "clip", "model_type": "x"', 1))
    with pytest.raises(ModelFolderError, match=r"has the key 'model_type' twice"):
        resolve_model(f"hf:{folder}")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFolderError, match="nests too deep"):
        resolve_model(f"hf:{folder}")
    (folder / "config.json").write_text(text.replace('"projection_dim": 24', '"projection_dim": 1e400'))
    with pytest.raises(ModelFolderError, match="projection_dim holds inf, not a finite number"):
        resolve_model(f"hf:{folder}")


def _sharded(folder: Path, weight_map) -> None:
    (folder / "model.safetensors").rename(folder / "shard-1.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(weight_map))


@pytest.mark.parametrize("index, message", [
    ({"weight_map": {"a": "/etc/passwd"}}, r"names the shard '/etc/passwd' outside its folder"),
    ({"weight_map": {"a": "../x.safetensors"}}, r"names the shard '../x.safetensors' outside its folder"),
    ({"weight_map": {"a": "sub/../../x.safetensors"}}, r"outside its folder"),
    ({"metadata": {}}, r"has no weight_map"),
    ({"weight_map": {"a": 5}}, r"not a file name"),
], ids=["absolute", "dotdot", "nested dotdot", "no weight_map", "not a name"])
def test_shard_indexes_only_name_files_inside_their_folder(tiny_clip, tmp_path, index, message):
    folder = copy_of(tiny_clip, tmp_path / "f")
    _sharded(folder, index)
    shutil.copy(folder / "shard-1.safetensors", tmp_path / "x.safetensors")  # a real file there: still refused
    with pytest.raises(ModelFolderError, match=message):
        resolve_model(f"hf:{folder}")


def test_a_shard_in_a_subfolder_loads_and_its_change_converts_again(tiny_clip, tmp_path):
    import visembed

    folder = copy_of(tiny_clip, tmp_path / "f")
    _sharded(folder, {"weight_map": {}})
    (folder / "shards").mkdir()
    (folder / "shard-1.safetensors").rename(folder / "shards" / "shard-1.safetensors")
    names = load_file(folder / "shards" / "shard-1.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "shards/shard-1.safetensors"
                                                                                    for n in names}}))
    first = resolve_model(f"hf:{folder}")
    before = visembed.load(first).encode_text(["a cat"])
    state = load_file(folder / "shards" / "shard-1.safetensors")
    state["text_projection.weight"] = state["text_projection.weight"] * -1
    save_file(state, folder / "shards" / "shard-1.safetensors")
    second = resolve_model(f"hf:{folder}")  # only a file in a subfolder changed: a new conversion
    assert second != first
    after = visembed.load(second).encode_text(["a cat"])
    assert torch.allclose(torch.as_tensor(after), -torch.as_tensor(before), atol=1e-5)


def test_a_pickle_is_refused_in_one_line_without_torchs_advice(tiny_clip, tmp_path):
    folder = copy_of(tiny_clip, tmp_path / "f")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(print))
    with pytest.raises(ModelFolderError) as caught:
        resolve_model(f"hf:{folder}")
    text = str(caught.value)
    assert "never unpickles" in text and "weights_only=False" not in text and "\n" not in text


def test_a_folder_without_tokenizer_files_is_refused(tiny_clip, tmp_path):
    folder = copy_of(tiny_clip, tmp_path / "f")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelFolderError, match="has no tokenizer"):
        resolve_model(f"hf:{folder}")


def test_integer_weights_are_not_cast_silently(tiny_clip, tmp_path):
    folder = copy_of(tiny_clip, tmp_path / "f")
    state = load_file(folder / "model.safetensors")
    state["text_model.embeddings.position_embedding.weight"] = torch.ones(16, 32, dtype=torch.int8)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"position_embedding.weight .* is int8, not a float"):
        resolve_model(f"hf:{folder}")


def test_the_crop_check_reads_transformers_5s_size_dict(tiny_clip, tmp_path):
    import transformers

    folder = copy_of(tiny_clip, tmp_path / "f")
    edit_json(folder / "processor_config.json",
              lambda d: d["image_processor"].update(crop_size={"height": 999, "width": 999}))
    with pytest.raises(ModelFolderError, match="crops to 999 px but the vision tower reads 32 px"):
        resolve_model(f"hf:{folder}")
    assert int(transformers.__version__.split(".")[0]) >= 5  # the SizeDict release is the one installed


@pytest.mark.parametrize("content, message", [
    ("{ nope", "processor_config.json is not valid JSON"),
    ("[1, 2]", "not an image processor config"),
    (json.dumps({"image_processor": {"image_processor_type": "CLIPImageProcessor", "image_mean": "red"}}), "image_mean"),
], ids=["not JSON", "a list", "mean a string"])
def test_a_bad_image_processor_config_is_named(tiny_clip, tmp_path, content, message):
    folder = copy_of(tiny_clip, tmp_path / "f")
    (folder / "processor_config.json").write_text(content)
    with pytest.raises(ModelFolderError, match=message):
        resolve_model(f"hf:{folder}")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["model_cfg"]["vision_cfg"].update(head_width=0), r"vision_cfg.head_width is 0"),
    (lambda d: d["model_cfg"].update(vision_cfg=7), r"vision_cfg is a int"),
    (lambda d: d.update(model_cfg=[1]), r"model_cfg is a list"),
    (lambda d: d["model_cfg"]["text_cfg"].update(width="wide"), r"text_cfg.width is 'wide'"),
    (lambda d: d["model_cfg"]["vision_cfg"].update(width=4096, layers=48, head_width=64), r"lacks 736 weight|the config asks for"),
], ids=["head_width 0", "vision_cfg a number", "model_cfg a list", "width a string", "larger than the weights"])
def test_malformed_openclip_configs_are_named(tmp_path, change, message):
    folder = copy_of(OPENCLIP, tmp_path / "oc")
    edit_json(folder / "open_clip_config.json", change)
    with pytest.raises(OpenCLIPImportError, match=message):
        resolve_model(f"openclip:{folder}")

"""OpenCLIP import: a tiny random model made by real open_clip (tests/fixtures/openclip, see its
make_fixture.py) gives, through `convert_openclip` and `visembed.load`, the embeddings open_clip
recorded for the same pixels and captions; loading is strict and names what does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import visembed
from visembed.interop.openclip import OpenCLIPImportError, convert_openclip, openai_clip_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "openclip"
TOL = 1e-4


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("oc") / "model"
    convert_openclip(FIXTURE, out)
    return out


def test_fixture_is_small():
    assert sum(p.stat().st_size for p in FIXTURE.iterdir() if p.name != "make_fixture.py") < 2_000_000


def test_embeddings_equal_open_clip(converted, expected):
    model = visembed.load(converted, device="cpu")
    pixels = torch.from_numpy(expected["pixels"])
    captions = [str(c) for c in expected["captions"]]
    with torch.no_grad():
        image = model.module.encode_image(pixels).numpy()  # pixels in [0, 1]: mean/std from the config
        text = model.module.encode_text(captions).numpy()
    assert np.abs(image - expected["image_embeds"]).max() <= TOL
    assert np.abs(text - expected["text_embeds"]).max() <= TOL
    # and through the public API, L2-normalised
    normalised = F.normalize(torch.from_numpy(expected["text_embeds"]), dim=-1).numpy()
    assert np.abs(model.encode_text(captions) - normalised).max() <= TOL


def test_tokenizer_gives_open_clips_ids(converted, expected):
    model = visembed.load(converted, device="cpu")
    ids, mask = model.module.text.tokenize([str(c) for c in expected["captions"]])
    want = torch.from_numpy(expected["token_ids"])  # <sot> ... <eot>, truncated keeping <eot>, padded with 0
    assert ids.shape == want.shape and torch.equal(mask, want != 0)
    assert torch.equal(ids[mask], want[want != 0])  # padding ids differ by convention: never seen by a causal tower
    assert int(ids[0, 0]) == 49406 and int(ids[-1, -1]) == 49407


def test_rebuilt_tokenizer_has_clips_vocabulary():
    tok = openai_clip_tokenizer()
    assert tok.get_vocab_size() == 49408
    assert tok.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIPTokenizerFast's ids


def test_config_and_files(converted):
    cfg = json.loads((converted / "config.json").read_text())["model"]
    assert cfg["vision"]["kind"] == "vit" and cfg["vision"]["heads"] == 2 and cfg["text"]["context_length"] == 16
    assert cfg["vision"]["mean"][0] == pytest.approx(0.48145466)
    assert {"model.safetensors", "tokenizer.json", "preprocessing.json", "README.md"} <= {p.name for p in converted.iterdir()}
    assert "Imported from OpenCLIP" in (converted / "README.md").read_text()


def _copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(FIXTURE / name, folder / name)
    return folder


def test_a_torch_training_checkpoint_file_with_its_config_beside_it(tmp_path, expected):
    folder = _copy_fixture(tmp_path)
    state = load_file(str(folder / "open_clip_model.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "epoch_3.pt")
    (folder / "open_clip_model.safetensors").unlink()
    convert_openclip(folder / "epoch_3.pt", tmp_path / "model")
    model = visembed.load(tmp_path / "model", device="cpu")
    with torch.no_grad():
        image = model.module.encode_image(torch.from_numpy(expected["pixels"])).numpy()
    assert np.abs(image - expected["image_embeds"]).max() <= TOL


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("visual.ln_post.weight"), "vision.post_layernorm.weight"),
    (lambda s: s.update({"visual.extra_gain": torch.ones(3)}), "visual.extra_gain"),
    (lambda s: s.update({"transformer.resblocks.0.ls_1.gamma": torch.ones(16)}), "transformer.resblocks.0.ls_1.gamma"),
])
def test_loading_is_strict_and_names_the_key(tmp_path, change, message):
    folder = _copy_fixture(tmp_path)
    state = load_file(str(folder / "open_clip_model.safetensors"))
    change(state)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    with pytest.raises(OpenCLIPImportError, match=message.replace(".", r"\.")):
        convert_openclip(folder, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("section, key, value", [("vision_cfg", "ls_init_value", 1e-5), ("text_cfg", "pool_type", "last"),
                                                 ("text_cfg", "hf_tokenizer_name", "bert-base-uncased"),
                                                 ("vision_cfg", "timm_model_name", "vit_small_patch16_224")])
def test_an_unsupported_option_fails_with_its_name(tmp_path, section, key, value):
    folder = _copy_fixture(tmp_path)
    data = json.loads((folder / "open_clip_config.json").read_text())
    data["model_cfg"][section][key] = value
    (folder / "open_clip_config.json").write_text(json.dumps(data))
    with pytest.raises(OpenCLIPImportError, match=f"{section}.{key}"):
        convert_openclip(folder, tmp_path / "model")

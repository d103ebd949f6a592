import json

import pytest
import torch

from visembed.checkpoint import (ModelFolderError, checkpoint_dirs, latest_checkpoint,
                                 load_training_state, save_model_folder, save_training_state)
from visembed.config import apply_overrides, load_preset, to_dict
from visembed.models import build_model, load_model_folder


@pytest.fixture
def tiny(tmp_path):
    from visembed.models.bpe_tokenizer import train_bpe_tokenizer

    cfg = apply_overrides(load_preset("tiny"), ["model.text.vocab_size=300"])
    train_bpe_tokenizer(["a red circle", "a blue square", "狗"] * 20, 300, tmp_path / "tokenizer.json")
    return cfg, build_model(cfg.model, tmp_path)


def test_model_folder_round_trip(tiny, tmp_path):
    cfg, model = tiny
    folder = save_model_folder(model, cfg, tmp_path / "model")
    assert {"model.safetensors", "config.json", "preprocessing.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded, loaded_cfg = load_model_folder(folder)
    assert loaded_cfg == cfg
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encode_image(x), model.encode_image(x))
    assert torch.equal(loaded.encode_text(["a red circle"]), model.encode_text(["a red circle"]))


def test_checkpoints_restore_optimiser_and_keep_the_newest(tiny, tmp_path):
    cfg, model = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    out = model(torch.rand(2, 3, 32, 32), **model.text_tokens(["a", "b"]))
    (out["image_features"] @ out["text_features"].T).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_training_state(tmp_path, step, model, opt, {"position": torch.tensor(step * 10)})
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]
    fresh = build_model(cfg.model, tmp_path)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_training_state(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert state["step"] == 3 and state["position"].item() == 30
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    restored, original = fresh_opt.state_dict()["state"], opt.state_dict()["state"]
    assert restored.keys() == original.keys() and len(original) > 10
    assert all(torch.equal(restored[k]["exp_avg"], original[k]["exp_avg"]) for k in original)


def test_half_written_checkpoint_is_ignored(tiny, tmp_path):
    cfg, model = tiny
    save_training_state(tmp_path, 5, model, torch.optim.AdamW(model.parameters()), {})
    (tmp_path / "checkpoints" / ".tmp_step_00000010_123").mkdir()  # a run killed while writing
    (tmp_path / "checkpoints" / "step_00000009").mkdir()  # no state.pt: incomplete
    assert latest_checkpoint(tmp_path).name == "step_00000005"


def test_clear_errors_for_missing_or_mismatched_folders(tiny, tmp_path):
    cfg, model = tiny
    with pytest.raises(ModelFolderError, match="not a visembed model"):
        load_model_folder(tmp_path / "nowhere")
    folder = save_model_folder(model, cfg, tmp_path / "model")
    bigger = apply_overrides(cfg, ["model.embed_dim=32"])
    (folder / "config.json").write_text(json.dumps(to_dict(bigger)))
    with pytest.raises(ModelFolderError, match="do not fit the model"):
        load_model_folder(folder)


def _corruptions(good: bytes) -> dict[str, bytes]:
    import struct

    return {"truncated": good[: len(good) // 2], "random": bytes(range(256)) * 4, "empty": b"",
            "huge header": struct.pack("<Q", 2**62) + b"{}"}


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "huge header"])
def test_damaged_weights_name_the_file(tiny, tmp_path, kind):
    cfg, model = tiny
    folder = save_model_folder(model, cfg, tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(_corruptions(weights.read_bytes())[kind])
    with pytest.raises(ModelFolderError, match="corrupt") as info:
        load_model_folder(folder)
    assert str(weights) in str(info.value)


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                        ('{"model": {"embed_dim": "big"}}', "model.embed_dim"),
                                        ('{"modle": {}}', "modle")])
def test_bad_config_json_names_the_file(tiny, tmp_path, text, says):
    cfg, model = tiny
    folder = save_model_folder(model, cfg, tmp_path / "model")
    (folder / "config.json").write_text(text)
    with pytest.raises(ModelFolderError, match=says) as info:
        load_model_folder(folder)
    assert str(folder / "config.json") in str(info.value)


def test_damaged_optimizer_state_names_the_file(tiny, tmp_path):
    cfg, model = tiny
    opt = torch.optim.AdamW(model.parameters())
    ckpt = save_training_state(tmp_path, 1, model, opt, {})
    (ckpt / "optimizer.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ModelFolderError, match="optimizer.pt is corrupt"):
        load_training_state(ckpt, model, opt)


def test_saving_leaves_no_temporary_files(tiny, tmp_path):
    cfg, model = tiny
    folder = save_model_folder(model, cfg, tmp_path / "model")
    save_training_state(tmp_path / "run", 1, model, torch.optim.AdamW(model.parameters()), {})
    leftovers = [p for p in [*folder.rglob("*"), *(tmp_path / "run").rglob("*")] if ".tmp" in p.name]
    assert leftovers == []

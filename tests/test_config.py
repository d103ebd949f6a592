import dataclasses
import json
import re

import pytest

from visembed.config import ConfigError, RunConfig, apply_overrides, from_dict, load_preset, preset_names, to_dict


def test_every_preset_loads_and_round_trips():
    assert {"tiny", "demo", "clip-tiny", "vit-b16", "vit-b16-siglip"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_preset_inheritance_changes_only_what_it_says():
    base, siglip = load_preset("vit-b16"), load_preset("vit-b16-siglip")
    assert siglip.model.loss == "siglip" and base.model.loss == "clip"
    assert siglip.model.vision == base.model.vision


def test_unknown_key_fails_with_its_dotted_name():
    with pytest.raises(ConfigError, match="model.vision.widht"):
        from_dict({"model": {"vision": {"widht": 3}}})


def test_wrong_types_anywhere_fail_as_config_errors():
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        from_dict({"model": "vit", "train": [1, 2]})  # a damaged config.json: never a traceback


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        from_dict({"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="augment.flip: expected bool"):
        from_dict({"data": {"augment": {"flip": 1}}})


def test_overrides_parse_json_and_check_types():
    cfg = apply_overrides(RunConfig(), ["train.lr=0.01", "data.train=builtin:emoji?style=all", "model.vision.channels=[8,16]",
                                        "data.augment.flip=true", "train.steps=7", "model.vision.kind=convnet"])
    assert (cfg.train.lr, cfg.data.train, cfg.model.vision.channels, cfg.data.augment.flip, cfg.train.steps) == (
        0.01, "builtin:emoji?style=all", [8, 16], True, 7)
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        apply_overrides(RunConfig(), ["train.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(RunConfig(), ["train.lr"])
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        apply_overrides(RunConfig(), ["train.steps=1.5"])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*tiny"):
        load_preset("huge")


@pytest.mark.parametrize("override, named", [
    ("train.lr=Infinity", "train.lr"), ("model.vision.std=[0,0,0]", "model.vision.std"),
    ("train.weight_decay=1e400", "train.weight_decay"), ("model.embed_dim=0", "model.embed_dim"),
    ("model.vision.patch_size=0", "model.vision.patch_size"), ("model.vision.mean=[1]", "model.vision.mean"),
    ("model.text.vocab_size=1", "model.text.vocab_size"), ("train.grad_clip=NaN", "train.grad_clip"),
    ("train.warmup_steps=-10", "train.warmup_steps"), ("data.num_workers=-1", "data.num_workers"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"), ("model.vision.kind=resnet", "model.vision.kind"),
    ("model.loss=triplet", "model.loss"), ("train.precision=fp8", "train.precision"),
    ("model.vision.image_size=36", "model.vision.image_size"),  # not a multiple of the ViT's patch 8
])
def test_bad_values_fail_with_the_key_named(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        apply_overrides(load_preset("tiny"), [override])


def test_a_cjk_student_needs_an_hf_tower_and_its_own_valid_sizes():
    with pytest.raises(ConfigError, match="cjk_student.enabled"):
        apply_overrides(load_preset("tiny"), ["model.text.cjk_student.enabled=true"])
    with pytest.raises(ConfigError, match="model.text.cjk_student.width"):
        apply_overrides(load_preset("demo"), ["model.text.cjk_student.width=100"])  # not a multiple of 3 heads
    with pytest.raises(ConfigError, match="model.text.cjk_student.dictionary_pairs"):
        apply_overrides(load_preset("demo"), ["model.text.cjk_student.dictionary_pairs=-1"])


def test_a_preset_that_is_not_an_object_names_its_file(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}.*JSON object"):
        load_preset(str(path))


def test_configs_saved_before_the_student_sub_config_still_load():
    demo = load_preset("demo")
    student = demo.model.text.cjk_student
    legacy = to_dict(demo)
    legacy["model"]["text"] = {**{k: v for k, v in legacy["model"]["text"].items() if k != "cjk_student"},
                               "cjk_student": True, "student_distill_steps": student.distill_steps,
                               "vocab_size": student.vocab_size, "context_length": student.context_length,
                               "width": student.width, "depth": student.depth, "heads": student.heads}
    # (such configs predate the dictionary pairs: none)
    assert from_dict(legacy).model.text.cjk_student == dataclasses.replace(student, dictionary_pairs=0)

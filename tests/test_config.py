import json

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


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        from_dict({"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="augment.flip: expected bool"):
        from_dict({"data": {"augment": {"flip": 1}}})


def test_overrides_parse_json_and_check_types():
    cfg = apply_overrides(RunConfig(), ["train.lr=0.01", "data.train=builtin:emoji?style=all", "model.vision.channels=[8,16]",
                                        "data.augment.flip=true", "train.steps=7"])
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

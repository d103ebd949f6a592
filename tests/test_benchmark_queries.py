"""The everyday query list of `benchmarks/emoji_quality.py` is well-formed and matches the built-in
emoji data (names read from the concept table: no rendering)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def emoji_search():
    spec = importlib.util.spec_from_file_location("_bench_emoji_search", BENCHMARKS / "emoji_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def names():
    from visembed.data.emoji import emoji_catalogue

    return {c.en for c in emoji_catalogue()}


def test_everyday_list_is_well_formed(emoji_search, names):
    queries = emoji_search.load_everyday_queries(names=names)  # raises on an unknown accepted name
    assert len(queries) == 40
    assert sum(q.half == "dev" for q in queries) == 20
    assert sum(q.half == "heldout" for q in queries) == 20
    assert len({q.en for q in queries}) == 40 and len({q.zh for q in queries}) == 40
    for q in queries:
        assert q.en.strip() and q.en.isascii(), q
        assert emoji_search.CJK.search(q.zh), q
        assert q.accept and set(q.accept) <= names, q


def test_builtin_names_are_unique(names):
    """own_name_recall counts any image with the query's exact name; today that is one image."""
    from visembed.data.emoji import emoji_catalogue

    assert len(names) == len(emoji_catalogue())


def test_unknown_accepted_name_fails_loudly(emoji_search, names, tmp_path):
    bad = [{"en": "dog", "zh": "狗", "accept": ["dog", "doggo"], "half": "dev"},
           {"en": "cat", "zh": "cat", "accept": ["cat"], "half": "test"}]
    path = tmp_path / "queries.json"
    path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        emoji_search.load_everyday_queries(path, names=names)
    message = str(err.value)
    assert "doggo" in message and "Chinese" in message and "half" in message


def test_accepted_rows_take_skin_tone_variants(emoji_search):
    """An accepted emoji also accepts its tone variants (same concept key), and nothing else."""
    import numpy as np

    from visembed.data.emoji import emoji_catalogue

    concepts = list(emoji_catalogue())
    gallery = emoji_search.Gallery(concepts, np.zeros((len(concepts), 1), np.float32))
    query = emoji_search.EverydayQuery("swimming", "游泳", ("person swimming",), "heldout")
    rows = emoji_search.accepted_rows(gallery, query)
    accepted = {concepts[i].en for i in np.flatnonzero(rows)}
    assert "person swimming" in accepted and "person swimming medium skin tone" in accepted
    assert len(accepted) == 6 and not any("woman" in name for name in accepted)


class _OracleModel:
    """Stands in for a model: a text is embedded as the image of the emoji it names (or of "rocket")."""

    def __init__(self, gallery, extra: dict[str, str]):
        self.gallery, self.extra = gallery, extra
        self.row = {c.en: i for i, c in enumerate(gallery.concepts)}

    def encode_text(self, texts):
        return self.gallery.vectors[[self.row.get(self.extra.get(t, t), self.row["rocket"]) for t in texts]]


def test_search_figures_with_an_oracle_model(emoji_search):
    import numpy as np

    from visembed.data.emoji import emoji_catalogue

    concepts = list(emoji_catalogue())
    vectors = np.random.default_rng(0).normal(size=(len(concepts), 64)).astype(np.float32)
    gallery = emoji_search.Gallery(concepts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    model = _OracleModel(gallery, {"披萨": "pizza"})

    own = emoji_search.own_name_recall(model, gallery)
    assert own["own_train_n"] == sum(c.split == "train" for c in concepts)
    assert own["own_heldout_n"] == sum(c.split != "train" for c in concepts)
    assert own["own_train_R@1"] == own["own_heldout_R@5"] == 1.0

    details: dict = {}
    rates = emoji_search.everyday_success(model, gallery, details=details)
    hits = {r["en"] for r in details["en"] if r["hit"]}
    assert {"pizza", "rocket"} <= hits  # "rocket" is what every unknown text maps to: a hit only for itself
    assert rates["everyday_en_dev"] == sum(r["hit"] for r in details["en"] if r["half"] == "dev") / 20 >= 0.1
    assert rates["everyday_en_heldout"] == sum(r["hit"] for r in details["en"] if r["half"] == "heldout") / 20
    assert rates["everyday_zh_all"] == sum(r["hit"] for r in details["zh"]) / 40
    assert details["zh"][0]["query"] == "披萨" and details["zh"][0]["hit"]
    assert len(details["en"][0]["top"]) == emoji_search.EVERYDAY_K

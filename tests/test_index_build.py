"""Embedding a dataset into resumable shards, and `build_index` end to end on real images.

Also home of `shapes_index`, the small index the serve/CLI/browser tests share (built once).
"""

import functools
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visembed
from visembed.data import open_dataset
from visembed.index import IndexStoreError, Searcher, add_to_index, build_index, open_store
from visembed.index.embed import embed_dataset, read_shards

SHAPES = "builtin:shapes?n=300"  # train split: 240 scenes


@functools.lru_cache(maxsize=None)
def _build_shapes_index(model_dir: str, out_dir: str) -> Path:
    return build_index(model_dir, SHAPES, out_dir, split="train", progress=False, shard_size=100)


def shapes_index(tiny_model_dir, tmp_path_factory) -> Path:
    """An index of 240 builtin:shapes scenes, built once per test session and shared."""
    return _build_shapes_index(str(tiny_model_dir), str(tmp_path_factory.getbasetemp() / "shapes_index"))


class CountingModel:
    """The real model, counting the images it is asked to embed."""

    def __init__(self, model):
        self.model, self.images = model, 0
        self.embed_dim = model.embed_dim

    def encode_image(self, images, batch_size=64):
        self.images += len(images)
        return self.model.encode_image(images, batch_size=batch_size)


def test_rerun_after_a_crash_only_redoes_the_unfinished_shard(tiny_model_dir, tmp_path):
    model = CountingModel(visembed.load(tiny_model_dir))
    dataset = open_dataset("builtin:shapes?n=150")  # 120 train scenes -> shards of 50, 50, 20
    source = {"model": "tiny", "data": "shapes-150"}
    first = embed_dataset(model, dataset, tmp_path, source=source, shard_size=50, progress=False)
    assert (first.shards, first.embedded, model.images) == (3, 120, 120)
    vectors, items, _ = read_shards(tmp_path, first.names)
    assert vectors.shape == (120, model.embed_dim) and len(items) == 120

    (tmp_path / "embeddings" / f"{first.names[1]}.npy").unlink()  # as if killed while writing shard 1
    model.images = 0
    again = embed_dataset(model, dataset, tmp_path, source=source, shard_size=50, progress=False)
    assert (again.reused_shards, again.embedded, model.images) == (2, 50, 50) and again.names == first.names
    vectors_again, items_again, _ = read_shards(tmp_path, again.names)
    np.testing.assert_allclose(vectors_again, vectors, atol=1e-5)
    assert items_again == items

    with pytest.raises(IndexStoreError, match="another model or dataset"):
        embed_dataset(model, dataset, tmp_path, source={**source, "model": "other"}, shard_size=50, progress=False)


def test_build_from_a_folder_skips_broken_images_and_serves_originals(tiny_model_dir, tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 210, 20)}
    for name, rgb in colours.items():
        Image.new("RGB", (200, 150), rgb).save(data / f"{name}.png")
        (data / f"{name}.txt").write_text(f"a {name} square")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (data / "broken.txt").write_text("not really a picture")

    out = build_index(tiny_model_dir, str(data), tmp_path / "index", progress=False)
    index = open_store(out)
    assert len(index) == 4
    manifest = json.loads((out / "index.json").read_text())
    assert sum(manifest["skipped"].values()) == 1 and manifest["model_dir"] == str(Path(tiny_model_dir).resolve())

    searcher = Searcher.open(out)
    red = next(item for item in index.meta(index.ids()) if item["caption"] == "a red square")
    assert searcher.image_file(red["id"]).read_bytes() == (data / "red.png").read_bytes()
    thumb, media_type = searcher.thumbnail(red["id"])
    assert media_type == "image/jpeg" and max(Image.open(io.BytesIO(thumb)).size) == 128
    hits = searcher.search_image(Image.open(data / "blue.png"), k=1)
    assert hits[0].caption == "a blue square" and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_build_reports_unusable_inputs_clearly(tiny_model_dir, tmp_path):
    with pytest.raises(IndexStoreError, match="no model folder"):
        build_index(tmp_path / "missing-model", SHAPES, tmp_path / "index", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junk.png").write_bytes(b"junk")
    (empty / "junk.txt").write_text("junk")
    with pytest.raises(IndexStoreError, match="no usable images"):
        build_index(tiny_model_dir, str(empty), tmp_path / "index", progress=False)


def test_shared_shapes_index_opens_and_searches(tiny_model_dir, tmp_path_factory):
    searcher = Searcher.open(shapes_index(tiny_model_dir, tmp_path_factory))
    assert len(searcher.store) == 240
    item = searcher.item(searcher.store.ids()[7])
    hits = searcher.similar(item["id"], k=5)
    assert len(hits) == 5 and item["id"] not in [h.id for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_identical_weights_reuse_shards_and_other_weights_are_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "index"
    build_index(tiny_model_dir, "builtin:shapes?n=30", out, progress=False, shard_size=10)
    copy = tmp_path / "model-copy"  # as `train --resume` of a finished run or a second demo: same bytes, new mtime
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(1, 1))
    build_index(copy, "builtin:shapes?n=30", out, progress=False, shard_size=10)
    assert json.loads((out / "index.json").read_text())["reused_shards"] == 3

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights)
    with pytest.raises(IndexStoreError, match="another model"):
        build_index(copy, "builtin:shapes?n=30", out, progress=False, shard_size=10)


def test_without_a_split_every_image_is_indexed(tiny_model_dir, tmp_path):
    out = build_index(tiny_model_dir, "builtin:shapes?n=30", tmp_path / "index", progress=False)
    assert len(open_store(out)) == 30  # the train split alone would be 24


def test_add_new_items_without_a_rebuild(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from visembed.serve.app import create_app

    out = build_index(tiny_model_dir, "builtin:shapes?n=30", tmp_path / "index", split="train", progress=False)
    before = open_store(out)
    report = add_to_index(out, "builtin:shapes?n=30", progress=False, shard_size=4)  # every split: 6 new scenes
    assert (report.added, report.already_indexed, report.total) == (6, 24, 30)
    index = open_store(out)
    new_ids = index.ids()[24:]
    assert index.meta(index.ids()[:24]) == before.meta(before.ids()) and not set(new_ids) & set(before.ids())
    assert (out / "embeddings" / "added_00001.npy").exists()  # 6 new items in shards of 4

    searcher = Searcher.open(out)
    for new_id in new_ids:
        thumb, _ = searcher.thumbnail(new_id)
        hits = searcher.search_image(Image.open(io.BytesIO(thumb)), k=1)
        assert hits[0].id == new_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with TestClient(create_app(out), base_url="http://localhost") as client:
        assert client.get("/healthz").json()["items"] == 30
        for new_id in new_ids:
            for kind in ("thumbnail", "image"):
                response = client.get(f"/items/{new_id}/{kind}")
                assert response.status_code == 200 and response.content == searcher.thumbnail(new_id)[0]

    again = add_to_index(out, "builtin:shapes?n=30", progress=False)
    assert (again.added, again.already_indexed) == (0, 30)
    rebuilt = build_index(tiny_model_dir, "builtin:shapes?n=30", out, split="train", progress=False)
    assert set(open_store(rebuilt).ids()) == set(index.ids())  # a rerun keeps added items

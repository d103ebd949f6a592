"""A rebuild into an existing index folder resumes only what provably matches: rows that changed
or left the data are not served, deletions survive, an `index add` that never committed never
comes back (issue #11, "indexes that go stale")."""

import json

import pytest
from PIL import Image

import visembed
from visembed.index import add_to_index, build_index, open_store
from visembed.index.embed import embed_samples

COLOURS = [(220, 30, 30), (30, 180, 60), (40, 60, 220), (240, 210, 20), (200, 0, 200), (0, 200, 200),
           (120, 60, 0), (250, 150, 0), (90, 90, 90), (0, 0, 0), (255, 255, 255), (150, 200, 100)]


def write_manifest(folder, n, captions=None, prefix="img"):
    """`n` small solid-colour PNGs and a JSONL manifest naming them (ids "img-0" ...)."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"img-{i}.png"
        if not path.exists():
            Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)]).save(path)
        caption = (captions or {}).get(i, f"colour number {i}")
        rows.append(json.dumps({"id": f"{prefix}-{i}", "image": path.name, "caption": caption}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return str(manifest)


def captions_of(index_dir):
    store = open_store(index_dir)
    return {item["id"]: item["caption"] for item in store.meta(store.ids())}


def test_a_shrunk_manifest_and_a_changed_caption_are_not_served_stale(tiny_model_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "index"
    spec = write_manifest(data, 12)
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    assert len(captions_of(out)) == 12

    write_manifest(data, 8, captions={1: "a changed caption"})  # same spec string, other content
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    captions = captions_of(out)
    assert sorted(captions) == [f"img-{i}" for i in range(8)]
    assert captions["img-1"] == "a changed caption"
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["live"] == 8 and manifest["reused_shards"] == 1  # img-4..7 unchanged; img-0..3 re-embedded
    assert len(list((out / "embeddings").glob("shard_*.npy"))) == 2  # the stale shards are gone


def test_an_image_rewritten_in_place_is_embedded_again(tiny_model_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "index"
    spec = write_manifest(data, 4)
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    Image.new("RGB", (48, 48), (0, 0, 0)).save(data / "img-0.png")  # new size and mtime
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    index = open_store(out)
    assert json.loads((out / "index.json").read_text())["reused_shards"] == 0
    fresh = visembed.load(tiny_model_dir).encode_image([str(data / "img-0.png")])[0]
    assert float(index.vectors(["img-0"])[0] @ fresh) == pytest.approx(1.0, abs=1e-4)


def test_deletions_survive_a_rebuild_and_can_be_undone(tiny_model_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "index"
    spec = write_manifest(data, 6)
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    index = open_store(out)
    index.delete(["img-2", "img-5"])  # what `visembed index delete` does
    index.commit()

    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    assert sorted(captions_of(out)) == ["img-0", "img-1", "img-3", "img-4"]
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4, keep_deletions=False)
    assert len(captions_of(out)) == 6


def test_a_killed_add_is_never_resurrected_by_a_rebuild(tiny_model_dir, tmp_path):
    data, extra, out = tmp_path / "data", tmp_path / "extra", tmp_path / "index"
    spec = write_manifest(data, 4)
    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    committed = add_to_index(out, write_manifest(extra, 2, prefix="extra"), progress=False)
    assert committed.total == 6

    # `index add` killed after writing its shards, before index.json named them: the exact first
    # phase of `add_to_index`, without its commit
    more = visembed.data.open_dataset(write_manifest(tmp_path / "more", 3, prefix="uncommitted"), "all")
    embed_samples(visembed.load(tiny_model_dir), list(more), out, progress=False)
    assert len(list((out / "embeddings").glob("added_*.npy"))) == 2

    build_index(tiny_model_dir, spec, out, progress=False, shard_size=4)
    ids = set(captions_of(out))
    assert len(ids) == 6 and not any(i.startswith("uncommitted-") for i in ids)
    assert len(list((out / "embeddings").glob("added_*.npy"))) == 1  # the orphan is gone, the committed add stays

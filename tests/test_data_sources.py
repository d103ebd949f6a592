import csv
import io
import json

import pytest
import webdataset as wds
from PIL import Image

from visembed.data import DataError, SkipCounter, collate, load_image, open_dataset


def png_bytes(color="red", size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(png_bytes())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def test_jsonl_manifest_paths_are_relative_and_empty_captions_counted(tmp_path):
    write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"image": "img/a.png", "caption": "a red square"},
            {"image": "img/b.png", "caption": ""},
            {"image": "img/c.png", "caption": "红色方块"},
        ],
    )
    ds = open_dataset(str(tmp_path / "data.jsonl"))
    assert not ds.streaming and len(ds) == 2
    assert [s.caption for s in ds] == ["a red square", "红色方块"]
    assert ds[0].id == "img/a.png" and ds[0].path == str(tmp_path / "img" / "a.png")
    assert load_image(ds[0].image).size == (8, 8)
    assert ds.skipped.as_dict() == {"empty_caption": 1}
    assert ds.labels is None


def test_missing_column_names_the_column_and_the_file(tmp_path):
    write_images(tmp_path, ["a.png"])
    write_jsonl(tmp_path / "data.jsonl", [{"image": "a.png", "description": "x"}])
    with pytest.raises(DataError) as info:
        open_dataset(str(tmp_path / "data.jsonl"))
    assert "'caption'" in str(info.value) and "data.jsonl" in str(info.value)
    ds = open_dataset(str(tmp_path / "data.jsonl"), caption_column="description")
    assert ds[0].caption == "x"


def test_csv_manifest_with_split_and_label_columns(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    with (tmp_path / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text_en", "label", "split"])
        writer.writerow(["a.png", "one", "cat", "train"])
        writer.writerow(["b.png", "two", "dog", "validation"])
        writer.writerow(["c.png", "three", "cat", "train"])
    options = dict(image_column="path", caption_column="text_en")
    train = open_dataset(str(tmp_path / "data.csv"), "train", **options)
    val = open_dataset(str(tmp_path / "data.csv"), "val", **options)
    assert [s.caption for s in train] == ["one", "three"] and [s.caption for s in val] == ["two"]
    assert train.labels == ["cat"] and val[0].label == "dog"
    with pytest.raises(DataError, match="splits present"):
        open_dataset(str(tmp_path / "data.csv"), "test", **options)
    everything = open_dataset(str(tmp_path / "data.csv"), "all", **options)  # what `index build` reads by default
    assert [s.caption for s in everything] == ["one", "two", "three"]


def test_parquet_manifest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_images(tmp_path, ["a.png"])
    pq.write_table(pa.table({"image": ["a.png", "a.png"], "caption": ["first", "second"]}), tmp_path / "d.parquet")
    ds = open_dataset(str(tmp_path / "d.parquet"))
    assert [s.caption for s in ds] == ["first", "second"]
    assert [s.id for s in ds] == ["a.png", "a.png#1"]  # one image, two captions: ids stay unique


def test_hf_imagefolder_metadata_jsonl(tmp_path):
    write_images(tmp_path / "train", ["0001.png", "0002.png"])
    write_jsonl(
        tmp_path / "train" / "metadata.jsonl",
        [{"file_name": "0001.png", "text": "a cat"}, {"file_name": "0002.png", "text": "a dog"}],
    )
    ds = open_dataset(str(tmp_path / "train"))  # the folder: its metadata.jsonl is found
    assert [s.caption for s in ds] == ["a cat", "a dog"]
    assert ds[1].path == str(tmp_path / "train" / "0002.png")


def test_folder_of_images_with_txt_captions(tmp_path):
    write_images(tmp_path / "00000", ["b.jpg", "a.png", "c.png", "d.png"])
    (tmp_path / "00000" / "b.txt").write_text("second")
    (tmp_path / "00000" / "a.txt").write_text("first\n")
    (tmp_path / "00000" / "a.json").write_text("{}")
    (tmp_path / "00000" / "c.txt").write_text("")
    ds = open_dataset(str(tmp_path))
    assert [(s.id, s.caption) for s in ds] == [("00000/a", "first"), ("00000/b", "second")]
    assert ds.skipped.as_dict() == {"empty_caption": 1, "missing_caption": 1}


def test_webdataset_shards_stream_and_count_bad_items(tmp_path):
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"{shard:05d}.tar")) as sink:
            for i in range(3):
                key = f"{shard:05d}{i:04d}"
                sink.write({"__key__": key, "png": png_bytes(), "txt": f"caption {key}", "json": {"i": i}})
            sink.write({"__key__": f"{shard:05d}nocap", "jpg": png_bytes()})
            sink.write({"__key__": f"{shard:05d}noimg", "txt": "lonely caption"})
    with wds.TarWriter(str(tmp_path / "00002.tar")) as sink:
        sink.write({"__key__": "broken", "jpg": b"\xff\xd8\xff not really a jpeg", "txt": "broken"})
    ds = open_dataset(str(tmp_path / "{00000..00002}.tar"))
    assert ds.streaming and not hasattr(ds, "__len__")
    samples = list(ds)
    assert [s.id for s in samples][:4] == ["000000000", "000000001", "000000002", "000010000"]
    assert len(samples) == 7 and isinstance(samples[0].image, bytes)
    assert ds.skipped.as_dict() == {"empty_caption": 2, "missing_image": 2}
    counter = SkipCounter()
    pixels, kept = collate(samples, 8, counter)
    ids = [s.id for s in kept]
    assert len(ids) == 6 and "broken" not in ids
    assert counter.as_dict() == {"unreadable": 1}
    single = open_dataset(str(tmp_path / "00001.tar"))
    assert len(list(single)) == 3


def test_missing_shards_and_unknown_specs_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="shards not found"):
        open_dataset(str(tmp_path / "{00000..00003}.tar"))
    with pytest.raises(DataError, match="builtin:shapes"):
        open_dataset("not a spec")
    with pytest.raises(DataError, match="unknown option"):
        open_dataset("builtin:shapes?colour=red")
    with pytest.raises(DataError, match="known: builtin:shapes"):
        open_dataset("builtin:nothing")
    with pytest.raises(DataError, match="no such"):
        open_dataset(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("line", ["[1, 2]", '"img/a.png"', "3", "null"])
def test_a_jsonl_line_that_is_not_an_object_names_file_and_line(tmp_path, line):
    write_images(tmp_path / "img", ["a.png"])
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "img/a.png", "caption": "a"}) + "\n\n" + line + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:3: a line must be a JSON object"):
        open_dataset(str(tmp_path / "data.jsonl"))


def test_missing_files_are_counted_once_per_row(tmp_path):
    """Counted when the manifest is read, so a run reports rows, not every time a row is drawn."""
    write_images(tmp_path, ["a.png"])
    write_jsonl(tmp_path / "data.jsonl", [{"image": "a.png", "caption": "here"}, {"image": "gone.png", "caption": "gone"},
                                          {"image": "gone.png", "caption": "gone again"}])
    ds = open_dataset(str(tmp_path / "data.jsonl"))
    assert [s.caption for s in ds] == ["here"]
    assert ds.skipped.as_dict() == {"missing_file": 2}


def test_a_manifest_without_one_usable_row_fails_when_opened(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"image": f"img/{i}.png", "caption": f"picture {i}"} for i in range(3)])
    with pytest.raises(DataError) as info:
        open_dataset(str(tmp_path / "data.jsonl"))
    message = str(info.value)
    assert "none of the 3 rows" in message and "data.jsonl" in message
    assert f"first missing: {tmp_path / 'img' / '0.png'}" in message
    write_jsonl(tmp_path / "blank.jsonl", [{"image": "x.png", "caption": " "}])
    with pytest.raises(DataError, match="empty_caption=1"):
        open_dataset(str(tmp_path / "blank.jsonl"))


# ---- caption-less data and class folders (image-only training, classifiers) -------------------------


def test_a_folder_without_captions_is_kept_whole_when_captions_are_not_needed(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "a.txt").write_text("a red square")
    assert [s.id for s in open_dataset(str(tmp_path))] == ["a"]  # contrastive training: captions needed
    ds = open_dataset(str(tmp_path), need="nothing")
    assert [(s.id, s.caption) for s in ds] == [("a", "a red square"), ("b", "")]
    assert ds.skipped.as_dict() == {} and ds.labels is None


def test_class_folders_label_images_by_folder_with_splits_and_spaces(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        write_images(tmp_path / split / "golden_retriever", [f"{i}.png" for i in range(count)])
        write_images(tmp_path / split / "tabby_cat", [f"{i}.png" for i in range(count)])
    train = open_dataset(str(tmp_path), "train", need="label")
    assert len(train) == 6 and train.labels == ["golden retriever", "tabby cat"]
    assert train[0].id == "train/golden_retriever/0" and train[0].label == "golden retriever" and train[0].caption == ""
    test = open_dataset(str(tmp_path), "test", need="label")
    assert [s.label for s in test] == ["golden retriever", "tabby cat"]  # the test images only: no leak
    with pytest.raises(DataError, match="no 'val' folder.*test, train"):
        open_dataset(str(tmp_path), "val", need="label")
    assert len(open_dataset(str(tmp_path), "all", need="label")) == 8


def test_classes_txt_renames_class_folders_and_a_wrong_count_is_named(tmp_path):
    write_images(tmp_path / "n01", ["a.png"])
    write_images(tmp_path / "n02", ["b.png"])
    (tmp_path / "classes.txt").write_text("n02\tsmall dog\nn01\tbig cat\n")
    assert [s.label for s in open_dataset(str(tmp_path), need="label")] == ["big cat", "small dog"]
    (tmp_path / "classes.txt").write_text("big cat\nsmall dog\n")  # one name a line, sorted folder order
    assert open_dataset(str(tmp_path), need="label").labels == ["big cat", "small dog"]
    (tmp_path / "classes.txt").write_text("only one\n")
    with pytest.raises(DataError, match="1 names for 2 class folders"):
        open_dataset(str(tmp_path), need="label")


def test_captioned_folders_in_subfolders_are_not_read_as_classes(tmp_path):
    write_images(tmp_path / "00000", ["1.png", "2.png"])  # img2dataset's "files" layout
    (tmp_path / "00000" / "1.txt").write_text("a photo")
    (tmp_path / "00000" / "2.txt").write_text("another photo")
    ds = open_dataset(str(tmp_path), need="label")
    assert ds.labels is None and {s.label for s in ds} == {None}


def test_a_manifest_without_caption_column_serves_image_only_training(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    write_jsonl(tmp_path / "data.jsonl", [{"image": "a.png", "label": "cat"}, {"image": "b.png", "label": "dog"}])
    with pytest.raises(DataError, match="no caption column"):
        open_dataset(str(tmp_path / "data.jsonl"))
    ds = open_dataset(str(tmp_path / "data.jsonl"), need="label")
    assert [(s.caption, s.label) for s in ds] == [("", "cat"), ("", "dog")]


def test_shards_of_images_without_text_stream_when_captions_are_not_needed(tmp_path):
    shard = tmp_path / "000.tar"
    with wds.TarWriter(str(shard)) as sink:
        sink.write({"__key__": "x", "png": png_bytes()})
        sink.write({"__key__": "y", "png": png_bytes(), "txt": "a caption"})
    with_captions = open_dataset(str(shard))
    assert [s.id for s in with_captions] == ["y"] and with_captions.skipped.as_dict() == {"empty_caption": 1}
    assert [(s.id, s.caption) for s in open_dataset(str(shard), need="nothing")] == [("x", ""), ("y", "a caption")]


def test_an_unknown_need_is_refused():
    with pytest.raises(ValueError, match="caption, label, nothing"):
        open_dataset("builtin:shapes?n=4", need="captions")

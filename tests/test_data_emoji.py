from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from visembed.data import EMOJI_ATTRIBUTION, DataError, load_image, open_dataset
from visembed.data.emoji import NOTO_FONT, SKIN_TONES, emoji_catalogue, emoji_spec


def test_catalogue_has_english_and_chinese_names():
    catalogue = emoji_catalogue()
    assert 3900 < len(catalogue) < 4100
    by_stem = {c.stem: c for c in catalogue}
    dog = by_stem["1F436"]
    assert (dog.en, dog.zh, dog.char) == ("dog face", "狗脸", "\U0001f436")
    assert all(c.en and c.zh and ":" not in c.en and "_" not in c.zh for c in catalogue)
    assert by_stem["0023-FE0F-20E3"].char == "#\ufe0f\u20e3"  # a sequence keeps FE0F in its file name
    assert dog.group == "Animals & Nature" and dog.subgroup == "animal-mammal"
    assert "OpenMoji" in EMOJI_ATTRIBUTION and "CC BY-SA 4.0" in EMOJI_ATTRIBUTION


def test_splits_are_by_concept():
    catalogue = emoji_catalogue()
    splits_of_concept = defaultdict(set)
    for c in catalogue:
        splits_of_concept[c.concept].add(c.split)
    assert all(len(splits) == 1 for splits in splits_of_concept.values())
    toned = [c for c in catalogue if set(c.stem.split("-")) & SKIN_TONES and c.concept != c.stem]
    assert len(toned) > 1000  # the property above is about real variants
    thumbs = {c.stem: c.split for c in catalogue if c.concept == "1F44D"}
    assert len(thumbs) == 6 and len(set(thumbs.values())) == 1
    counts = {name: sum(c.split == name for c in catalogue) for name in ("train", "val", "test")}
    assert counts["train"] > 0.8 * len(catalogue) and counts["val"] > 0.03 * len(catalogue)
    assert counts["test"] > 0.08 * len(catalogue)


def test_small_render_is_cached_and_captions_follow_language(tmp_path):
    ds = open_dataset(f"builtin:emoji?limit=4&size=32&cache={tmp_path}", "val", language="zh")
    assert len(ds) == 4 and not ds.streaming
    sample = ds[0]
    assert Path(sample.path).parent == tmp_path / "emoji-32"
    assert sample.caption == sample.captions["zh"] and sample.captions["en"]
    assert sample.label in ds.labels and sample.id.startswith("openmoji-")
    image = load_image(sample.image)
    assert image.size == (32, 32) and image.getpixel((0, 0)) == (255, 255, 255)  # alpha on white
    assert len(image.getcolors(maxcolors=4096) or []) > 10  # real artwork, not a blank square
    assert not list(tmp_path.glob("emoji-32/.*.tmp"))  # atomic writes leave no temporary files
    mtime = Path(sample.path).stat().st_mtime_ns
    again = open_dataset(f"builtin:emoji?limit=12&size=32&cache={tmp_path}", "val", language="both")
    assert Path(again[0].path).stat().st_mtime_ns == mtime  # rendered once
    languages = ["en" if s.caption == s.captions["en"] else "zh" for s in again]
    assert all(s.caption in (s.captions["en"], s.captions["zh"]) for s in again)
    assert set(languages) == {"en", "zh"}
    assert languages == ["en" if s.caption == s.captions["en"] else "zh" for s in again]  # fixed per sample


def test_captions_none_gives_the_same_images_and_labels_without_names(tmp_path):
    named = open_dataset(f"builtin:emoji?limit=4&size=32&cache={tmp_path}&label=subgroup", "val")
    bare = open_dataset(f"builtin:emoji?limit=4&size=32&cache={tmp_path}&label=subgroup&captions=none", "val")
    assert [s.image for s in bare] == [s.image for s in named] and [s.label for s in bare] == [s.label for s in named]
    assert all(s.caption for s in named) and all(s.caption == "" and s.captions == {} for s in bare)


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path))
    ds = open_dataset("builtin:emoji?limit=1&size=16", "test")
    assert Path(ds[0].path).parent == tmp_path / "emoji-16"


def test_emoji_spec_renders_at_the_model_size_above_the_default(tmp_path):
    assert emoji_spec(48) == emoji_spec(64) == "builtin:emoji"  # small models share the default renders
    assert emoji_spec(96) == "builtin:emoji?size=96"
    assert emoji_spec(32, style="noto") == "builtin:emoji?style=noto"
    assert emoji_spec(160, style="all") == "builtin:emoji?size=160&style=all"
    ds = open_dataset(emoji_spec(96) + f"&limit=1&cache={tmp_path}", "test")
    assert Path(ds[0].path).parent == tmp_path / "emoji-96"
    with Image.open(ds[0].path) as image:
        assert image.size == (96, 96)


@pytest.mark.skipif(not NOTO_FONT.is_file(), reason="fonts-noto-color-emoji is not installed")
def test_noto_style_and_all_styles(tmp_path):
    spec = f"builtin:emoji?limit=3&size=32&cache={tmp_path}"
    noto = open_dataset(spec + "&style=noto", "val")
    assert len(noto) == 3 and noto[0].meta["style"] == "noto" and noto[0].id.startswith("noto-")
    with Image.open(noto[0].path) as image:
        assert image.size == (32, 32)
    both = open_dataset(spec + "&style=all", "val")
    assert len(both) == 6 and {s.meta["style"] for s in both} == {"openmoji", "noto"}
    assert len({s.id for s in both}) == 6


def test_bad_emoji_options_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="style"):
        open_dataset(f"builtin:emoji?style=comic&cache={tmp_path}")
    with pytest.raises(DataError, match="language"):
        open_dataset(f"builtin:emoji?cache={tmp_path}", language="fr")
    with pytest.raises(DataError, match="captions must be names or none"):
        open_dataset(f"builtin:emoji?captions=some&cache={tmp_path}")
    monkeypatch.setattr("visembed.data.emoji.NOTO_FONT", tmp_path / "absent.ttf")
    with pytest.raises(DataError, match="fonts-noto-color-emoji"):
        open_dataset(f"builtin:emoji?style=noto&cache={tmp_path}")


def test_many_renders_go_through_the_worker_pool(tmp_path):
    ds = open_dataset(f"builtin:emoji?limit=70&size=16&cache={tmp_path}", "train")  # >= 64 jobs: processes
    assert len(ds) == 70
    assert len(list((tmp_path / "emoji-16").glob("*.png"))) == 70
    assert not list((tmp_path / "emoji-16").glob(".*"))


def test_style_all_without_the_font_says_so_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("visembed.data.emoji.NOTO_FONT", tmp_path / "absent.ttf")
    monkeypatch.setattr("visembed.data.emoji._noto_missing_said", False)
    spec = f"builtin:emoji?style=all&limit=2&size=16&cache={tmp_path}"
    ds = open_dataset(spec, "val")
    assert ds.styles == ("openmoji",)
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "fonts-noto-color-emoji" in said[0] and "apt-get install" in said[0]
    open_dataset(spec, "val")  # opened again for eval and the index: not said again
    assert capsys.readouterr().err == ""


def test_the_data_line_names_the_styles_and_their_credits(monkeypatch, tmp_path):
    from visembed.commands.demo_cmd import data_line
    from visembed.data.emoji import NOTO_ATTRIBUTION

    monkeypatch.setattr("visembed.data.emoji.NOTO_FONT", tmp_path / "absent.ttf")
    monkeypatch.setattr("visembed.data.emoji._noto_missing_said", True)
    openmoji_only = data_line(open_dataset(f"builtin:emoji?style=all&limit=2&size=16&cache={tmp_path}", "val"))
    assert openmoji_only.startswith("Data: OpenMoji art.") and "CC BY-SA 4.0" in openmoji_only
    assert "Noto" not in openmoji_only and "CLDR" in openmoji_only
    monkeypatch.undo()
    if not NOTO_FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    both = data_line(open_dataset(f"builtin:emoji?style=all&limit=2&size=16&cache={tmp_path}", "val"))
    assert both.startswith("Data: OpenMoji + Noto Color Emoji art.") and NOTO_ATTRIBUTION in both
    assert "CC BY-SA 4.0" in both

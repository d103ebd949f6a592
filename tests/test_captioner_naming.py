"""Naming what the captioner sees: hints from an open vocabulary (cached per model), copying a hinted
name verbatim, one script per answer, and `--language` / `--vocabulary` in the commands and HTTP."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import visembed
from visembed.checkpoint import ModelFolderError
from visembed.data import open_dataset
from visembed.models.caption_constraints import CopyAndScript, Naming, contains_hint, name_pieces
from visembed.models.vocabulary import VocabularyError, cached_vectors, emoji_names, file_names, read_vocabulary

REPO = Path(visembed.__file__).resolve().parents[1]
SHAPES = "builtin:shapes?n=256"
LATIN = re.compile(r"[A-Za-z]")


def test_the_emoji_vocabulary_has_every_cldr_name_in_both_languages():
    names = emoji_names()
    assert "dog face" in names["en"] and "狗脸" in names["zh"] and "prayer beads" in names["en"]
    assert len(names["en"]) > 3900 and len(names["zh"]) > 3900


def test_a_users_list_is_split_by_script_and_bad_sources_are_one_clear_error(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# my names\nred  kettle\n\n水壶\nred kettle\n", encoding="utf-8")
    assert file_names(path) == {"en": ["red kettle"], "zh": ["水壶"]}
    assert read_vocabulary([str(path), "none"]) == {"en": ["red kettle"], "zh": ["水壶"]}
    with pytest.raises(VocabularyError, match="neither emoji, cedict, none nor a file"):
        read_vocabulary(["no-such-list.txt"])
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(VocabularyError, match="cannot read"):
        read_vocabulary([str(tmp_path / "bad.txt")])


def test_vocabulary_vectors_are_computed_once_per_model_and_texts(tmp_path):
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return torch.arange(len(texts) * 2, dtype=torch.float32).view(len(texts), 2)

    first = cached_vectors(["a", "b"], "model1", encode, tmp_path)
    again = cached_vectors(["a", "b"], "model1", encode, tmp_path)
    assert calls == [2] and torch.equal(first, again)  # the second came from the cache
    cached_vectors(["a", "b"], "model2", encode, tmp_path)  # another model: computed again
    cached_vectors(["a", "c"], "model1", encode, tmp_path)  # other texts: computed again
    assert calls == [2, 2, 2]
    for path in tmp_path.glob("model1-*.npy"):
        path.write_bytes(b"damaged")
    assert torch.equal(cached_vectors(["a", "b"], "model1", encode, tmp_path), first) and calls[-1] == 2


@pytest.fixture(scope="module")
def model(tiny_captioner_dir):
    return visembed.load(tiny_captioner_dir)


def test_the_decoding_rules_favour_a_started_name_and_ban_the_other_script(model):
    tokenizer = model.module.tokenizer
    size = len(tokenizer)
    (piece,) = [p for p in name_pieces(tokenizer, ["red circle"]) if len(p) > 1][:1]
    rules = CopyAndScript(tokenizer, ["en", "zh"], [["red circle"], ["red circle"]], beams=1, copy_bonus=5.0,
                          start_bonus=0.0)
    started = torch.tensor([list(piece[:1]), list(piece[:1])])  # both answers have begun the name
    out = rules(started, torch.zeros(2, size))
    assert out[0, piece[1]] == 5.0 and out[0].max() == 5.0  # English: the name's next token, and only it, favoured
    special = set(tokenizer.all_special_ids)
    own = {token for p in name_pieces(tokenizer, ["red circle"]) for token in p}  # either spelling's tokens
    latin = [i for i in range(size) if LATIN.search(tokenizer.decode([i])) and i not in own and i not in special]
    assert latin and torch.isinf(out[1, latin]).all()  # Chinese: no Latin token but the name's own
    assert out[1, piece[1]] == 5.0
    assert not torch.isinf(out[0, latin]).any()


def test_re_ranking_knows_which_candidates_name_a_hint():
    assert contains_hint("The Dog Face emoji, from Animals.", ["dog face"])
    assert not contains_hint("The dog emoji.", ["dog face", ""])


def test_hints_come_from_the_open_vocabulary_as_well(model, tmp_path, monkeypatch):
    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path))
    module = model.module
    image = open_dataset(SHAPES, "test")[0].image
    features = module.features(model.pixels([image]))
    bank = module.hint_bank["en"]
    try:
        model.use_vocabulary(["none"])
        (closed,) = module.hints_for(features, ["en"], count=len(bank) + 5)
        assert set(closed) == set(bank)
        names = tmp_path / "names.txt"
        names.write_text("zebra crossing\nlighthouse\n", encoding="utf-8")
        model.use_vocabulary([str(names)])
        (opened,) = module.hints_for(features, ["en"], count=len(bank) + 5)
        assert set(opened) == set(bank) | {"zebra crossing", "lighthouse"}
        assert list(tmp_path.glob("vocabulary/*.npy"))  # the names' vectors were kept
        scores = model.encode_text(opened) @ model.encode_image([image])[0]  # the dual encoder's own ranking
        assert np.all(np.diff(scores) <= 1e-3)  # most similar first
    finally:
        model.use_vocabulary(model.config.model.captioner.vocabulary)  # as loaded


def test_a_captioner_folder_names_its_open_vocabulary_and_no_file(tiny_captioner_dir, tmp_path):
    """`model.captioner.vocabulary` (the demo's captioner: ["emoji"]) is what a loaded captioner
    draws hints from; `--vocabulary` replaces it; a folder's config may not name a file to read."""
    assert visembed.load(tiny_captioner_dir).module.vocabulary == {}  # the default: training captions alone
    folder = tmp_path / "captioner"
    shutil.copytree(tiny_captioner_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["captioner"]["vocabulary"] = ["emoji"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = visembed.load(folder)
    names = loaded.module.vocabulary
    assert "dog face" in names["en"] and "狗脸" in names["zh"]
    loaded.use_vocabulary(["none"])
    assert loaded.module.vocabulary == {}
    for bad in (["/etc/passwd"], [], ["emoji", "names.txt"], ["emoji"] * 1_000_000):
        config["model"]["captioner"]["vocabulary"] = bad
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelFolderError, match="model.captioner.vocabulary"):
            visembed.load(folder)


def test_a_chinese_caption_has_no_latin_word_and_an_english_one_no_chinese(model):
    images = [open_dataset(SHAPES, "test")[i].image for i in range(4)]
    chinese = model.caption(images, language="zh", candidates=2)
    assert all(not LATIN.search(text.replace("可能是", "")) for text in chinese), chinese
    before = model.naming
    try:  # the LM alone (trained on English shapes only) writes Latin letters when asked in Chinese
        model.naming = Naming(rules=False)
        assert any(LATIN.search(text) for text in model.caption(images, language="zh", candidates=2))
    finally:
        model.naming = before
    reply = model.chat(images[0], [{"role": "user", "content": "What is this?"}], language="zh")
    assert not LATIN.search(reply)
    with pytest.raises(ValueError, match="language"):
        model.chat(images[0], [{"role": "user", "content": "What is this?"}], language="fr")


def _cli(*args):
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "visembed.cli", *map(str, args)], capture_output=True, text=True,
                          env={**__import__("os").environ, **env}, cwd=REPO)


def test_commands_take_language_and_vocabulary(tiny_captioner_dir, model, tmp_path):
    path = tmp_path / "shape.png"
    open_dataset(SHAPES, "test")[0].image.save(path)
    names = tmp_path / "names.txt"
    names.write_text("lighthouse\n", encoding="utf-8")
    result = _cli("chat", tiny_captioner_dir, "--image", path, "--message", "What is this?", "--language", "zh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == model.chat(str(path), [{"role": "user", "content": "What is this?"}],
                                               language="zh")
    result = _cli("caption", tiny_captioner_dir, path, "--json", "--vocabulary", names, "--language", "zh")
    assert result.returncode == 0, result.stderr and not LATIN.search(json.loads(result.stdout)[0]["caption"])
    for bad in (["caption", tiny_captioner_dir, path, "--vocabulary", tmp_path / "missing.txt"],
                ["chat", tiny_captioner_dir, "--image", path, "--message", "hi", "--language", "fr"]):
        result = _cli(*bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_slot_filling_puts_each_hinted_name_where_the_lm_wrote_a_known_one():
    from visembed.models.caption_constraints import with_names_swapped

    found = [("The dog face emoji, from Animals.", 0.9), ("A blur.", 0.2)]
    out = with_names_swapped(found, ["wolf", "fox"], {"dog", "dog face", "wolf", "fox"})
    assert out[:2] == found  # the LM's own first, in its order
    assert out[2:] == [("The wolf emoji, from Animals.", 0.9), ("The fox emoji, from Animals.", 0.9)]  # longest name


def test_slot_filling_finds_the_name_where_beams_disagree():
    from visembed.models.caption_constraints import differing_span, with_names_swapped

    found = [("The So emoji, from Flags.", 0.9), ("The Si emoji, from Flags.", 0.8),
             ("The Tan emoji, from Symbols.", 0.5), ("The So emoji, fromflag.", 0.4), ("The Ca emoji, fromflag.", 0.3)]
    texts = [t for t, _ in found]
    assert differing_span(texts[0], texts) == (4, 6)  # "So": the word the beams disagree on
    assert differing_span(texts[2], texts) is None  # differs by a clause, not a name: left alone
    out = with_names_swapped(found, ["Burkina Faso", "Gambia"], set())
    assert out[: len(found)] == found
    # each hint once, in the sentence most beams share (not the malformed "fromflag." pair)
    assert out[len(found):] == [("The Burkina Faso emoji, from Flags.", 0.9), ("The Gambia emoji, from Flags.", 0.9)]
    zh = ["一个“圣斯”表情符号，属于旗帜类。", "一个“圣瑞”表情符号，属于旗帜类。", "一个“属于旗帜类。"]
    assert [t[slice(*differing_span(t, zh))] for t in zh[:2]] == ["圣斯", "圣瑞"]  # the whole Chinese run
    assert with_names_swapped([(z, 0.5) for z in zh], ["冈比亚"], set())[-1] == ("一个“冈比亚”表情符号，属于旗帜类。", 0.5)
    assert with_names_swapped([("The So emoji.", 0.9)], ["Gambia"], set()) == [("The So emoji.", 0.9)]  # alone: no slot


def test_a_latin_name_counts_as_whole_words_only():
    assert not contains_hint("The catholic church.", ["cat"]) and contains_hint("A cat, sitting.", ["cat"])
    assert contains_hint("一个“狗脸”表情符号", ["狗脸"])


def test_own_hint_rate_puts_the_images_own_name_among_its_training_hints():
    from visembed.config import ConfigError, apply_overrides, load_preset
    from visembed.train.tasks.captioning import with_own_hint

    hints = ["dog face", "cat face", "wolf"]
    assert with_own_hint(hints, "fox", 0.0) == hints  # the default: a concept never seen
    torch.manual_seed(0)
    drawn = [with_own_hint(hints, "fox", 1.0) for _ in range(60)]
    assert all(len(d) == 3 and "fox" in d for d in drawn)
    assert {d.index("fox") for d in drawn} == {0, 1, 2}  # anywhere: the LM must find it by the image
    assert all([h for h in d if h != "fox"] == [h for h in hints if h in d] for d in drawn)  # the rest keep their order
    torch.manual_seed(0)
    half = sum("fox" in with_own_hint(hints, "fox", 0.5) for _ in range(400))
    assert 160 < half < 240
    torch.manual_seed(0)
    again = [with_own_hint(hints, "fox", 1.0) for _ in range(60)]
    assert again == drawn  # from the step's seeded RNG: resumes are exact
    assert with_own_hint([], "fox", 1.0) == [] and with_own_hint(hints, None, 1.0) == hints
    with pytest.raises(ConfigError, match="own_hint_rate"):
        apply_overrides(load_preset("tiny"), ["model.architecture=captioner", "model.captioner.own_hint_rate=1.5"])

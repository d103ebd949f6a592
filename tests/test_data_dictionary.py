"""CC-CEDICT word pairs for the CJK student, read from the real dictionary file."""

import re

from visembed.data.dictionary import _all_pairs, cedict_pairs, first_sense


def test_common_words_pair_with_their_first_meaning():
    pairs = dict(_all_pairs())
    assert len(pairs) > 80_000
    assert pairs["狗"] == "dog" and pairs["咖啡"] == "coffee" and pairs["披萨"] == "pizza"
    assert pairs["红绿灯"] == "traffic light"


def test_notes_and_non_words_are_left_out():
    pairs = _all_pairs()
    assert not [en for _, en in pairs if re.match(r"(CL:|surname|variant of|abbr\.)", en, re.I)]
    assert not [zh for zh, _ in pairs if re.search(r"[A-Za-z0-9]", zh) or len(zh) > 8]
    assert not [en for _, en in pairs if "(" in en or "[" in en or len(en.split()) > 5]


def test_first_sense_skips_notes_and_cleans_the_meaning():
    assert first_sense(["CL:個|个[ge4]", "surname Wang", "king (title)"]) == "king"
    assert first_sense(["to run (fast)"]) == "run"
    assert first_sense(["variant of 狗[gou3]", "abbr. for something"]) is None


def test_a_limited_draw_is_repeatable_and_depends_on_the_seed():
    a, b, c = cedict_pairs(500, seed=0), cedict_pairs(500, seed=0), cedict_pairs(500, seed=1)
    assert len(a) == 500 and a == b and a != c
    assert set(a) <= set(_all_pairs())
    assert len(cedict_pairs(10**7)) == len(_all_pairs())

import pytest
from pycocoevalcap.bleu.bleu import Bleu

from visembed.eval.caption_metrics import caption_scores, caption_tokens

CAPTIONS = [
    "A red apple on a wooden table.",
    "The grinning face emoji, from Smileys & Emotion.",
    "Two cats sleep on a blue sofa.",
    "A man rides a bicycle down the street.",
]
UNRELATED = ["violin concerto tonight", "quarterly tax forms", "mountain glacier melting", "keyboard shortcut list"]
CHINESE = ["一个红苹果放在木桌上", "两只猫睡在蓝色沙发上", "一个男人在街上骑自行车", "一个“笑脸”表情符号，属于笑脸和情感类。"]


def test_identical_captions_score_perfectly():
    scores = caption_scores(CAPTIONS, [[c] for c in CAPTIONS], "en")
    assert set(scores) == {"BLEU-4", "ROUGE-L", "CIDEr"}
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] > 5  # pycocoevalcap's CIDEr is x10: 10 for a perfect match


def test_cider_depends_on_the_evaluated_set():
    # IDF comes from the references being scored: an n-gram every reference has weighs nothing
    alone = caption_scores(CAPTIONS[:1], [CAPTIONS[:1]], "en")
    repeated = caption_scores(CAPTIONS[:1] * 3, [CAPTIONS[:1]] * 3, "en")
    assert alone["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and alone["CIDEr"] == 0 and repeated["CIDEr"] == 0


def test_unrelated_captions_score_about_zero():
    scores = caption_scores(UNRELATED, [[c] for c in CAPTIONS], "en")
    assert scores["BLEU-4"] < 1e-6 and scores["ROUGE-L"] == 0 and scores["CIDEr"] < 1e-6


def test_tokens_ignore_case_and_punctuation():
    assert caption_tokens("A red, RED apple!", "en") == ["a", "red", "red", "apple"]
    assert caption_tokens("一个“红苹果”，OK 3D。", "zh") == ["一", "个", "红", "苹", "果", "ok", "3d"]
    assert caption_tokens("ＯＫ", "zh") == ["ok"]  # full-width latin is the same word


def test_chinese_is_scored_per_character():
    # one character differs: split on whitespace each caption would be one "word", and this a total miss
    predictions = ["一个红苹果放在木桌子上"] + CHINESE[1:]
    scores = caption_scores(predictions, [[c] for c in CHINESE], "zh")
    assert scores["ROUGE-L"] > 0.9 and scores["BLEU-4"] > 0.5 and scores["CIDEr"] > 6  # whitespace: 0.75, -, 3.75
    assert caption_scores(predictions[:1] * 4, [[c] for c in CHINESE[:1] * 4], "zh")["BLEU-4"] > 0.5  # whitespace: 0
    assert caption_tokens(CHINESE[0], "en") == [CHINESE[0]]  # what whitespace splitting would score


def test_word_order_changes_bleu4_but_not_unigram_overlap():
    shuffled = ["table wooden a on apple red a", "emotion smileys from emoji face grinning the",
                "sofa blue a on sleep cats two", "street the down bicycle a rides man a"]
    references = [[c] for c in CAPTIONS]
    assert caption_scores(shuffled, references, "en")["BLEU-4"] < 0.05
    tokenised = {i: [" ".join(caption_tokens(c, "en"))] for i, c in enumerate(shuffled)}
    truth = {i: [" ".join(caption_tokens(c, "en"))] for i, c in enumerate(CAPTIONS)}
    bleu, _ = Bleu(1).compute_score(truth, tokenised, verbose=0)
    assert bleu[0] == pytest.approx(1.0, abs=1e-6)  # every word is there, in another order


def test_several_references_take_the_best_match():
    one = caption_scores(CAPTIONS, [[c] for c in UNRELATED], "en")
    several = caption_scores(CAPTIONS, [[u, c] for u, c in zip(UNRELATED, CAPTIONS)], "en")
    assert several["BLEU-4"] > 0.9 and several["ROUGE-L"] > 0.9 and one["ROUGE-L"] < 0.2


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no predictions"):
        caption_scores([], [], "en")
    with pytest.raises(ValueError, match="2 predictions but 1"):
        caption_scores(["a", "b"], [["a"]], "en")
    with pytest.raises(ValueError, match="reference"):
        caption_scores(["a"], [[]], "en")
    with pytest.raises(ValueError, match="reference"):
        caption_scores(["a"], ["a"], "en")  # a bare string, not a list of references

"""The CJK student learns to put a Chinese name where the frozen English tower puts its translation."""

import torch

from visembed.config import apply_overrides, load_preset
from visembed.data import open_dataset
from visembed.models.bpe_tokenizer import train_bpe_tokenizer
from visembed.models import build_model
from visembed.train.distill import distill_student, translation_pairs


def _match_rate(text_tower, pairs):
    with torch.no_grad():
        student = torch.nn.functional.normalize(text_tower.student_proj(text_tower.student.encode([zh for zh, _ in pairs])), dim=-1)
        teacher = text_tower._encode_teacher([en for _, en in pairs])
    return ((student @ teacher.T).argmax(dim=1) == torch.arange(len(pairs))).float().mean().item()


def test_distillation_maps_chinese_names_onto_their_english_features(tmp_path):
    pairs = translation_pairs(open_dataset("builtin:emoji?limit=300", "train"))[:48]
    assert all(zh != en for zh, en in pairs) and any("狗" in zh for zh, _ in translation_pairs(open_dataset("builtin:emoji", "all")))
    train_bpe_tokenizer([t for pair in pairs for t in pair], 400, tmp_path / "tokenizer.json")
    cfg = apply_overrides(load_preset("demo-scratch"), ["model.vision.channels=[8,16]"])
    text = build_model(cfg.model, tmp_path).train().text
    before = _match_rate(text, pairs)
    teacher_before = text._encode_teacher([en for _, en in pairs]).clone()
    loss = distill_student(text, pairs, steps=150, batch_size=48, lr=3e-3, seed=0)
    assert loss < 0.3
    assert _match_rate(text, pairs) > max(0.8, before + 0.5)
    assert torch.equal(text._encode_teacher([en for _, en in pairs]), teacher_before)  # the teacher stays frozen


def test_dictionary_pairs_teach_words_the_names_lack(tmp_path):
    """Half of each batch from the dictionary: its words land on their English features, which
    distillation on the names alone does not do."""
    from visembed.data.dictionary import cedict_pairs

    names = translation_pairs(open_dataset("builtin:emoji?limit=300", "train"))[:48]
    known = {zh for zh, _ in names}
    words = [(zh, en) for zh, en in cedict_pairs(2000, seed=0) if zh not in known][:48]
    train_bpe_tokenizer([t for pair in names + words for t in pair], 600, tmp_path / "tokenizer.json")
    cfg = apply_overrides(load_preset("demo-scratch"), ["model.vision.channels=[8,16]"])
    rates = {}
    for with_words in (False, True):
        torch.manual_seed(0)
        text = build_model(cfg.model, tmp_path).train().text
        distill_student(text, names, steps=200, batch_size=48, lr=3e-3, seed=0, dictionary=words if with_words else [])
        rates[with_words] = (_match_rate(text, names), _match_rate(text, words))
    assert rates[True][1] > max(0.6, rates[False][1] + 0.4)  # the dictionary's words are learnt
    assert rates[True][0] > 0.6  # and the names still are, with half the batch each

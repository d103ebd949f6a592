import torch

from visembed.models.bpe_tokenizer import BPETokenizer, train_bpe_tokenizer

TEXTS = ["a small red circle left of a blue square", "dog face", "狗脸", "红色的圆形在蓝色方块左边"] * 5


def test_round_trip_with_chinese_and_saved_file(tmp_path):
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=300, out_path=tmp_path)
    loaded = BPETokenizer.load(tmp_path)  # the folder holds tokenizer.json
    assert (tmp_path / "tokenizer.json").is_file() and loaded.vocab_size == tokenizer.vocab_size
    texts = ["a red circle", "狗脸在左边", "emoji 🐶!"]  # characters unseen in training encode too
    ids, lengths = loaded.encode_batch(texts, context_length=32)
    assert ids.shape == (3, 32) and ids.dtype == torch.long
    assert [loaded.decode(row) for row in ids] == texts
    assert ids[:, 0].tolist() == [1, 1, 1]
    assert ids[torch.arange(3), lengths - 1].tolist() == [2, 2, 2]  # eos at lengths - 1
    assert all((row[n:] == 0).all() for row, n in zip(ids, lengths.tolist()))


def test_eos_survives_truncation():
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=300)
    ids, lengths = tokenizer.encode_batch(["word " * 40, "狗" * 40, "a"], context_length=8)
    assert lengths.tolist()[:2] == [8, 8]
    assert ids[:, -1].tolist()[:2] == [2, 2] and ids[2, lengths[2] - 1] == 2
    assert (ids[:, 0] == 1).all()

import numpy as np
import pytest

from visembed.eval.retrieval import retrieval_metrics
from visembed.eval.zeroshot import zeroshot_accuracy


def _naive_recall(image_emb, captions, text_emb, k):
    """Loop-by-loop reference: a text query hits if any image with that caption is in its top k."""
    texts = list(dict.fromkeys(captions))
    hits_t2i, hits_i2t = [], []
    for t, text in enumerate(texts):
        scores = [(float(image_emb[i] @ text_emb[t]), i) for i in range(len(captions))]
        top = [i for _, i in sorted(scores, key=lambda s: -s[0])[:k]]
        hits_t2i.append(any(captions[i] == text for i in top))
    for i, caption in enumerate(captions):
        scores = [(float(image_emb[i] @ text_emb[t]), t) for t in range(len(texts))]
        top = [t for _, t in sorted(scores, key=lambda s: -s[0])[:k]]
        hits_i2t.append(texts.index(caption) in top)
    return np.mean(hits_t2i), np.mean(hits_i2t)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_matches_naive_loop_with_duplicate_captions():
    rng = np.random.default_rng(0)
    captions = [f"c{rng.integers(0, 30)}" for _ in range(60)]  # repeated captions
    n_texts = len(dict.fromkeys(captions))
    image_emb, text_emb = _unit(rng.normal(size=(60, 16))), _unit(rng.normal(size=(n_texts, 16)))
    metrics = retrieval_metrics(image_emb, captions, text_emb)
    for k in (1, 5, 10):
        t2i, i2t = _naive_recall(image_emb, captions, text_emb, k)
        assert np.isclose(metrics[f"text_to_image_R@{k}"], t2i)
        assert np.isclose(metrics[f"image_to_text_R@{k}"], i2t)
    assert metrics["num_texts"] == n_texts


def test_perfect_embeddings_score_one():
    emb = np.eye(5, dtype=np.float32)
    metrics = retrieval_metrics(emb, list("abcde"), emb)
    assert metrics["text_to_image_R@1"] == 1.0 and metrics["image_to_text_mean_rank"] == 1.0


def test_zeroshot_accuracy_counts_correct_top1():
    class_emb = np.eye(3, dtype=np.float32)
    images = np.array([[1, 0, 0], [0, 0.9, 0.1], [0.2, 0, 0.8], [1, 0, 0]], dtype=np.float32)
    out = zeroshot_accuracy(images, ["a", "b", "c", "b"], class_emb, ["a", "b", "c"])
    assert out["zeroshot_top1"] == 0.75
    assert np.isclose(out["zeroshot_mean_per_class_recall"], (1 + 0.5 + 1) / 3)


def test_ties_rank_the_right_item_last_not_first():
    """A collapsed model (every score equal) gets the worst rank, not R@1 = 1.0."""
    emb = np.ones((6, 4), dtype=np.float32) / 2.0
    metrics = retrieval_metrics(emb, list("abcdef"), emb)
    assert metrics["text_to_image_R@1"] == 0.0 and metrics["image_to_text_R@1"] == 0.0
    assert metrics["text_to_image_mean_rank"] == 6.0 and metrics["image_to_text_median_rank"] == 6.0
    # one tie: the right image shares the top score with one wrong image -> rank 2
    images = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    texts = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = retrieval_metrics(images[[0, 2]], ["x", "y"], texts)
    assert out["text_to_image_R@1"] == 1.0  # no tie there
    tied = retrieval_metrics(images, ["x", "z", "y"], np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32))
    assert tied["text_to_image_R@1"] == 1 / 3 and tied["text_to_image_mean_rank"] == (2 + 2 + 1) / 3


def test_zeroshot_ties_are_not_correct():
    out = zeroshot_accuracy(np.ones((4, 3), np.float32), ["a", "b", "c", "a"], np.ones((3, 3), np.float32), ["a", "b", "c"])
    assert out["zeroshot_top1"] == 0.0 and out["zeroshot_mean_per_class_recall"] == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_raise(bad):
    emb = np.eye(4, dtype=np.float32)
    broken = emb.copy()
    broken[1, 2] = bad
    for images, texts in ((broken, emb), (emb, broken)):
        with pytest.raises(ValueError, match=r"NaN/inf \(1 of 4 rows\): the model is broken"):
            retrieval_metrics(images, list("abcd"), texts)
        with pytest.raises(ValueError, match="NaN/inf"):
            zeroshot_accuracy(images, list("abcd"), texts, list("abcd"))
    with pytest.raises(ValueError, match="NaN/inf"):
        retrieval_metrics(np.full((3, 4), np.nan, np.float32), list("abc"), np.full((3, 4), np.nan, np.float32))

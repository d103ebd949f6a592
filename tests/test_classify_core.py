"""The cached-feature core of the classifiers: features cached per model + data, and the methods as
functions on arrays (probe, kNN, zero-shot, zs-probe, Tip-Adapter)."""

from __future__ import annotations

import numpy as np
import pytest

from visembed.classify import methods as M
from visembed.classify.features import FeatureSet, dataset_features


def _clusters(n_classes=5, per_class=12, dim=16, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim)).astype(np.float32)
    emb = x / np.linalg.norm(x, axis=1, keepdims=True)
    class_w = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return x.astype(np.float32), emb.astype(np.float32), y, class_w.astype(np.float32)


def test_probe_learns_clusters_and_chooses_C_on_held_back_shots():
    x, emb, y, _ = _clusters()
    xt, embt, yt, _ = _clusters(seed=0, per_class=30)
    head = M.fit_probe(x, y, 5, features="pooled", seed=0)
    acc = (head.logits({"embedding": embt, "pooled": xt}).argmax(1) == yt).mean()
    assert acc > 0.9
    assert head.info["C"] in M.PROBE_BLOCK_CS and set(head.info["val_accuracy"]) == set(M.PROBE_BLOCK_CS)
    # the validation shots come from the shots only, at most 4 a class, never all of a class
    fit, val = M.split_shots(y, 4, seed=0)
    assert set(fit) | set(val) == set(range(len(y))) and not set(fit) & set(val)
    assert all((y[val] == c).sum() == 4 for c in range(5))


def _narrow_signal_wide_noise(seed, per_class, n_classes=6):
    """8 informative columns ("embedding") beside 400 columns of loud noise ("pooled")."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(n_classes, 8)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    feats = {"embedding": (centres[y] + 0.5 * rng.normal(size=(len(y), 8))).astype(np.float32),
             "pooled": (3 * rng.normal(size=(len(y), 400))).astype(np.float32)}
    return feats, y


def test_probe_default_normalises_each_feature_block_so_a_wide_block_cannot_drown_a_narrow_one():
    shots, y = _narrow_signal_wide_noise(0, per_class=2)
    test, yt = _narrow_signal_wide_noise(1, per_class=50)
    x = np.concatenate([shots["embedding"], shots["pooled"]], axis=1)
    widths = M.block_widths(shots, "both")
    assert widths == [8, 400]
    default = M.fit_probe(x, y, 6, features="both", widths=widths)
    standardised = M.fit_probe(x, y, 6, features="both", widths=widths, normalize="standardize")
    assert default.block_norm and not standardised.block_norm
    acc = {name: (h.logits(test).argmax(1) == yt).mean() for name, h in (("blocks", default), ("std", standardised))}
    assert acc["blocks"] > 0.85 and acc["std"] < 0.5, acc
    with pytest.raises(ValueError, match="add up"):
        M.fit_probe(x, y, 6, features="both", widths=[8, 8])


def test_probe_on_one_shot_and_missing_classes():
    x, emb, y, _ = _clusters(per_class=1)
    keep = y != 4  # class 4 has no shot: the head still has its row and never predicts it
    head = M.fit_probe(x[keep], y[keep], 5, features="pooled")
    pred = head.logits({"embedding": emb, "pooled": x}).argmax(1)
    assert head.weight.shape == (5, x.shape[1]) and 4 not in pred
    assert (pred[keep] == y[keep]).all()


def test_probabilities_are_a_distribution():
    x, emb, y, w = _clusters()
    p = M.tip_head(emb, y, w).probabilities({"embedding": emb, "pooled": x})
    assert p.shape == (len(y), 5) and np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()


def test_zeroshot_head_is_nearest_class_vector():
    x, emb, y, w = _clusters()
    head = M.zeroshot_head(w)
    assert (head.logits({"embedding": emb}).argmax(1) == (emb @ w.T).argmax(1)).all()


def test_knn_votes_of_nearest_keys():
    keys = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[1, 0.05], [0.02, 1]], np.float32)
    assert list(M.knn_predict(keys, labels, queries, 2, k=2)) == [0, 1]
    scores = M.knn_scores(keys, labels, queries, 3, k=3)
    assert scores.shape == (2, 3) and (scores[:, 2] == 0).all()


def test_zs_probe_stays_at_zeroshot_when_pulled_hard_and_learns_when_free():
    x, emb, y, w = _clusters(seed=1)
    wrong = np.roll(w, 1, axis=0)  # a zero-shot head that is always wrong
    feats = {"embedding": emb, "pooled": x}
    pulled = M.fit_zs_probe(x, emb, y, wrong, features="pooled", strength=1e6)
    assert (pulled.logits(feats).argmax(1) == M.zeroshot_head(wrong).logits(feats).argmax(1)).all()
    free = M.fit_zs_probe(x, emb, y, wrong, features="pooled", strength=1e-3)
    assert (free.logits(feats).argmax(1) == y).mean() > 0.9


def test_tip_adapter_cache_corrects_zeroshot_and_tip_f_trains_keys():
    x, emb, y, w = _clusters(seed=2)
    wrong = np.roll(w, 1, axis=0)
    feats = {"embedding": emb}
    tip = M.tip_head(emb, y, wrong, alpha=50.0)
    assert (tip.logits(feats).argmax(1) == y).mean() > 0.9
    no_cache = M.tip_head(emb, y, wrong, alpha=0.0)
    assert (no_cache.logits(feats).argmax(1) == y).mean() < 0.2
    tuned = M.fit_tip_f(emb, y, wrong, alpha=1.0, epochs=5, lr=1e-2)
    assert not np.allclose(tuned.keys, emb, atol=1e-4)
    assert np.allclose(np.linalg.norm(tuned.keys, axis=1), 1, atol=1e-5)


def test_pseudo_shots_are_the_unlabelled_images_zero_shot_is_surest_of():
    class_w = np.eye(3, 4, dtype=np.float32)  # classes along the first three axes
    emb = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.99, 0, 0, 0.1], [0.2, 0.8, 0, 0], [0.45, 0.55, 0, 0],
                    [0.7, 0.3, 0, 0]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx, labels = M.pseudo_shots(emb, class_w, per_class=2)
    # class 0: images 0, 1, 2, 5 are nearest to it, the two most similar kept; class 1: images 3, 4;
    # class 2: no image is nearest to it, so the one most similar to it (all 0: the first) stands in
    assert list(zip(idx.tolist(), labels.tolist())) == [(2, 0), (0, 0), (3, 1), (4, 1), (0, 2)]


def _weak_names_rich_images(seed, per_class, n_classes=6, noise=0.3):
    """Images whose `pooled` features cluster by class, and whose embedding only leans towards the
    class text vector: zero-shot is often wrong, but right where it is surest."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(n_classes, 32)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    pooled = centres[y] + noise * rng.normal(size=(len(y), 32)).astype(np.float32)
    lean = np.eye(n_classes, 16, dtype=np.float32)[y] * rng.uniform(0, 1, (len(y), 1))
    emb = lean + 0.35 * rng.normal(size=(len(y), 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    return FeatureSet([str(i) for i in range(len(y))], [f"c{c}" for c in y], emb, pooled.astype(np.float32),
                      [f"c{c}" for c in range(n_classes)]), y


def test_zs_pseudo_reads_no_label_and_corrects_a_weak_zero_shot_from_the_images():
    from visembed.classify.fit import fit_head

    pool, _ = _weak_names_rich_images(0, per_class=40)
    test, yt = _weak_names_rich_images(1, per_class=40)
    class_w = np.eye(6, 16, dtype=np.float32)
    scale = 10.0  # the dual encoder's logit scale
    zs = fit_head("zeroshot", None, yt[:0], 6, class_weights=class_w, zs_scale=scale)
    head = fit_head("zs-pseudo", None, yt[:0], 6, class_weights=class_w, features="pooled", pool=pool, zs_scale=scale)
    acc = {name: float((h.logits(test.arrays()).argmax(1) == yt).mean()) for name, h in (("zs", zs), ("pseudo", head))}
    assert acc["zs"] < 0.7 and acc["pseudo"] > acc["zs"] + 0.3, acc
    assert head.info["pseudo_shots"] == 6 * M.PSEUDO_PER_CLASS and head.info["pool_images"] == len(pool)
    assert head.zs_scale == pytest.approx(M.PSEUDO_ZS_WEIGHT * scale)  # zero-shot kept beside the probe
    # the pool's labels are never read: shuffled labels give the same head
    shuffled = FeatureSet(pool.ids, list(np.random.default_rng(3).permutation(pool.labels)), pool.embedding,
                          pool.pooled, pool.classes)
    again = fit_head("zs-pseudo", None, yt[:0], 6, class_weights=class_w, features="pooled", pool=shuffled,
                     zs_scale=scale)
    assert np.array_equal(again.weight, head.weight) and np.array_equal(again.bias, head.bias)
    with pytest.raises(ValueError, match="needs unlabelled images"):
        fit_head("zs-pseudo", None, yt[:0], 6, class_weights=class_w, features="pooled")


def test_semi_adds_the_unlabelled_images_to_one_shot_as_one_linear_head():
    """semi: the shots' probe + a quarter of the zs-pseudo head of the pool, merged into one linear
    part (both probes centred on the shots' mean); the pool's labels are never read, and on data where
    one shot is too few but zero-shot is right where it is surest, it beats the 1-shot probe."""
    from visembed.classify.fit import fit_head
    from visembed.classify.shots import draw_shots

    pool, y_pool = _weak_names_rich_images(0, per_class=40, noise=1.2)
    test, yt = _weak_names_rich_images(1, per_class=40, noise=1.2)
    class_w, scale, feats = np.eye(6, 16, dtype=np.float32), 10.0, test.arrays()
    acc = {"probe": [], "semi": []}
    for seed in range(3):
        idx, _ = draw_shots(y_pool, 6, 1, seed)
        shots = pool.subset(idx)
        probe = fit_head("probe", shots, y_pool[idx], 6, features="pooled", seed=seed)
        semi = fit_head("semi", shots, y_pool[idx], 6, class_weights=class_w, features="pooled", seed=seed, pool=pool,
                        zs_scale=scale)
        for name, head in (("probe", probe), ("semi", semi)):
            acc[name].append(float((head.logits(feats).argmax(1) == yt).mean()))
    assert np.mean(acc["semi"]) > np.mean(acc["probe"]) + 0.1, acc
    # one head: the sum of the shots' probe, the pool's pseudo-shot probe on the same centring, and zero-shot
    w = M.SEMI_PSEUDO_WEIGHT
    pi, pl = M.pseudo_shots(pool.embedding, class_w)
    pseudo = M.fit_probe(pool.pooled[pi], pl, 6, features="pooled", seed=seed, center=probe.mean)
    expected = probe.logits(feats) + w * pseudo.logits(feats) + w * M.PSEUDO_ZS_WEIGHT * scale * test.embedding @ class_w.T
    np.testing.assert_allclose(semi.logits(feats), expected, rtol=1e-4, atol=1e-4)
    assert semi.info["pseudo_shots"] == len(pi) and semi.info["pool_images"] == len(pool)
    shuffled = FeatureSet(pool.ids, list(np.random.default_rng(3).permutation(pool.labels)), pool.embedding,
                          pool.pooled, pool.classes)
    again = fit_head("semi", shots, y_pool[idx], 6, class_weights=class_w, features="pooled", seed=seed, pool=shuffled,
                     zs_scale=scale)
    assert np.array_equal(again.weight, semi.weight) and np.array_equal(again.bias, semi.bias)
    with pytest.raises(ValueError, match="unlabelled images beside the shots"):
        fit_head("semi", shots, y_pool[idx], 6, class_weights=class_w, features="pooled")


def test_dataset_features_cached_per_model_and_data(tiny_model_dir, tmp_path, monkeypatch):
    import visembed

    monkeypatch.setenv("VISEMBED_CACHE", str(tmp_path / "cache"))
    model = visembed.load(tiny_model_dir, device="cpu")
    spec = "builtin:shapes?n=24&size=32"
    fs = dataset_features(model, spec, "train", model_dir=tiny_model_dir, progress=False)
    assert isinstance(fs, FeatureSet) and len(fs) == len(fs.labels) > 0
    assert fs.embedding.shape[1] == model.embed_dim and np.allclose(np.linalg.norm(fs.embedding, axis=1), 1, atol=1e-4)
    assert np.allclose(fs.embedding, model.encode_image([s.image for s in _dataset(spec)][: len(fs)]), atol=1e-4)
    files = list((tmp_path / "cache" / "classify-features").glob("*.npz"))
    assert len(files) == 1
    again = dataset_features(model, spec, "train", model_dir=tiny_model_dir, progress=False)
    assert again.ids == fs.ids and np.array_equal(again.pooled, fs.pooled)
    middle, late = model.module.vision.stage_widths  # the tower's middle and late stages, cached with the rest
    assert fs.middle.shape == (len(fs), middle) and fs.late.shape == (len(fs), late) and middle > 0
    assert np.array_equal(again.middle, fs.middle) and np.array_equal(again.late, fs.late)
    assert not np.allclose(fs.middle[:, :8], fs.middle[:1, :8])  # they differ from image to image
    dataset_features(model, "builtin:shapes?n=12&size=32", "train", model_dir=tiny_model_dir, progress=False)
    assert len(list((tmp_path / "cache" / "classify-features").glob("*.npz"))) == 2
    with pytest.raises(ValueError):
        fs.select("cells")
    assert fs.select("both").shape[1] == fs.embedding.shape[1] + fs.pooled.shape[1]


def _dataset(spec):
    from visembed.data import open_dataset

    return open_dataset(spec, "train")


def test_block_normalised_head_is_the_same_in_torch_and_survives_the_folder(tmp_path):
    import torch

    from visembed.classify.folder import read_head, save_classifier
    from visembed.classify.torch_head import HeadModule

    shots, y = _narrow_signal_wide_noise(0, per_class=3)
    x = np.concatenate([shots["embedding"], shots["pooled"]], axis=1)
    head = M.fit_probe(x, y, 6, features="both", widths=M.block_widths(shots, "both"))
    test, _ = _narrow_signal_wide_noise(2, per_class=4)
    expected = head.logits(test)
    got = HeadModule(head)({k: torch.from_numpy(v) for k, v in test.items()}).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    save_classifier(tmp_path, head, [f"c{i}" for i in range(6)], "model", method="probe", fit_info={}, card="")
    import json

    config = json.loads((tmp_path / "classifier.json").read_text())
    again = read_head(tmp_path, config)
    assert again.block_norm and np.allclose(again.logits(test), expected, atol=1e-5)
    del config["head"]["block_norm"]  # a folder written before block normalisation reads as standardised
    assert not read_head(tmp_path, config).block_norm
    from safetensors.numpy import load_file, save_file

    from visembed.classify.folder import ClassifierFolderError

    arrays = load_file(str(tmp_path / "head.safetensors"))
    del arrays["mean"]
    save_file(arrays, str(tmp_path / "head.safetensors"))
    config["head"]["block_norm"] = True
    with pytest.raises(ClassifierFolderError, match="block_norm without mean"):
        read_head(tmp_path, config)


def test_a_probe_on_stage_features_a_tower_does_not_have_is_one_clear_error():
    """A registered tower without stages gives `middle` and `late` zero wide: the default features
    still fit, asking for those alone is a ValueError that says so (one line on the CLI)."""
    from visembed.classify.fit import fit_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    empty = np.zeros((12, 0), np.float32)
    fs = FeatureSet([str(i) for i in range(12)], [str(c) for c in y], rng.normal(size=(12, 8)).astype(np.float32),
                    rng.normal(size=(12, 16)).astype(np.float32), ["0", "1", "2"],
                    layout=rng.random((12, 192)).astype(np.float32), middle=empty, late=empty)
    head = fit_head("probe", fs, y, 3)  # the default: embedding+pooled+layout+middle+late
    assert head.logits(fs.arrays()).shape == (12, 3)
    with pytest.raises(ValueError, match="empty for this model's image tower"):
        fit_head("probe", fs, y, 3, features="middle+late")

import numpy as np

from visembed.data import open_dataset


def pixels(sample):
    return np.asarray(sample.image)


def test_shapes_are_deterministic_by_seed_and_index():
    a = open_dataset("builtin:shapes?n=50&seed=3&size=32")
    b = open_dataset("builtin:shapes?n=50&seed=3&size=32")
    other = open_dataset("builtin:shapes?n=50&seed=4&size=32")
    assert len(a) == 40 and a[0].image.size == (32, 32)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    assert [s.caption for s in a] != [s.caption for s in other]


def test_shapes_splits_are_disjoint_and_labelled():
    splits = {name: open_dataset("builtin:shapes?n=100", name) for name in ("train", "val", "test")}
    ids = {name: {s.id for s in ds} for name, ds in splits.items()}
    assert [len(v) for v in ids.values()] == [80, 10, 10]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    train = splits["train"]
    assert len(train.labels) == 18 and "red circle" in train.labels
    for sample in train:
        assert sample.label in train.labels
        assert sample.caption.split(" ", 2)[2].startswith(sample.label)  # "a small red circle ..."
    assert any(" left of " in s.caption for s in train)


def test_shapes_options_from_keywords_override_the_spec():
    ds = open_dataset("builtin:shapes?n=20&size=32", size=48)
    assert ds[0].image.size == (48, 48)

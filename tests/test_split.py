"""Iterative stratification of multi-label data: every label keeps its share in every split, seeded."""
import numpy as np

from pipeline.data.split import iterative


def test_every_label_keeps_its_share_of_positives_in_every_split():
    rng = np.random.default_rng(0)
    n, labels = 3000, 12
    rates = np.linspace(0.01, 0.4, labels)  # from rare (30 positives) to common
    y = rng.random((n, labels)) < rates
    y[:50] = False  # some images with no label at all
    shares = {"train": 0.7, "val": 0.1, "test": 0.2}
    split = iterative(y, shares, seed=3)
    for name, share in shares.items():
        mine = split == name
        assert abs(mine.mean() - share) < 0.01, name
        expected = share * y.sum(axis=0)
        assert np.all(np.abs(y[mine].sum(axis=0) - expected) <= np.maximum(1.5, 0.05 * expected)), name
    assert np.array_equal(split, iterative(y, shares, seed=3))  # seeded
    assert not np.array_equal(split, iterative(y, shares, seed=4))


def test_a_rare_label_reaches_every_split_where_random_splitting_often_misses():
    y = np.zeros((200, 3), bool)
    y[:6, 0] = True          # a label with 6 positives
    y[6:, 1] = True
    y[::3, 2] = True
    split = iterative(y, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert {split[i] for i in range(6)} == {"train", "val", "test"}


def test_assign_keeps_given_splits_and_carves_test_then_val():
    from pipeline.data.split import assign

    rng = np.random.default_rng(1)
    y = rng.random((1000, 5)) < 0.3
    split = assign(y, [None] * 1000, test_size=0.2, val_size=0.1, seed=0)
    assert abs((split == "test").mean() - 0.2) < 0.01 and abs((split == "val").mean() - 0.08) < 0.01
    given = ["test"] * 200 + [None] * 800
    split = assign(y, given, test_size=0.2, val_size=0.1, seed=0)
    assert (split[:200] == "test").all() and "test" not in set(split[200:])
    assert abs((split[200:] == "val").mean() - 0.1) < 0.01

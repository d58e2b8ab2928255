"""Splitting images with several labels each: iterative stratification (Sechidis, Tsoumakas and Vlahavas,
"On the Stratification of Multi-Label Data", ECML PKDD 2011).

A random split of multi-label data can leave a rare label with no positive in the test split. The
iterative algorithm hands out the images of the rarest label first, each to the split that most wants
that label (relative to its target share), ties broken by the split that most wants images at all,
then by a seeded coin; so every label keeps its share of positives in every split, within about one
image. Images with no label at all are dealt out last, by the splits' remaining wants. Pure numpy,
seeded: the same labels and seed give the same split.
"""
from __future__ import annotations

import numpy as np


def iterative(y: np.ndarray, shares: dict[str, float], seed: int) -> np.ndarray:
    """A split name per row of the multi-hot matrix ``y`` (N, L), the splits getting ``shares`` (which sum
    to 1) of the images and of each label's positives."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, bool)
    names = list(shares)
    frac = np.array([shares[s] for s in names], float)
    want_images = frac * len(y)
    want_labels = np.outer(frac, y.sum(axis=0)).astype(float)  # (splits, labels)
    target = np.maximum(want_labels, 1e-9)  # a want is relative to its target: dense labels fill small splits too
    out = np.full(len(y), -1)
    left = np.ones(len(y), bool)
    for _ in range(y.shape[1]):
        counts = y[left].sum(axis=0)
        if not counts.any():
            break
        label = int(np.flatnonzero(counts == counts[counts > 0].min())[0])  # the rarest label left
        for i in rng.permutation(np.flatnonzero(left & y[:, label])):
            s = _pick(want_labels[:, label] / target[:, label], want_images / np.maximum(frac * len(y), 1e-9), rng)
            out[i], left[i] = s, False
            want_labels[s] -= y[i]
            want_images[s] -= 1
    for i in rng.permutation(np.flatnonzero(left)):  # images without a label
        s = _pick(want_images, want_images, rng)
        out[i] = s
        want_images[s] -= 1
    return np.array(names, dtype=object)[out]


def _pick(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> int:
    """The split that most wants this (``first``), then most wants images (``second``), then at random."""
    best = np.flatnonzero(first == first.max())
    if len(best) > 1:
        best = best[second[best] == second[best].max()]
    return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])


def assign(y: np.ndarray, given: list[str | None], test_size: float, val_size: float, seed: int) -> np.ndarray:
    """A split name per item of multi-hot ``y``, as single-label data gets them: given splits are kept;
    without a given test split ``test_size`` of the training items is held out, then ``val_size`` of what
    is left, each by :func:`iterative`."""
    out = np.array([g or "train" for g in given], dtype=object)
    has = {g for g in given if g}
    train = np.flatnonzero(out == "train")
    for name, share in (("test", test_size), ("val", val_size)):
        if name in has or share <= 0 or len(train) < 2:
            continue
        got = iterative(y[train], {"train": 1.0 - share, name: share}, seed)
        out[train[got == name]] = name
        train = train[got == "train"]
    return out

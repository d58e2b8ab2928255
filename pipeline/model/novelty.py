"""Unfamiliar inputs: how unlike the training images an image is (``novelty``; higher = less familiar).

Three detectors, each fitted on the training data at the end of ``train``, combined:

- **typicality of simple image statistics**: brightness, contrast, quantiles, ink at three
  levels, edge and Laplacian energy, centre and spread of the content, histogram entropy
  (and colour for RGB). Mahalanobis distance to the training images' statistics: a
  two-sided test, so a smooth photo is as atypical of digits as noise is (the likelihood
  paradox of Nalisnick et al. 2019 fools density models of the pixels, not this).
- **nearest training image in the model's feature space**: cosine distance of the first
  dense layer's activations to those of a sample of training images (deep kNN,
  Sun et al. 2022), which catches inputs the classifier maps away from everything it saw.
- **training images or pen strokes**: a small classifier (one hidden layer) on the model's
  convolution features, fitted to tell the training images from synthetic pen strokes
  (:mod:`pipeline.data.strokes`; outlier exposure, Hendrycks et al. 2019); its logit. It catches
  glyph-like inputs, letters and symbols, that the classifier's own features map onto a class.

Each score becomes the surprise of its value among the validation images, ``-ln`` of the share
of them scoring at least as high (read off a quantile table, extrapolated past the largest
value), and ``novelty`` is the sum of the three: Fisher's way of combining tests, so two
detectors that each find an image a little unusual add up (the larger of the scores, used
before, let 1 in 4 letters through; README "Unfamiliar inputs"). The cut is set on the
validation split so that ``flag_rate`` (``[novelty] flag_rate``) of familiar images are flagged.
The fitted detector is a :class:`~pipeline.shared.novelty_spec.NoveltySpec`, stored as JSON and
``.npy`` (no pickle).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from pipeline.shared.novelty_spec import NoveltySpec, pack_head, unpack_head

SAFETY = 0.8         # the cut is set at flag_rate x SAFETY on validation: the test rate stays under flag_rate
REFERENCE = 5000     # training images kept for the nearest-neighbour detector
STATS_SAMPLE = 20000
MIN_VAL = 200        # with fewer validation images the cut also uses the training sample
DETECTORS = ("statistics", "features", "strokes")  # the last reads the strokes classifier
TAIL_LEVELS = 16     # points of each detector's quantile table
HEAD_HIDDEN = 64     # the strokes classifier's hidden units
HEAD_EPOCHS = 10
# Rows per matrix product of the strokes classifier. BLAS picks its kernel (and so its order of additions) by
# the shapes, so products of a fixed number of rows give an image the same arithmetic whatever batch it is in:
# a resumed `predict` writes the rows an uninterrupted one does, a served image gets the same answer alone or
# batched. (The nearest-neighbour search gets the same from its float64 re-check: see _nearest.)
BLOCK = 16
INK_LEVELS = np.array([0.1, 0.5, 0.9], np.float32)  # image_stats' shares of ink above these levels
ROWS = 1024        # images per nearest-neighbour product (bounded memory)
NEAR = 1e-4        # a reference row this close to an image's best float32 similarity is a candidate ...
CANDIDATES = 8     # ... of at most this many, scored again in float64


def _histogram8(flat: np.ndarray) -> np.ndarray:
    """Share of each row's values in 8 bins of width 1/8 over [0, 1) (values >= 1 in the last bin,
    negative ones in none). Binned once to codes (a non-negative value's truncation is its floor; 8:
    negative), then counted in one bincount: a fraction of the time of comparing the array against every
    edge, with the same result."""
    codes = np.minimum(flat * 8, 7).astype(np.intp)
    if flat.min(initial=0) < 0:
        codes[flat < 0] = 8
    n = len(flat)
    codes += 9 * np.arange(n)[:, None]
    counts = np.bincount(codes.ravel(), minlength=9 * n).reshape(n, 9)
    return counts[:, :8] / flat.shape[1]  # (bin 8: the negative values)


@functools.cache
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column coordinates of an h x w image, over its longer side (float32), and their squares."""
    yy, xx = (np.mgrid[0:h, 0:w] / max(h, w)).astype(np.float32)
    grid = yy, xx, yy ** 2, xx ** 2
    for a in grid:
        a.setflags(write=False)  # shared by every call
    return grid


def image_stats(x: np.ndarray) -> np.ndarray:
    """Per-image statistics of model inputs (N, H, W, C) in [0, 1]: (N, 16), or (N, 20) for colour."""
    x = np.asarray(x, np.float32)
    g = x[..., 0] if x.shape[3] == 1 else x.mean(axis=3)  # (the mean of one channel is that channel)
    n, h, w = g.shape
    flat = g.reshape(n, -1)
    q = np.sort(flat, axis=1)[:, [int(0.1 * (h * w - 1)), int(0.5 * (h * w - 1)), int(0.9 * (h * w - 1))]]
    gx, gy = np.abs(np.diff(g, axis=2)).mean(axis=(1, 2)), np.abs(np.diff(g, axis=1)).mean(axis=(1, 2))
    lap = np.abs(4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]).mean(axis=(1, 2))
    mass = g.sum(axis=(1, 2)) + 1e-6
    yy, xx, yy2, xx2 = _grid(h, w)
    cy, cx = (g * yy).sum(axis=(1, 2)) / mass, (g * xx).sum(axis=(1, 2)) / mass
    sy = np.sqrt(np.maximum((g * yy2).sum(axis=(1, 2)) / mass - cy ** 2, 0))
    sx = np.sqrt(np.maximum((g * xx2).sum(axis=(1, 2)) / mass - cx ** 2, 0))
    hist = _histogram8(flat)
    entropy = -(hist * np.log(hist + 1e-6)).sum(axis=1)
    ink = np.count_nonzero(flat[:, None] > INK_LEVELS[:, None], axis=2) / (h * w)  # (N, 3): the share above each
    feats = [flat.mean(1), flat.std(1), *q.T, gx, gy, lap, cx, cy, sx, sy, *ink.T, entropy]
    if x.shape[3] == 3:
        feats += [x[..., c].mean(axis=(1, 2)) for c in range(3)] + [(x.max(axis=3) - x.min(axis=3)).mean(axis=(1, 2))]
    return np.stack(feats, axis=1)


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32).reshape(len(f), -1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-6)


def _mahalanobis(s: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = s - mean
    return np.einsum("nd,de,ne->n", d, precision, d)


def _by_blocks(a: np.ndarray, f: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """``f(offset, rows)`` over ``a`` in blocks of exactly :data:`BLOCK` rows (the last one zero-padded),
    concatenated and cut back to ``len(a)``. The rows are float64: a BLAS matrix product may round a row
    differently by its place in the block (seen with OpenBLAS on AVX-512: 1e-7 in float32, which the
    novelty's tail table can turn into 1e-2), and in float64 that rounding is far below what the float32
    results keep, so an image's score does not depend on what else is in its batch (a resumed predict
    writes the same rows)."""
    n = len(a)
    a = np.asarray(a, np.float64)
    pad = BLOCK if n == 0 else (-n) % BLOCK
    padded = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
    return np.concatenate([f(i, padded[i:i + BLOCK]) for i in range(0, len(padded), BLOCK)])[:n]


def _nearest(features: np.ndarray, spec: NoveltySpec, skip_self: bool = False) -> np.ndarray:
    """Cosine distance to the nearest reference feature vector (``skip_self``: the features are the
    reference's own rows, and each one's nearest other row counts: leave-one-out).

    The search is one float32 product per :data:`ROWS` images, whose rounding may depend on a row's
    place in the batch; the answer is not: each image's candidates (the rows within :data:`NEAR` of its
    best, at most :data:`CANDIDATES`) are scored again in float64, one contiguous row at a time, and the
    best of those is the distance. A served image gets the same answer alone or batched, a resumed
    `predict` writes the rows an uninterrupted one does, and one image costs a vector product, not a block.
    """
    q = _unit(features)
    out = np.empty(len(q), np.float64)
    for i in range(0, len(q), ROWS):
        sim = q[i:i + ROWS] @ spec.reference_t
        if skip_self:
            own = np.arange(i, i + len(sim))
            inside = own < sim.shape[1]
            sim[np.flatnonzero(inside), own[inside]] = -np.inf
        out[i:i + len(sim)] = 1.0 - _exact_best(q[i:i + len(sim)], spec.reference, sim)
    return out


def _exact_best(q: np.ndarray, reference: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Each row's largest similarity in float64 among its candidates in ``sim`` (float32 products)."""
    rows, top1 = np.arange(len(sim)), sim.argmax(axis=1)
    near = sim >= sim[rows, top1][:, None] - NEAR
    counts = np.count_nonzero(near, axis=1)
    if len(q) and bool(np.all(counts == 1)):  # the usual case: the best is the only candidate (no search)
        return _float64_sims(q, reference, rows, top1)
    crowded = np.flatnonzero(counts > CANDIDATES)
    if len(crowded):  # ties (e.g. a blank image's zero features): the CANDIDATES best, by index among equals
        top = np.argsort(-sim[crowded], axis=1, kind="stable")[:, :CANDIDATES]
        near[crowded] = False
        near[crowded[:, None], top] = True
    r, c = np.nonzero(near)
    exact = _float64_sims(q, reference, r, c)
    out = np.full(len(q), -np.inf)
    np.maximum.at(out, r, exact)
    return out


def _float64_sims(q: np.ndarray, reference: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The similarity of query rows ``r`` to reference rows ``c`` in float64: elementwise, then each
    contiguous row summed on its own (the same additions for a row wherever it is)."""
    return (q[r].astype(np.float64) * reference[c].astype(np.float64)).sum(axis=1)


def raw_scores(spec: NoveltySpec, stats: np.ndarray, features: np.ndarray, skip_self: bool = False,
               nearest: np.ndarray | None = None, strokes: np.ndarray | None = None) -> np.ndarray:
    """(N, detectors): each detector's raw score (higher = less familiar), from the images' statistics,
    features and (with a strokes detector) its logits ``strokes``; ``nearest``: the features' distance to
    the reference, when the caller has it already."""
    typical = _mahalanobis(stats, spec.stats_mean, spec.stats_precision)
    if nearest is None:
        nearest = _nearest(features, spec, skip_self)
    cols = [typical, nearest]
    if spec.uses_strokes:
        if strokes is None:
            raise ValueError("this novelty detector needs the strokes classifier's logits")
        cols.append(np.asarray(strokes, np.float64))
    return np.stack(cols, axis=1)


def _tail_table(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levels t (surprise, -ln of the upper-tail share) and each column's value at them: (L,), (L, D)."""
    levels = np.linspace(0.0, max(np.log(len(raw) / 5), 1.0), TAIL_LEVELS)
    q = np.quantile(raw, 1.0 - np.exp(-levels), axis=0)
    # strictly increasing, so that interpolation is well defined where many images tie
    tiny = 1e-9 * (np.abs(q).max(axis=0) + 1.0)
    for i in range(1, len(q)):
        q[i] = np.maximum(q[i], q[i - 1] + tiny)
    return levels, q


def _surprise(raw: np.ndarray, levels: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Each raw score's surprise among the validation images: interpolated in the quantile table and,
    past its largest value, extended along the slope of the table's last quarter (an exponential tail)."""
    out = np.empty(raw.shape, np.float64)
    k = max(1, len(levels) // 4)
    for j in range(raw.shape[1]):
        col, qj = raw[:, j], q[:, j]
        slope = (levels[-1] - levels[-1 - k]) / max(qj[-1] - qj[-1 - k], 1e-6 * (abs(qj[-1]) + 1.0))
        out[:, j] = np.where(col > qj[-1], levels[-1] + (col - qj[-1]) * slope, np.interp(col, qj, levels))
    return out


def combine(spec: NoveltySpec, raw: np.ndarray) -> np.ndarray:
    """``novelty``: the sum of the detectors' surprises (a spec from before them: the larger of the
    detectors' scores, each 0 at its validation median and 1 at its 98th percentile)."""
    if spec.tail_levels is None:
        mid, high = np.asarray(spec.legacy["val_median"]), np.asarray(spec.legacy["val_p98"])
        return ((raw - mid) / np.maximum(high - mid, 1e-9)).max(axis=1)
    return _surprise(raw, spec.tail_levels, np.asarray(spec.tail_quantiles).T).sum(axis=1)


def training_sample(n: int, seed: int = 0) -> np.ndarray:
    """The training images (indices, sorted) the detectors are fitted on."""
    return np.sort(np.random.default_rng(seed).choice(n, min(STATS_SAMPLE, n), replace=False))


def strokes_logits(head: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The strokes classifier's logit (higher: more like a pen stroke than a training image) of
    features ``x`` (N, d); ``head``: the packed layers."""
    w1, b1, w2, b2 = unpack_head(head)
    return _by_blocks(np.asarray(x, np.float32).reshape(len(x), -1), lambda _, rows: np.maximum(rows @ w1 + b1, 0) @ w2 + b2)


def fit_head(familiar: np.ndarray, strokes: np.ndarray, seed: int = 0, epochs: int = HEAD_EPOCHS,
             hidden: int = HEAD_HIDDEN) -> np.ndarray:
    """Fit the strokes classifier (inputs standardized, one ReLU layer, logistic loss, the two kinds
    weighted equally, Adam) on features of training images and of strokes; the packed layers.

    Plain numpy: a few seconds, deterministic given ``seed``, and no global random state touched."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([familiar, strokes]).astype(np.float32).reshape(len(familiar) + len(strokes), -1)
    y = np.r_[np.zeros(len(familiar)), np.ones(len(strokes))].astype(np.float32)
    weight = np.where(y == 1, len(x) / (2 * max(len(strokes), 1)), len(x) / (2 * max(len(familiar), 1)))
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-3
    x -= mean  # in place: x is this function's own copy, and 20,000 + 20,000 rows of 600 are 96 MB
    x /= std
    d = x.shape[1]
    limit = np.sqrt(6 / (d + hidden))  # Glorot uniform, as Keras' Dense
    params = [rng.uniform(-limit, limit, (d, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
              rng.uniform(-np.sqrt(6 / (hidden + 1)), np.sqrt(6 / (hidden + 1)), hidden).astype(np.float32),
              np.zeros(1, np.float32)]
    _adam(params, x, y, weight.astype(np.float32), rng, epochs)
    w1, b1, w2, b2 = params
    # fold the standardization into the first layer: the packed head reads raw features
    return pack_head(w1 / std[:, None], b1 - (mean / std) @ w1, w2, float(b2[0]))


def _adam(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, weight: np.ndarray, rng: np.random.Generator,
          epochs: int, batch: int = 256, lr: float = 1e-3) -> None:
    """Minibatch Adam on the weighted logistic loss of the one-hidden-layer network, in place."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            rows = order[i:i + batch]
            xb, yb, wb = x[rows], y[rows], weight[rows]
            pre = xb @ params[0] + params[1]
            h = np.maximum(pre, 0)
            z = h @ params[2] + params[3][0]
            g = wb * (1 / (1 + np.exp(-np.clip(z, -30, 30))) - yb) / len(rows)  # d loss / d z
            gh = np.outer(g, params[2]) * (pre > 0)
            grads = [xb.T @ gh, gh.sum(axis=0), h.T @ g, np.array([g.sum()], np.float32)]
            step += 1
            for p, gr, mi, vi in zip(params, grads, m, v):
                mi *= 0.9
                mi += 0.1 * gr
                vi *= 0.999
                vi += 0.001 * gr * gr
                p -= (lr * np.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)) * mi / (np.sqrt(vi) + 1e-7)


def _cross_fitted(strokes: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The strokes logits of the training sample's ``rows``, each from a classifier fitted without it
    (two folds): the classifier fitted on all of them scores them lower than images it never saw."""
    familiar, _, drawn = strokes
    out = np.empty(len(rows))
    fold = np.arange(len(rows)) % 2
    for k in (0, 1):
        held = rows[fold == k]
        head = fit_head(np.delete(familiar, held, axis=0), drawn, seed=k + 1)
        out[fold == k] = strokes_logits(head, familiar[held])
    return out


def _spec(stats: np.ndarray, reference: np.ndarray, head: np.ndarray | None, flag_rate: float) -> NoveltySpec:
    """The detectors fitted on the training sample, before their tables and cut (set on validation)."""
    from sklearn.covariance import LedoitWolf

    # Ledoit-Wolf shrinkage: a covariance that generalizes from a few dozen images (and is never singular).
    cov = LedoitWolf().fit(stats).covariance_ if len(stats) > 2 else np.eye(stats.shape[1])
    cov = cov + 1e-9 * np.eye(len(cov))
    return NoveltySpec(DETECTORS if head is not None else DETECTORS[:2], float("inf"), flag_rate,
                       stats.mean(axis=0), np.linalg.inv(cov), reference, head=head,
                       facts={"reference_images": int(len(reference))})


def fit(stats: np.ndarray, f_sample: np.ndarray, stats_val: np.ndarray, f_val: np.ndarray, flag_rate: float,
        strokes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> NoveltySpec:
    """Fit the detectors on a sample of training images (their :func:`image_stats` and the model's
    features of them) and set the cut on the validation split (its statistics and features) so that
    ``flag_rate`` of familiar images are flagged.

    ``strokes``: the strokes classifier's inputs, (convolution features of the training sample, of the
    validation split, of the strokes); without them, two detectors.
    """
    step = max(1, len(f_sample) // REFERENCE)
    rows = np.arange(0, len(f_sample), step)[:REFERENCE]
    head = fit_head(strokes[0], strokes[2]) if strokes is not None else None
    spec = _spec(stats, _unit(f_sample[rows]), head, flag_rate)
    raw_val = raw_scores(spec, stats_val, f_val, strokes=strokes_logits(head, strokes[1]) if head is not None else None)
    # With a small validation split, the tables and the cut also come from the training sample, its
    # reference rows scored as if unseen (leave-one-out, cross-fitted): a few dozen validation images
    # alone give unstable quantiles.
    pooled = len(raw_val) < MIN_VAL
    both = raw_val
    if pooled:
        raw_ref = raw_scores(spec, stats[rows], f_sample[rows], skip_self=True,
                             strokes=_cross_fitted(strokes, rows) if head is not None else None)
        both = np.concatenate([raw_val, raw_ref])
    levels, q = _tail_table(both)
    spec = dataclasses.replace(spec, tail_levels=levels, tail_quantiles=q.T)
    val = combine(spec, raw_val)
    cut = float(np.quantile(combine(spec, both), 1.0 - flag_rate * SAFETY)) if len(both) else float("inf")
    if pooled and len(val):
        # training images are more familiar to the model than new ones: the rule holds on val itself too
        cut = max(cut, float(np.quantile(val, 1.0 - flag_rate, method="higher")))
    facts = {**spec.facts, "val_flagged": float((val > cut).mean()) if len(val) else 0.0, "val_images": int(len(val)),
             "cut_set_on": "validation split and training sample" if pooled else "validation split",
             **({"strokes_images": int(len(strokes[2]))} if head is not None else {})}
    return dataclasses.replace(spec, threshold=cut, facts=facts)


def score(spec: NoveltySpec, x: np.ndarray, features: np.ndarray, nearest: np.ndarray | None = None,
          strokes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(novelty, familiar) of model inputs ``x`` with the model's ``features`` of them, the strokes
    classifier's logits of them (with a strokes detector) and, if the caller computed it, their
    ``nearest`` distance to the reference."""
    novelty = combine(spec, raw_scores(spec, image_stats(x), features, nearest=nearest, strokes=strokes))
    return novelty.astype(np.float32), novelty <= spec.threshold

"""Unfamiliar inputs: how unlike the training images an image is (``novelty``; higher = less familiar).

Two detectors, each fitted on the training data at the end of ``train``, combined:

- **typicality of simple image statistics**: brightness, contrast, quantiles, ink at three
  levels, edge and Laplacian energy, centre and spread of the content, histogram entropy
  (and colour for RGB). Mahalanobis distance to the training images' statistics: a
  two-sided test, so a smooth photo is as atypical of digits as noise is (the likelihood
  paradox of Nalisnick et al. 2019 fools density models of the pixels, not this).
- **nearest training image in the model's feature space**: cosine distance of the first
  dense layer's activations to those of a sample of training images (deep kNN,
  Sun et al. 2022), which catches inputs the classifier maps away from everything it saw.

Each score is scaled by its own spread on the validation split (0 at the median, 1 at the
98th percentile); ``novelty`` is the larger of the two, and the cut is set on the
validation split so that :data:`FLAG_RATE` of familiar images are flagged. Measured on
MNIST against max-softmax, energy, Mahalanobis on the features and outlier exposure
(README "Unfamiliar inputs"). Everything is stored as JSON and ``.npy`` (no pickle).
"""
from __future__ import annotations

from typing import Any

import numpy as np

FLAG_RATE = 0.02     # share of familiar (validation) images flagged
SAFETY = 0.8         # the cut is set at FLAG_RATE x SAFETY on validation: the test rate stays under FLAG_RATE
REFERENCE = 5000     # training images kept for the nearest-neighbour detector
STATS_SAMPLE = 20000
MIN_VAL = 200        # with fewer validation images the cut also uses the training sample
DETECTORS = ("statistics", "features")


def _histogram8(flat: np.ndarray) -> np.ndarray:
    """Share of each row's values in 8 bins of width 1/8 over [0, 1) (values >= 1 in the last bin,
    negative ones in none). Binned once to uint8 codes, then counted: half the time of comparing the
    float array against every edge, with the same result."""
    codes = np.where(flat < 0, 255, np.minimum(np.floor(flat * 8), 7)).astype(np.uint8)
    return np.stack([np.count_nonzero(codes == b, axis=1) for b in range(8)], axis=1) / flat.shape[1]


def image_stats(x: np.ndarray) -> np.ndarray:
    """Per-image statistics of model inputs (N, H, W, C) in [0, 1]: (N, 17) or (N, 21) for colour."""
    x = np.asarray(x, np.float32)
    g = x.mean(axis=3)
    n, h, w = g.shape
    flat = g.reshape(n, -1)
    q = np.sort(flat, axis=1)[:, [int(0.1 * (h * w - 1)), int(0.5 * (h * w - 1)), int(0.9 * (h * w - 1))]]
    gx, gy = np.abs(np.diff(g, axis=2)).mean(axis=(1, 2)), np.abs(np.diff(g, axis=1)).mean(axis=(1, 2))
    lap = np.abs(4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]).mean(axis=(1, 2))
    mass = g.sum(axis=(1, 2)) + 1e-6
    yy, xx = (np.mgrid[0:h, 0:w] / max(h, w)).astype(np.float32)
    cy, cx = (g * yy).sum(axis=(1, 2)) / mass, (g * xx).sum(axis=(1, 2)) / mass
    sy = np.sqrt(np.maximum((g * yy ** 2).sum(axis=(1, 2)) / mass - cy ** 2, 0))
    sx = np.sqrt(np.maximum((g * xx ** 2).sum(axis=(1, 2)) / mass - cx ** 2, 0))
    hist = _histogram8(flat)
    entropy = -(hist * np.log(hist + 1e-6)).sum(axis=1)
    feats = [flat.mean(1), flat.std(1), *q.T, gx, gy, lap, cx, cy, sx, sy,
             *((flat > t).mean(axis=1) for t in (0.1, 0.5, 0.9)), entropy]
    if x.shape[3] == 3:
        feats += [x[..., c].mean(axis=(1, 2)) for c in range(3)] + [(x.max(axis=3) - x.min(axis=3)).mean(axis=(1, 2))]
    return np.stack(feats, axis=1)


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32).reshape(len(f), -1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-6)


def _mahalanobis(s: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = s - mean
    return np.einsum("nd,de,ne->n", d, precision, d)


def _nearest(features: np.ndarray, reference: np.ndarray, skip_self: bool = False) -> np.ndarray:
    """Cosine distance to the nearest reference feature vector (``skip_self``: the features are the
    reference's own rows, and each one's nearest other row counts: leave-one-out)."""
    q = _unit(features)
    out = []
    for i in range(0, len(q), 1024):
        sim = q[i:i + 1024] @ reference.T
        if skip_self:
            sim[np.arange(len(sim)), np.arange(i, i + len(sim))] = -np.inf
        out.append(1.0 - sim.max(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def raw_scores(spec: dict[str, Any], reference: np.ndarray, stats: np.ndarray, features: np.ndarray,
               skip_self: bool = False, nearest: np.ndarray | None = None) -> np.ndarray:
    """(N, 2): each detector's raw score (higher = less familiar), from the images' statistics and features
    (``nearest``: the features' distance to the reference, when the caller has it already)."""
    typical = _mahalanobis(stats, np.asarray(spec["stats_mean"]), np.asarray(spec["stats_precision"]))
    if nearest is None:
        nearest = _nearest(features, reference, skip_self)
    return np.stack([typical, nearest], axis=1)


def combine(spec: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    """``novelty``: the larger of the detectors' scores, each 0 at its validation median and 1 at its 98th percentile."""
    mid, high = np.asarray(spec["val_median"]), np.asarray(spec["val_p98"])
    return ((raw - mid) / np.maximum(high - mid, 1e-9)).max(axis=1)


def training_sample(n: int, seed: int = 0) -> np.ndarray:
    """The training images (indices, sorted) the detectors are fitted on."""
    return np.sort(np.random.default_rng(seed).choice(n, min(STATS_SAMPLE, n), replace=False))


def fit(stats: np.ndarray, f_sample: np.ndarray, stats_val: np.ndarray, f_val: np.ndarray,
        flag_rate: float = FLAG_RATE) -> tuple[dict[str, Any], np.ndarray]:
    """Fit both detectors on a sample of training images (their :func:`image_stats` and the model's
    features of them) and set the cut on the validation split (its statistics and features).

    Returns the spec (JSON-ready) and the nearest-neighbour reference (float32, unit rows).
    """
    from sklearn.covariance import LedoitWolf

    # Ledoit-Wolf shrinkage: a covariance that generalizes from a few dozen images (and is never singular).
    cov = LedoitWolf().fit(stats).covariance_ if len(stats) > 2 else np.eye(stats.shape[1])
    cov = cov + 1e-9 * np.eye(len(cov))
    step = max(1, len(f_sample) // REFERENCE)
    rows = np.arange(0, len(f_sample), step)[:REFERENCE]
    reference = _unit(f_sample[rows])
    spec: dict[str, Any] = {"detectors": list(DETECTORS), "stats_mean": stats.mean(axis=0).tolist(),
                            "stats_precision": np.linalg.inv(cov).tolist(), "flag_rate": flag_rate,
                            "reference_images": int(len(reference))}
    raw_val = raw_scores(spec, reference, stats_val, f_val)
    # The scale of each detector, and (with a small validation split) the cut, also come from the
    # training sample, its reference rows scored leave-one-out: a few dozen validation images
    # alone give an unstable 98th percentile.
    raw_ref = raw_scores(spec, reference, stats[rows], f_sample[rows], skip_self=True)
    both = np.concatenate([raw_val, raw_ref])
    spec["val_median"] = np.median(both, axis=0).tolist()
    spec["val_p98"] = np.quantile(both, 0.98, axis=0).tolist()
    cut_on = combine(spec, raw_val if len(raw_val) >= MIN_VAL else both)
    spec["threshold"] = float(np.quantile(cut_on, 1.0 - flag_rate * SAFETY)) if len(cut_on) else float("inf")
    val = combine(spec, raw_val)
    spec["val_flagged"] = float((val > spec["threshold"]).mean()) if len(val) else 0.0
    spec["val_images"] = int(len(val))
    spec["cut_set_on"] = "validation split" if len(raw_val) >= MIN_VAL else "validation split and training sample"
    return spec, reference


def score(spec: dict[str, Any], reference: np.ndarray, x: np.ndarray, features: np.ndarray,
          nearest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(novelty, familiar) of model inputs ``x`` with the model's ``features`` of them (and, if the
    caller computed it, their ``nearest`` distance to the reference)."""
    novelty = combine(spec, raw_scores(spec, reference, image_stats(x), features, nearest=nearest))
    return novelty.astype(np.float32), novelty <= spec["threshold"]

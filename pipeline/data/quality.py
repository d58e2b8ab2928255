"""Image quality: per-image statistics, the issues they reveal, and the shortcuts they offer.

The decoding workers compute :func:`image_stats` on every decoded image (a chunk at a
time, on the image shrunk to at most :data:`SIDE` px a side): the 1st, 50th and 99th
percentile of its gray levels, its sharpness, the entropy of its gray histogram and how
colourful it is. :func:`issues` turns them, with the files' sizes, into the image-quality
issues of cleanlab's Datalab (CleanVision), each flagged **only where an image stands out
from the dataset's own distribution**: a robust z-score (distance from the dataset's median
in units of its median absolute deviation, at least a floor) beyond :data:`Z` *and* a
minimum gap in the property's own units, so a dataset that is all dark is not "too dark"
everywhere, and a clean one gets few or no flags.

| issue | property | flagged when |
|---|---|---|
| ``dark`` | the 99th percentile of the gray levels (its highlights) | z < -Z and >= 64 levels below the median |
| ``light`` | the 1st percentile (its shadows) | z > Z and >= 64 levels above the median |
| ``blurry`` | log sharpness: sqrt(var(Laplacian) / var(gray)) | z < -Z and under half the median sharpness |
| ``low_information`` | entropy of the 32-bin gray histogram (bits) | z < -Z and under a quarter of the median |
| ``odd_size`` | log(width x height) | abs(z) > Z and the area >= 4x off the median |
| ``odd_aspect_ratio`` | log(width / height) | abs(z) > Z and >= 2x off the median aspect |
| ``grayscale`` | gray content (as the census judges it) in colour images | at most 20% of the images are gray |

The score of a flagged image is its robust z (how many spreads it lies beyond the dataset's
median): more severe first. Datalab scores each issue from fixed thresholds instead
(brightness < 0.37, entropy < 3 bits, ...): they flag every digit of MNIST as dark.

:func:`shortcuts` looks for spurious correlations: an image property (brightness, size,
aspect, sharpness, colour) that tells one class from the rest on its own. For each
property and class, a decision stump (one threshold) is fitted on the training images and
checked on the held-out ones (val and test); a balanced accuracy of at least
:data:`SHORTCUT` on both warns that the model may learn the shortcut instead of the content.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.data import kernels

SIDE = 128  # statistics are taken on the image shrunk (area) to at most this many px a side
STATS = ("p01", "p50", "p99", "sharpness", "entropy", "colour", "coloured")  # columns of image_stats
NONE = -1.0  # a statistic that does not apply (sharpness of a flat image, colour of a gray decode)
BINS = 32
Z = 5.0
GRAY_SHARE = 0.2
SHORTCUT = 0.95
MIN_CLASS = 5  # images of a class needed in each part (train, held out) to judge a shortcut
EXAMPLES = 8   # examples per issue in dataset.json (the report shows them as thumbnails)
WARN_SHARE = 0.001  # an issue is warned about when at least this share of the images has it (and one)


def channel_spread(img: np.ndarray) -> np.ndarray:
    """Per pixel of a uint8 HxWx3 image, its largest channel less its smallest (0 for gray), as three
    element-wise passes over the channels (6x faster than numpy's max and min along the channel axis)."""
    c0, c1, c2 = img[..., 0], img[..., 1], img[..., 2]
    return np.maximum(np.maximum(c0, c1), c2) - np.minimum(np.minimum(c0, c1), c2)


def shrunk(img: np.ndarray, side: int = SIDE) -> np.ndarray:
    """An image shrunk (area averaging, its aspect kept) to at most ``side`` px a side; a smaller one as it is."""
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _gray_stats(g: np.ndarray) -> np.ndarray:
    """(m, 5): p01, p50, p99, sharpness, entropy of same-shape uint8 gray images (m, h, w)."""
    m = len(g)
    flat = g.reshape(m, -1)
    n = flat.shape[1]
    hist = np.bincount((flat + (np.arange(m, dtype=np.int64) * 256)[:, None]).ravel(),
                       minlength=m * 256).reshape(m, 256)
    cum = np.cumsum(hist, axis=1)
    out = np.zeros((m, 5), np.float32)
    for col, k in enumerate((int(0.01 * (n - 1)), (n - 1) // 2, int(round(0.99 * (n - 1))))):
        out[:, col] = (cum > k).argmax(axis=1)  # the k-th smallest level
    levels = np.arange(256, dtype=np.float64)
    mean = hist @ levels / n
    std = np.sqrt(np.maximum(hist @ (levels * levels) / n - mean * mean, 0))
    if g.shape[1] >= 3 and g.shape[2] >= 3:
        f = g.astype(np.float32)
        lap = f[:, :-2, 1:-1] + f[:, 2:, 1:-1]  # in place from here, in the same order as written out
        lap += f[:, 1:-1, :-2]
        lap += f[:, 1:-1, 2:]
        lap -= 4 * f[:, 1:-1, 1:-1]
        sharp = lap.reshape(m, -1).std(axis=1) / np.maximum(std, 1e-6)
    else:
        sharp = np.zeros(m)
    out[:, 3] = np.where(std >= 2, sharp, NONE)
    p = hist.reshape(m, BINS, 256 // BINS).sum(axis=2) / n
    out[:, 4] = -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)
    return out


def image_stats(images: Sequence[np.ndarray] | np.ndarray, grays: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(n, len(STATS)) float32 statistics of decoded images (uint8 HxW or HxWx3) and their gray versions (or
    one stack of gray images of one shape, as both).

    Images of one shape are done together; an image's result does not depend on the others.
    """
    n = len(images)
    out = np.full((n, len(STATS)), NONE, np.float32)
    if isinstance(grays, np.ndarray) and grays is images and kernels.LIB is not None and max(grays.shape[1:3]) <= SIDE:
        out[:, :5] = kernels.gray_stats(grays)  # a stack of gray images of one shape, none to shrink
        return out
    small = [shrunk(g) for g in grays]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(small):
        groups.setdefault(g.shape, []).append(i)
    for idx in groups.values():
        stack = np.stack([small[i] for i in idx])
        out[idx, :5] = kernels.gray_stats(stack) if kernels.LIB is not None else _gray_stats(stack)
    for i, img in enumerate(images):
        if img.ndim == 3:
            c = shrunk(img)
            spread = channel_spread(c)
            out[i, 5], out[i, 6] = float(spread.mean()), float((spread > 24).mean())
    return out


# ---------------------------------------------------------------- issues
# issue -> (statistic, direction (-1: low is bad, +1: high, 0: either), least gap from the median,
#           floor of the spread, what the gap is in)
RULES: dict[str, tuple[str, int, float, float, str]] = {
    "dark": ("highlights", -1, 64.0, 2.0, "gray levels"),
    "light": ("shadows", 1, 64.0, 2.0, "gray levels"),
    "blurry": ("log_sharpness", -1, float(np.log(2)), 0.05, "log sharpness (half as sharp)"),
    "low_information": ("entropy", -1, 0.75, 0.05, "a quarter of the median entropy"),
    "odd_size": ("log_area", 0, float(np.log(4)), 0.05, "log area (4x)"),
    "odd_aspect_ratio": ("log_aspect", 0, float(np.log(2)), 0.05, "log aspect (2x)"),
}
ISSUES = (*RULES, "grayscale")
WORDS = {"dark": "too dark", "light": "too light", "blurry": "blurry", "low_information": "nearly blank",
         "odd_size": "of an odd size", "odd_aspect_ratio": "of an odd aspect ratio",
         "grayscale": "gray among colour images"}  # each issue in words (logs, warnings, the report)


def properties(stats: np.ndarray, width: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image properties the issues and shortcuts look at (NaN where one does not apply)."""
    sharp = stats[:, STATS.index("sharpness")]
    colour = stats[:, STATS.index("colour")]
    w, h = np.maximum(width, 1).astype(np.float64), np.maximum(height, 1).astype(np.float64)
    return {"highlights": stats[:, STATS.index("p99")].astype(np.float64),
            "shadows": stats[:, STATS.index("p01")].astype(np.float64),
            "brightness": stats[:, STATS.index("p50")].astype(np.float64),
            "log_sharpness": np.where(sharp > 0, np.log(np.maximum(sharp, 1e-6)), np.nan),
            "entropy": stats[:, STATS.index("entropy")].astype(np.float64),
            "log_area": np.log(w * h), "log_aspect": np.log(w / h),
            "colour": np.where(colour >= 0, colour, np.nan).astype(np.float64)}


def robust_z(v: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """(robust z of each value (NaN stays NaN), the median): (v - median) / max(1.4826 MAD, floor)."""
    ok = v[~np.isnan(v)]
    if not len(ok):
        return np.full(len(v), np.nan), float("nan")
    med = float(np.median(ok))
    mad = 1.4826 * float(np.median(np.abs(ok - med)))
    return (v - med) / max(mad, floor), med


def _flag(v: np.ndarray, issue: str) -> tuple[np.ndarray, np.ndarray]:
    """(flagged items, most severe first; their scores) of one issue of RULES."""
    _, direction, gap, floor, _ = RULES[issue]
    z, med = robust_z(v, floor)
    if issue == "low_information":
        gap = 0.75 * med  # under a quarter of the median
    with np.errstate(invalid="ignore"):
        if direction < 0:
            hit, severity = (z < -Z) & (med - v >= gap), -z
        elif direction > 0:
            hit, severity = (z > Z) & (v - med >= gap), z
        else:
            hit, severity = (np.abs(z) > Z) & (np.abs(v - med) >= gap), np.abs(z)
    idx = np.flatnonzero(hit)
    idx = idx[np.argsort(-severity[idx], kind="stable")]
    return idx, np.round(severity[idx].astype(np.float64), 2)  # float64: 11.63 stays 11.63 in the files


def _grayscale(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gray images among colour ones: flagged when they are at most GRAY_SHARE of the images decoded in
    colour; score: how many spreads under the dataset's median colourfulness."""
    colour, coloured = stats[:, STATS.index("colour")], stats[:, STATS.index("coloured")]
    rgb = colour >= 0
    gray = rgb & (colour < 3.0) & (coloured < 0.005)
    if not rgb.any() or gray.sum() > GRAY_SHARE * rgb.sum():
        return np.zeros(0, np.int64), np.zeros(0)
    z, _ = robust_z(np.where(rgb, colour, np.nan).astype(np.float64), 1.0)
    idx = np.flatnonzero(gray)
    idx = idx[np.argsort(z[idx], kind="stable")]
    return idx, np.round(-z[idx].astype(np.float64), 2)


def issues(stats: np.ndarray, width: np.ndarray, height: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """issue -> (flagged items, most severe first; their scores), for every issue in ISSUES."""
    props = properties(stats, width, height)
    found = {issue: _flag(props[RULES[issue][0]], issue) for issue in RULES}
    found["grayscale"] = _grayscale(stats)
    return found


def rules() -> dict[str, str]:
    """Each issue's rule in words (dataset.json)."""
    out = {}
    for issue, (prop, direction, gap, _, unit) in RULES.items():
        side = {-1: f"z < -{Z:g}", 1: f"z > {Z:g}", 0: f"|z| > {Z:g}"}[direction]
        least = "a quarter of the median" if issue == "low_information" else f"{gap:.3g} {unit}"
        out[issue] = f"{prop}: robust {side} against the dataset, and at least {least} from its median"
    out["grayscale"] = f"gray content among colour images, when at most {GRAY_SHARE:.0%} of them are gray"
    return out


# ---------------------------------------------------------------- shortcuts (spurious correlations)
SHORTCUT_RULE = (f"a one-threshold rule on one property (brightness, size, aspect ratio, sharpness, "
                 f"colourfulness) fitted on the training images tells a class from the rest with a balanced "
                 f"accuracy >= {SHORTCUT} there and on the held-out (val, test) images")
SHORTCUT_PROPERTIES = {"brightness": "brightness", "size": "log_area", "aspect ratio": "log_aspect",
                       "sharpness": "log_sharpness", "colourfulness": "colour"}


def _stump(v: np.ndarray, pos: np.ndarray) -> tuple[float, bool, float]:
    """(threshold, positive when above it?, balanced accuracy) of the best one-threshold rule telling
    ``pos`` from the rest by ``v``."""
    order = np.argsort(v, kind="stable")
    vs, ps = v[order], pos[order]
    n_pos, n_neg = max(int(ps.sum()), 1), max(int((~ps).sum()), 1)
    below = ((np.cumsum(ps) / n_pos) + 1 - (np.cumsum(~ps) / n_neg)) / 2  # positive when v <= t
    cut = np.r_[vs[1:] != vs[:-1], False]  # thresholds only between distinct values
    if not cut.any():
        return float(vs[0]), True, 0.5
    score = np.where(cut, np.maximum(below, 1 - below), 0)
    k = int(np.argmax(score))
    return float((vs[k] + vs[k + 1]) / 2), bool(below[k] < 0.5), float(score[k])


def _balanced(v: np.ndarray, pos: np.ndarray, threshold: float, above: bool) -> float:
    pred = v > threshold if above else v <= threshold
    return float((pred[pos].mean() + (~pred[~pos]).mean()) / 2)


def _parts(is_train: np.ndarray, pos: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, check) masks: the training images and the held-out ones, or two seeded halves of the
    training images when the held-out ones hold too few of the class."""
    if min(int((pos & ~is_train).sum()), int((~pos & ~is_train).sum())) >= MIN_CLASS:
        return is_train, ~is_train
    half = np.random.default_rng(seed).random(len(pos)) < 0.5
    return is_train & half, is_train & ~half


def shortcuts(props: dict[str, np.ndarray], y: np.ndarray, is_train: np.ndarray, labels: Sequence[str],
              seed: int = 0) -> list[dict[str, Any]]:
    """Properties that tell a class from the rest on their own (a stump fitted on one part, checked
    on the other, balanced accuracy >= SHORTCUT on both), strongest first."""
    found = []
    for name, key in SHORTCUT_PROPERTIES.items():
        v = props[key]
        known = ~np.isnan(v)
        if known.sum() < 2 * MIN_CLASS or np.nanmax(v) - np.nanmin(v) < 1e-9:
            continue
        for c in np.unique(y[known]).tolist():
            pos = y == c
            fit, check = _parts(is_train & known, pos, seed)
            check &= known
            if min(int((pos & fit).sum()), int((~pos & fit).sum()), int((pos & check).sum()),
                   int((~pos & check).sum())) < MIN_CLASS:
                continue
            t, above, fitted = _stump(v[fit], pos[fit])
            held = _balanced(v[check], pos[check], t, above) if fitted >= SHORTCUT else 0.0
            if held >= SHORTCUT:
                found.append({"property": name, "label": labels[c], "direction": "higher" if above else "lower",
                              "threshold": round(t, 4), "train": round(fitted, 3), "held_out": round(held, 3)})
    return sorted(found, key=lambda f: -f["held_out"])


def shortcuts_of(stats: np.ndarray, width: np.ndarray, height: np.ndarray, y: np.ndarray, multi: np.ndarray | None,
                 is_train: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`shortcuts` of images' statistics and sizes (a decoding worker's job): of each class against the
    rest, or with ``multi`` (n, labels) of multi-label images, of each label's images against the rest."""
    props = properties(stats, width, height)
    if multi is None:
        return shortcuts(props, y, is_train, list(labels))
    return [found for j, name in enumerate(labels)
            for found in shortcuts(props, multi[:, j], is_train, ["without " + name, name]) if found["label"] == name]

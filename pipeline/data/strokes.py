"""Synthetic pen strokes: images of something that is not any class, for the novelty detector.

Lines, curves and arcs, one to four of them, drawn with a random pen width, anti-aliased, light
on black. They are glyph-like but not glyphs of any alphabet: the novelty detector's third score
is a small classifier that tells the training images from them on the model's convolution
features (outlier exposure with synthetic outliers, Hendrycks et al. 2019), which is what
catches letters and symbols that the digit features alone map onto digits (docs/trust.md). They go
through the dataset's own preprocessing, like every image (:func:`stroke_images`).
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.data.preprocess import preprocess
from pipeline.shared.params import PreprocessParams

SIDE = 64


def _bezier(points: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    if len(points) == 3:
        return (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t ** 2 * points[2]
    return ((1 - t) ** 3 * points[0] + 3 * (1 - t) ** 2 * t * points[1] + 3 * (1 - t) * t ** 2 * points[2]
            + t ** 3 * points[3])


def _stroke(rng: np.random.Generator, side: int) -> np.ndarray:
    """The points of one stroke: a straight line, a Bezier curve or an elliptic arc."""
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.uniform(8, side - 8, (2, 2))
    if kind == 1:
        return _bezier(rng.uniform(8, side - 8, (int(rng.integers(3, 5)), 2)))
    centre, radius = rng.uniform(20, side - 20, 2), rng.uniform(6, 22, 2)
    start = rng.uniform(0, 2 * np.pi)
    a = np.linspace(start, start + rng.uniform(0.5, 2 * np.pi), 30)
    return np.stack([centre[0] + radius[0] * np.cos(a), centre[1] + radius[1] * np.sin(a)], axis=1)


def draw(n: int, seed: int = 0, side: int = SIDE) -> np.ndarray:
    """``n`` stroke images, (n, side, side) uint8, light ink on black."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, side, side), np.uint8)
    for img in out:
        width = int(rng.integers(2, 7))
        for _ in range(int(rng.integers(1, 5))):
            # shift=2: quarter-pixel coordinates, for smooth anti-aliased curves
            cv2.polylines(img, [np.round(_stroke(rng, side) * 4).astype(np.int32)], False, 255, width,
                          cv2.LINE_AA, shift=2)
    return out


def stroke_images(n: int, cfg: PreprocessParams, seed: int = 0) -> np.ndarray:
    """``n`` pen-stroke images as model inputs: drawn light on black (dark on white where the dataset's
    images are inverted by its preprocessing), then the dataset's preprocessing."""
    raw = draw(n, seed)
    if cfg.invert == "true":
        raw = 255 - raw
    return np.stack([preprocess(img, cfg) for img in raw])

"""Calibrated confidence: temperature scaling, its error, and a confidence cut chosen for a precision.

- :func:`fit_temperature`: the one scalar T that makes ``softmax(logits / T)`` fit the
  validation labels best (Guo et al. 2017, "On Calibration of Modern Neural Networks").
  The model applies it itself (its ``temperature`` layer), so every export carries it.
- :func:`ece`: expected calibration error, the gap between confidence and accuracy
  averaged over 15 equal-width confidence bins.
- :func:`risk_coverage` and :func:`threshold_for`: accuracy of the predictions kept at
  each confidence cut, and the lowest cut whose kept predictions reach a target
  precision (``[predict] threshold = "auto"``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

BINS = 15
T_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / t)``."""
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def all_right(logits: np.ndarray, y: np.ndarray) -> bool:
    """True when the model gets every one of (at least one) validation images right."""
    return bool(len(y)) and bool((np.asarray(logits).argmax(axis=1) == np.asarray(y)).all())


def succession(n: int) -> float:
    """The accuracy to expect of a model that got all ``n`` images right: Laplace's rule of succession."""
    return (n + 1) / (n + 2)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the validation NLL (1.0 when there is nothing to fit on).

    A validation split the model gets all right gives no minimum (the NLL falls as T goes to 0, and every
    confidence would become 1.0: seen on 18 validation images). Then T sets the mean confidence to
    :func:`succession` of the split's size (0.976 for 39 images): not 1.0, and not the low confidences of a
    label-smoothed model either (a cleaned dataset's model, right on all of 39, said 0.69-0.95)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0
    logits = np.asarray(logits, np.float64)
    if all_right(logits, y):
        return _mean_confidence_temperature(logits, succession(len(y)))
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), method="bounded",
                          bounds=tuple(np.log(T_BOUNDS)), options={"xatol": 1e-4})
    return float(np.exp(res.x)) if res.success else 1.0


def _mean_confidence_temperature(logits: np.ndarray, target: float) -> float:
    """The temperature (within T_BOUNDS) whose mean top-1 confidence is ``target`` (it falls as T grows)."""
    from scipy.optimize import brentq

    def gap(log_t: float) -> float:
        return float(softmax(logits / np.exp(log_t)).max(axis=1).mean()) - target

    lo, hi = np.log(T_BOUNDS)
    if gap(lo) <= 0:
        return T_BOUNDS[0]
    if gap(hi) >= 0:
        return T_BOUNDS[1]
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-5)))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top-1 confidence (equal-width bins)."""
    if len(y) == 0:
        return float("nan")
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    which = np.clip((conf * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mine = which == b
        if mine.any():
            total += mine.mean() * abs(correct[mine].mean() - conf[mine].mean())
    return float(total)


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T * log p) (p = softmax(z / T))."""
    return softmax(np.log(np.clip(probs, 1e-12, 1.0)) * temperature)


def risk_coverage(probs: np.ndarray, y: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    """At confidence cuts (quantiles of the confidences): the share of images kept and their accuracy."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    cuts = np.unique(np.quantile(conf, np.linspace(0, 1, points, endpoint=False))) if len(conf) else np.zeros(0)
    coverage, precision = [], []
    for c in cuts:
        kept = conf >= c
        coverage.append(float(kept.mean()))
        precision.append(float(correct[kept].mean()) if kept.any() else 1.0)
    return {"threshold": [float(c) for c in cuts], "coverage": coverage, "precision": precision}


def threshold_for(table: dict[str, list[float]], target: float) -> tuple[float, dict[str, Any]]:
    """The lowest cut whose kept predictions reach ``target`` precision (or, if none does, the most
    precise cut), with the coverage and precision it had on the validation split."""
    cuts, cov, prec = table["threshold"], table["coverage"], table["precision"]
    if not cuts:
        return 0.0, {"reached": False, "coverage": 1.0, "precision": float("nan")}
    ok = [k for k, p in enumerate(prec) if p >= target]
    k = ok[0] if ok else int(np.argmax(prec))
    return float(cuts[k]), {"reached": bool(ok), "coverage": cov[k], "precision": prec[k]}

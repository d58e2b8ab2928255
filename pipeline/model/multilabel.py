"""Images with several labels each: per-label thresholds, per-label calibration, and the metrics.

A multi-label model gives one independent probability per label (a sigmoid each). A label is predicted
when its probability reaches the label's own threshold, chosen on the validation split: the one that
maximizes that label's F1, or (``target_precision``) the lowest whose predictions reach that precision.
Calibration is a temperature per label (each label's logits scaled so its sigmoid fits the validation
labels best). Metrics: per-label precision, recall, F1, average precision and support; micro and macro
F1; mean average precision (mAP, over the labels with a positive); subset accuracy (every label right)
and Hamming loss (the share of wrong label decisions). Pure numpy (the average precision as
scikit-learn computes it).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.model.recipe import FEW_WEIGHED

DEFAULT_THRESHOLD = 0.5
T_BOUNDS = (0.05, 20.0)
FEW_POSITIVES = 10  # a label's threshold set on fewer validation positives than this is a rough estimate


def few_positives(positives: Sequence[int], labels: Sequence[str]) -> str:
    """The labels whose threshold rests on fewer than FEW_POSITIVES validation positives, in words ("" when none):
    said by train's log and the report."""
    few = [f"{name} {n}" for name, n in zip(labels, positives) if n < FEW_POSITIVES]
    if not few:
        return ""
    return (f"the thresholds of {len(few)} label(s) rest on fewer than {FEW_POSITIVES} validation positives each "
            f"({', '.join(few[:10])}{', ...' if len(few) > 10 else ''}): rough estimates")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision of one label (nan without a positive): the mean of the precision at each positive,
    ranked by score (ties: scikit-learn's step rule)."""
    y = np.asarray(y, bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-score, kind="stable")
    s, hits = score[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(hits)[distinct]
    precision = tp / (distinct + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold(y: np.ndarray, p: np.ndarray, target_precision: float | None = None) -> float:
    """One label's threshold from validation: the best F1 (or the lowest cut reaching ``target_precision``);
    0.5 without a positive.

    The best F1 is reached by every cut between the lowest probability given the label and the highest one
    below it: the same validation decisions. The middle of that gap is taken, not its top (the weakest
    positive, exactly: a new image a little less sure than it would lose the label; seen on a small
    validation split, where the gap is wide, as recall 0.55 at a cut of 0.90 that 0.5 would have at 0.97)."""
    y = np.asarray(y, bool)
    if not y.any() or not len(y):
        return DEFAULT_THRESHOLD
    cuts = np.unique(p)
    best, best_cut = -1.0, DEFAULT_THRESHOLD
    for cut in cuts:
        pred = p >= cut
        tp = float((pred & y).sum())
        precision, recall = tp / max(pred.sum(), 1), tp / y.sum()
        if target_precision is not None:
            if precision >= target_precision:
                return float(cut)
            continue
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        if f1 > best:
            best, best_cut = f1, float(cut)
    if target_precision is not None:
        return float(cuts[-1])
    below = cuts[cuts < best_cut]
    return (float(below[-1]) + best_cut) / 2 if len(below) else best_cut


def thresholds(y: np.ndarray, probs: np.ndarray, target_precision: float | None = None) -> np.ndarray:
    """Every label's threshold (:func:`threshold`)."""
    return np.array([threshold(y[:, j], probs[:, j], target_precision) for j in range(probs.shape[1])])


def fit_temperatures(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A temperature per label: the scale of its logits that minimises the validation binary cross-entropy
    (1.0 for a label with only one value in validation). A label the model gets all right in validation
    gives no minimum (the loss falls as T goes to 0, and every probability would become 0 or 1: seen on 6
    validation images, thresholds then at 1.0): 1.0 too, as for a single-label model."""
    from scipy.optimize import minimize_scalar

    out = np.ones(logits.shape[1])
    for j in range(logits.shape[1]):
        z, t = np.asarray(logits[:, j], np.float64), np.asarray(y[:, j], np.float64)
        if len(t) == 0 or t.min() == t.max() or ((z > 0) == (t > 0.5)).all():
            continue

        def bce(log_t: float, z: np.ndarray = z, t: np.ndarray = t) -> float:
            p = np.clip(sigmoid(z / np.exp(log_t)), 1e-12, 1 - 1e-12)
            return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())

        res = minimize_scalar(bce, method="bounded", bounds=tuple(np.log(T_BOUNDS)), options={"xatol": 1e-4})
        out[j] = float(np.exp(res.x)) if res.success else 1.0
    return out


def label_scores(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per label: (true positives, false positives, false negatives, precision, recall, F1) of the
    decisions ``pred`` (n, L) bool against ``y``."""
    y = np.asarray(y, bool)
    tp, fp, fn = (pred & y).sum(axis=0), (pred & ~y).sum(axis=0), (~pred & y).sum(axis=0)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / np.maximum(tp + fn, 1)
    return tp, fp, fn, precision, recall, 2 * precision * recall / np.maximum(precision + recall, 1e-12)


def metrics(y: np.ndarray, probs: np.ndarray, cuts: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The multi-label metrics of ``metrics.json`` (``task`` = "multi")."""
    y = np.asarray(y, bool)
    pred = probs >= cuts[None, :]
    tp, fp, fn, precision, recall, f1 = label_scores(y, pred)
    ap = np.array([average_precision(y[:, j], probs[:, j]) for j in range(y.shape[1])])
    micro_p = tp.sum() / max(tp.sum() + fp.sum(), 1)
    micro_r = tp.sum() / max(tp.sum() + fn.sum(), 1)
    return {
        "task": "multi", "n": int(len(y)), "labels": labels,
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "f1_macro": float(f1.mean()), "f1_micro": float(2 * micro_p * micro_r / max(micro_p + micro_r, 1e-12)),
        "subset_accuracy": float((pred == y).all(axis=1).mean()), "hamming_loss": float((pred != y).mean()),
        "per_label": {name: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                             "ap": None if np.isnan(ap[j]) else float(ap[j]), "support": int(y[:, j].sum()),
                             "threshold": float(cuts[j])} for j, name in enumerate(labels)},
    }


# ---------------------------------------------------------------- training
def positive_weights(positives: list[int], n: int, mode: str, threshold: float,
                     labels: Sequence[str] = ()) -> tuple[list[float] | None, str, tuple[str, ...]]:
    """Per-label weights of the positive term of the loss (``[train] class_weights`` for multi-label data):
    each label's negatives over its positives, so that its positives and negatives weigh alike. ``auto``
    weights when some label is rarer than 1 in ``threshold`` + 1 images (negatives > ``threshold`` x
    positives), except a label with fewer than ``FEW_WEIGHED`` training images (one image weighted 215x, or
    20x, put its label on most images). Also the warnings about such labels."""
    pos = np.maximum(np.asarray(positives, float), 1.0)
    ratio = (n - pos) / pos
    if mode == "none":
        return None, "off (set in params)", ()
    few = [j for j, c in enumerate(positives) if 0 < c < FEW_WEIGHED]
    named = ", ".join(f"{labels[j] if j < len(labels) else j!r} ({positives[j]})" for j in few[:5])
    if mode == "balanced":
        warn = (f"label(s) with fewer than {FEW_WEIGHED} training images, {named}: balanced weights count each "
                f"of their images up to {ratio.max():.0f}x, which can put them on most images: add images of "
                "them, or set class_weights = \"auto\"",) if few else ()
        return _rounded(ratio), "positives weighted by negatives/positives (set in params)", warn
    if ratio.max() <= threshold:
        return None, (f"none: the rarest label has {ratio.max():.1f}x as many negatives, within the audit's "
                      f"{threshold:g}x"), ()
    weights = np.where(pos < FEW_WEIGHED, 1.0, ratio)
    warn = (f"label(s) with fewer than {FEW_WEIGHED} training images, {named}: not weighted up (their few images "
            "weighted to match the rest put them on most images), so expect them to be missed: add images of them",) \
        if few else ()
    return _rounded(weights), (f"positives weighted by negatives/positives: the rarest label has "
                               f"{ratio.max():.1f}x as many negatives, above the audit's {threshold:g}x"), warn


def _rounded(weights: np.ndarray) -> list[float]:
    return [round(float(w), 4) for w in np.maximum(weights, 1e-3)]


def loss(label_smoothing: float, pos_weight: list[float] | None) -> Any:
    """Binary cross-entropy on the sigmoid outputs, averaged over labels, targets smoothed towards 0.5 as
    Keras' ``BinaryCrossentropy(label_smoothing)`` does, each label's positive term weighted by
    ``pos_weight`` (a plain function: bundles load with ``compile=False``, nothing to register)."""
    from keras import ops

    w = None if pos_weight is None else ops.convert_to_tensor(np.asarray(pos_weight, np.float32))

    def weighted_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
        y = ops.cast(y_true, "float32") * (1.0 - label_smoothing) + 0.5 * label_smoothing
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        positive = y * ops.log(p)
        if w is not None:
            positive = positive * w
        return -ops.mean(positive + (1.0 - y) * ops.log(1.0 - p), axis=-1)

    return weighted_binary_crossentropy


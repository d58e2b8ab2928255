"""What ``train`` fits after training, for trusting predictions: the temperature (calibration) and
the novelty detector (docs/trust.md).

:func:`fit` takes the trained float32 model and the prepared splits; it sets the model's temperature
and returns the bundle's calibration record and its :class:`~pipeline.shared.novelty_spec.NoveltySpec`.
The cores are :mod:`pipeline.model.calibrate` and :mod:`pipeline.model.novelty`. The synthetic pen
strokes of the novelty detector's third score are drawn by the caller (``draw_strokes(n)``: model
inputs made by the dataset's own preprocessing, :func:`pipeline.data.strokes.stroke_images`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.model import calibrate, multilabel, novelty, rows
from pipeline.model.infer import Predictor
from pipeline.model.model import scale_logits, set_temperature
from pipeline.shared import bundle
from pipeline.shared.novelty_spec import NoveltySpec
from pipeline.shared.params import PreprocessParams

log = logging.getLogger(__name__)

MIN_STROKES = 2000  # strokes drawn: as many as training images sampled, at least this many


def _outputs(predictor: Any, x: np.ndarray, rows: np.ndarray | None = None, chunk: int = 4096
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits, features, image statistics, convolution features or None) of ``x`` (or of its ``rows``),
    a chunk at a time: ``x`` may be memory-mapped and large."""
    rows = np.arange(len(x)) if rows is None else rows
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for i in range(0, len(rows), chunk):
        block = np.asarray(x[rows[i:i + chunk]], np.float32)
        out = predictor(block)
        feats = out.features if out.features is not None else np.zeros((len(block), 0), np.float32)
        for part, value in zip(parts, (out.logits, feats, novelty.image_stats(block), out.conv)):
            part.append(value)
    logits, feats, stats, conv = parts
    return (np.concatenate(logits), np.concatenate(feats), np.concatenate(stats),
            np.concatenate(conv) if conv and conv[0] is not None else None)


def _calibrate(model: Any, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fit the temperature on validation and set it in ``model``; the calibration record."""
    t = calibrate.fit_temperature(logits, y)
    set_temperature(model, t)
    after = calibrate.softmax(logits / t)
    perfect = calibrate.all_right(logits, y)
    calib = {"temperature": round(t, 5), "fitted_on": f"validation split ({len(y)} images)", "val_images": len(y),
             "temperature_rule": (f"every validation image right: the mean confidence set to (n+1)/(n+2) = "
                                  f"{calibrate.succession(len(y)):.4f}" if perfect else "the least validation NLL"),
             "ece_val_before": calibrate.ece(calibrate.softmax(logits), y), "ece_val": calibrate.ece(after, y),
             "nll_val_before": calibrate.nll(logits, y, 1.0), "nll_val": calibrate.nll(logits, y, t),
             "risk_coverage": calibrate.risk_coverage(after, y)}
    if perfect:
        log.info("train: the model gets %s right: no error to fit a temperature on; "
                 "temperature %.3f sets the mean confidence to %.4f, the accuracy to expect ((n+1)/(n+2))",
                 f"all {len(y)} validation images" if len(y) > 1 else "its one validation image", t,
                 calibrate.succession(len(y)))
    else:
        rough = f", a rough estimate on {len(y)} images" if len(y) < rows.FEW_VAL else ""
        log.info("train: temperature %.3f fitted on val: the least NLL (%.4f -> %.4f; ECE %.4f -> %.4f%s)", t,
                 calib["nll_val_before"], calib["nll_val"], calib["ece_val_before"], calib["ece_val"], rough)
    return calib


def _calibrate_multi(model: Any, logits: np.ndarray, y: np.ndarray, rule: str | float = "f1",
                     labels: list[str] | None = None) -> dict[str, Any]:
    """Multi-label: a temperature per label fitted on validation and folded into the model's logits, then
    each label's threshold chosen on the calibrated validation probabilities (``rule``: its best F1, or the
    lowest reaching a target precision); the record."""
    temps = multilabel.fit_temperatures(logits, y)
    scale_logits(model, temps)
    probs = multilabel.sigmoid(logits / temps[None, :])
    cuts = multilabel.thresholds(y, probs, None if rule == "f1" else float(rule))
    calib = {"task": "multi", "temperature": 1.0, "temperatures": [round(float(t), 5) for t in temps],
             "thresholds": [round(float(c), 6) for c in cuts], "fitted_on": f"validation split ({len(y)} images)",
             "threshold_rule": "best F1" if rule == "f1" else f"precision >= {float(rule):g}",
             "f1_macro_val": float(multilabel.label_scores(y, probs >= cuts[None, :])[-1].mean())}
    fitted = "a temperature (%.2f..%.2f)" % (temps.min(), temps.max()) if np.any(temps != 1.0) else \
        "temperatures left at 1 (no validation error to fit them on)"
    log.info("train: %s and a threshold (%.2f..%.2f) per label fitted on val (macro F1 %.4f)", fitted, cuts.min(),
             cuts.max(), calib["f1_macro_val"])
    calib["val_positives"] = np.asarray(y, bool).sum(axis=0).tolist()
    few = multilabel.few_positives(calib["val_positives"], labels or [str(j) for j in range(y.shape[1])])
    if few:
        log.warning("train: %s; a larger [prepare] val_size, or more images of them, makes them surer", few)
    return calib


def fit(model: Any, labels: list[str], cfg: PreprocessParams, x_train: np.ndarray, x_val: np.ndarray,
        y_val: np.ndarray, flag_rate: float, draw_strokes: Callable[[int], np.ndarray] | None = None,
        label_thresholds: str | float = "f1") -> tuple[dict[str, Any], NoveltySpec | None]:
    """Calibrate ``model`` (its temperature, set in place; multi-label: per label, and each label's
    threshold by ``label_thresholds``) and fit the novelty detector flagging ``flag_rate`` of validation
    images; (calibration record, novelty spec or None)."""
    predictor = Predictor(bundle.Bundle(model, labels, cfg, {}), 1024, conv=True)
    logits, f_val, s_val, c_val = _outputs(predictor, x_val)
    y_val = np.asarray(y_val)
    calib = (_calibrate_multi(model, logits, y_val, label_thresholds, labels) if y_val.ndim == 2
             else _calibrate(model, logits, y_val))
    if f_val.shape[1] == 0:
        return calib, None
    _, f_train, s_train, c_train = _outputs(predictor, x_train, novelty.training_sample(len(x_train)))
    drawn = None
    if c_val is not None and draw_strokes is not None:  # the strokes classifier reads LeNet-5's flatten
        drawn = (c_train, c_val, predictor(draw_strokes(max(len(c_train), MIN_STROKES))).conv)
    spec = novelty.fit(s_train, f_train, s_val, f_val, flag_rate, strokes=drawn)
    log.info("train: novelty detector fitted (%s; %d training images; the cut flags %.1f%% of val)",
             ", ".join(spec.detectors), len(f_train), 100 * spec.facts["val_flagged"])
    return calib, spec

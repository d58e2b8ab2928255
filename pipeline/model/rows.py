"""The one prediction row: what a user gets for one image, made by one function from the ``[predict]``
rules. ``predictions.csv``, ``.jsonl`` and the web page's JSON answer are renderings of it, so
``make predict`` and ``make serve`` label the same image the same way.

- :class:`Rules`: top-k, the confidence cut (given, or ``"auto"``: chosen on validation for a
  target precision) and its label, and what an unfamiliar image gets (``flag`` or ``unknown``);
  :func:`rules_for` resolves them from ``[predict]`` and the bundle.
- :class:`Row`: path, label, confidence, top-k, novelty, familiar (a bool), error, and whether a
  multi-label model's rules made it.
- :func:`make_rows`: the rows of a batch, from the model's probabilities and novelty.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.model import calibrate
from pipeline.shared.errors import UserError
from pipeline.shared.runfolder import MULTI_JOIN
from pipeline.shared.params import AUTO, PredictParams

log = logging.getLogger(__name__)

FEW_VAL = 100  # a confidence cut set on fewer validation images than this is said to be a rough estimate


@dataclass(frozen=True)
class Rules:
    """How a row is labelled: top-k, the confidence cut and its label, what unfamiliar images get."""

    k: int
    threshold: float = 0.0
    unknown: str = "unknown"
    unfamiliar: str = "flag"  # flag: keep the best label | unknown: the unknown label
    how: dict[str, Any] = field(default_factory=lambda: {"how": "given"}, compare=False)
    cuts: tuple[float, ...] | None = None  # multi-label: each label's threshold (the row's label: all above theirs)


def resolve_threshold(p: PredictParams, calibration: dict[str, Any] | None) -> tuple[float, dict[str, Any]]:
    """The confidence cut: as given, or (auto) the lowest reaching ``target_precision`` on validation."""
    if p.threshold != AUTO:
        return float(p.threshold), {"how": "given"}
    table = (calibration or {}).get("risk_coverage")
    if not table:
        raise UserError('threshold = "auto" needs the validation figures in the bundle (calibration.json); '
                        "retrain with this version, or give --threshold P")
    cut, facts = calibrate.threshold_for(table, p.target_precision)
    how = (f"auto: {facts['precision']:.2%} precision on validation keeping {facts['coverage']:.1%} of the images"
           + ("" if facts["reached"] else f" (the target {p.target_precision:.2%} is out of reach: the best cut)"))
    seen = (calibration or {}).get("val_images")
    if seen is not None and seen < FEW_VAL:
        how += f"; measured on {seen} validation images only: a rough estimate"
        log.warning("threshold: the cut was set on %d validation images only; its precision is a rough estimate "
                    "(more validation images: a larger val_size)", seen)
    if facts["reached"]:
        log.info("threshold %.4f (%s)", cut, how)
    else:  # the labelled rows are not as precise as asked: a warning, not a line among the rest
        log.warning("threshold %.4f: no cut reaches %.2f%% precision on validation; the best one keeps %.1f%% of the "
                    "images at %.2f%% (%s)", cut, 100 * p.target_precision, 100 * facts["coverage"],
                    100 * facts["precision"], how)
    return cut, {"how": how, **facts}


def rules_for(p: PredictParams, labels: list[str], calibration: dict[str, Any] | None) -> Rules:
    """The rules ``[predict]`` (after command-line overrides) gives for a model with these labels; a
    multi-label model's rows take every label above its own threshold (chosen on validation by train)."""
    cuts = (calibration or {}).get("thresholds")
    if cuts is not None:
        if p.threshold != PredictParams.threshold:
            log.info("threshold %s not used: a multi-label model gives each label by its own threshold, chosen on "
                     "validation (calibration.json)", p.threshold)
        if p.unfamiliar == "unknown" and p.unknown_label in labels:
            raise UserError(f"unknown_label {p.unknown_label!r} is also a label of the model; choose another name")
        return Rules(min(p.top_k, len(labels)), 0.0, p.unknown_label, p.unfamiliar,
                     {"how": "multi-label: each label's own threshold, chosen on validation"}, tuple(cuts))
    threshold, how = resolve_threshold(p, calibration)
    if (threshold > 0 or p.unfamiliar == "unknown") and p.unknown_label in labels:
        raise UserError(f"unknown_label {p.unknown_label!r} is also a label of the model; choose another name")
    return Rules(min(p.top_k, len(labels)), threshold, p.unknown_label, p.unfamiliar, how)


@dataclass(frozen=True)
class Row:
    """One image's prediction (``error`` set and the rest empty when it could not be read)."""

    path: str
    label: str = ""
    confidence: float | None = None
    top: tuple[tuple[str, float], ...] = ()
    novelty: float | None = None
    familiar: bool | None = None
    error: str = ""
    multi: bool = False  # made by a multi-label model's rules: ``label`` is a label set joined by ``;``

    def cells(self, k: int, multi: bool = False) -> dict[str, Any]:
        """The row as the output columns (:func:`columns`), values typed (None: empty)."""
        out: dict[str, Any] = {"path": self.path, label_column(multi): self.label, "confidence": self.confidence}
        for i in range(k):
            label, prob = self.top[i] if i < len(self.top) else (None, None)
            out[f"top{i + 1}_label"], out[f"top{i + 1}_prob"] = label, prob
        out.update({"novelty": self.novelty, "familiar": self.familiar, "error": self.error or None})
        return out

    def as_http(self) -> dict[str, Any]:
        """The row as the web API answers it; a multi-label model's row also gives its label set as a
        ``labels`` list, empty, of one or of several (a single-label model's label is one name, even with a
        ``;`` in it, and no list)."""
        if self.error:
            return {"file": self.path, "error": self.error}
        names = [s for s in self.label.split(MULTI_JOIN) if s] if self.multi else []
        return {"file": self.path, "label": self.label, "confidence": self.confidence,
                **({"labels": names} if self.multi else {}),
                "top_k": [{"label": label, "probability": prob} for label, prob in self.top],
                "novelty": self.novelty, "familiar": self.familiar, "error": None}


def _label_set(p: np.ndarray, labels: list[str], cuts: tuple[float, ...]) -> str:
    """A multi-label row's label: every label at or above its threshold, most probable first, joined
    (empty: none of them)."""
    above = [c for c in np.argsort(-p, kind="stable") if p[c] >= cuts[c]]
    return MULTI_JOIN.join(labels[c] for c in above)


def label_column(multi: bool) -> str:
    """The answer's column: ``label``, or for a multi-label model ``labels`` (joined by ``;``)."""
    return "labels" if multi else "label"


def columns(k: int, multi: bool = False) -> list[str]:
    """Output columns for top-``k`` (the top-k of a multi-label model: its labels by probability)."""
    top = [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_prob")]
    return ["path", label_column(multi), "confidence", *top, "novelty", "familiar", "error"]


def make_rows(paths: list[str], reasons: list[str], probs: np.ndarray, labels: list[str], rules: Rules,
              novelty: np.ndarray | None = None, familiar: np.ndarray | None = None) -> list[Row]:
    """One row per path; ``probs`` (and ``novelty``/``familiar``, None when the model has no novelty
    score) have one row per path without a reason, in order."""
    k = rules.k
    top = (np.argsort(-probs, axis=1, kind="stable")[:, :k] if len(probs) else np.zeros((0, k), int)).tolist()
    # plain Python numbers from here on (the same values: float32 -> float, as float() converts them)
    values = np.asarray(probs).tolist()
    scores = None if novelty is None else np.asarray(novelty).tolist()
    known_ones = None if familiar is None else np.asarray(familiar, bool).tolist()
    rows, j = [], 0
    for path, reason in zip(paths, reasons):
        if reason:
            rows.append(Row(path, error=reason))
            continue
        p, order = values[j], top[j]
        conf = p[order[0]]
        known = known_ones is None or known_ones[j]
        sure = conf >= rules.threshold and (known or rules.unfamiliar == "flag")
        label = labels[order[0]] if rules.cuts is None else _label_set(probs[j], labels, rules.cuts)
        rows.append(Row(path, label if sure else rules.unknown, conf, tuple((labels[c], p[c]) for c in order),
                        None if scores is None else scores[j], None if known_ones is None else known,
                        multi=rules.cuts is not None))
        j += 1
    return rows

"""The report's test results for a multi-label run (``metrics.json`` with ``task`` = "multi"): the summary
figures, each label's precision, recall, F1, average precision and threshold (worst first), the
precision-recall curves, the labels seen together most often, and the most confident wrong label decisions
(a label given that the image lacks, a label missed that it carries)."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.model import multilabel
from pipeline.shared import plots
from pipeline.stages.report.sections import _figure, _table

WORST = 16  # wrong label decisions shown


def wrong_decisions(y: np.ndarray, probs: np.ndarray, cuts: np.ndarray, top: int = WORST
                    ) -> list[tuple[int, int, bool]]:
    """The most confident wrong decisions: (image, label, given) with ``given`` True for a false positive
    (probability far above the threshold) and False for a missed label (far below), the surest first."""
    y = np.asarray(y, bool)
    pred = probs >= cuts[None, :]
    margin = np.where(pred, probs - cuts[None, :], cuts[None, :] - probs)
    rows, cols = np.nonzero(pred != y)
    order = np.argsort(-margin[rows, cols], kind="stable")[:top]
    return [(int(rows[k]), int(cols[k]), bool(pred[rows[k], cols[k]])) for k in order]


def figures(x: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str], metrics: dict[str, Any],
            names: list[str]) -> tuple[dict[str, bytes | None], list[list[Any]]]:
    """The PR curves and the gallery of wrong decisions (PNGs), and the gallery's table."""
    cuts = np.array([metrics["per_label"][name]["threshold"] for name in labels], float)
    wrong = wrong_decisions(y, probs, cuts)
    titles = [f"{'+' if given else '−'}{plots.short(labels[j], 8)} {probs[i, j]:.2f}" for i, j, given in wrong]
    pngs = {"pr": plots.pr_curves(y, probs, labels, cuts) if len(y) else None,
            "errors": plots.gallery(np.asarray(x[[i for i, _, _ in wrong]]), titles, [names[i] for i, _, _ in wrong],
                                    "Surest wrong label decisions: + given but absent, − missed; probability")
            if wrong else None}
    table = [[names[i], labels[j], "given, absent" if given else "missed", f"{probs[i, j]:.3f}",
              f"{cuts[j]:.3f}"] for i, j, given in wrong]
    return pngs, table


def top_pairs(matrix: list[list[int]] | None, labels: list[str], top: int = 10) -> list[list[Any]]:
    """The label pairs seen together most often, from dataset.json's co-occurrence table."""
    if not matrix or len(matrix) != len(labels):
        return []
    m = np.asarray(matrix)
    i, j = np.triu_indices(len(labels), 1)
    order = np.argsort(-m[i, j], kind="stable")[:top]
    return [[f"{labels[i[k]]} + {labels[j[k]]}", int(m[i[k], j[k]])] for k in order if m[i[k], j[k]] > 0]


def few_positives(calibration: dict[str, Any] | None, labels: list[str]) -> list[str]:
    """The train log's warning about thresholds set on few validation positives, for the report's warnings."""
    few = multilabel.few_positives((calibration or {}).get("val_positives") or [], labels)
    return [few] if few else []


def results_section(metrics: dict[str, Any], dataset: dict[str, Any] | None, gallery: list[list[Any]],
                    pngs: dict[str, bytes | None]) -> str:
    """The multi-label "Test results" section."""
    per = sorted(metrics["per_label"].items(), key=lambda kv: kv[1]["f1"])
    rows = [[name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
             "–" if m["ap"] is None else f"{m['ap']:.3f}", m["support"], f"{m['threshold']:.3f}"] for name, m in per]
    head = (f"<p>{metrics['n']} test images, {len(per)} labels. <b>mAP {metrics['map']:.4f}</b>, F1 macro "
            f"{metrics['f1_macro']:.4f}, micro {metrics['f1_micro']:.4f}; every label right on "
            f"{metrics['subset_accuracy']:.2%} of the images (subset accuracy); {metrics['hamming_loss']:.2%} of "
            "the label decisions wrong (Hamming loss). A label is given when its probability reaches its own "
            "threshold, chosen on the validation split.</p>")
    together = top_pairs(((dataset or {}).get("multi_label") or {}).get("co_occurrence"), metrics["labels"])
    pairs = _table(["labels", "images with both"], together) if together else ""
    return (f"<section id='results'><h2>Test results</h2>{head}"
            f"<h3>Per label (worst F1 first)</h3>{_table(['label', 'precision', 'recall', 'F1', 'AP', 'support', 'threshold'], rows)}"
            f"{_figure(pngs.get('pr'), 'precision-recall curves', 'Precision-recall per label on the test split')}"
            + (f"{_figure(pngs.get('errors'), 'wrong label decisions', 'The surest wrong label decisions')}"
               f"<h3>Surest wrong label decisions</h3>"
               f"{_table(['file', 'label', 'decision', 'probability', 'threshold'], gallery)}"
               if gallery else "<p class='ok'>No wrong label decision: every label of every test image right.</p>")
            + (f"<h3>Labels seen together most often (all splits)</h3>{pairs}" if pairs else "")
            + "</section>")

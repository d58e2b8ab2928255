"""Evaluate: the model bundle on the prepared test split -> ``metrics.json``, a summary table and ``report.html``.

``metrics.json`` holds ``accuracy``, ``per_class`` {label: precision, recall,
f1, support, predicted (test images given the label)}, ``confusion_matrix`` (rows = true, columns = predicted, in label
order), ``labels``, ``calibration`` {ece, ece_before, temperature} (the expected
calibration error on the test split with and without the bundle's temperature), the
bundle it measured and the environment;
``test_probs.npy`` the class probabilities of each test image (the report's
gallery and calibration plots come from it). ``runtime`` says what ran the model
(``[evaluate] runtime``, ``--runtime``); with ONNX Runtime it also holds how its predictions
agree with TensorFlow's (top-1, ``familiar``, the largest probability difference).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.model import calibrate, multilabel
from pipeline.model.infer import Output, Predictor, agreement
from pipeline.shared import artifacts, bundle, cli
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.env import environment
from pipeline.shared.params import EvaluateParams

log = logging.getLogger(__name__)

METRICS, PROBS = rf.METRICS, rf.PROBS  # (kept importable here: scripts use evaluate.METRICS)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (sklearn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    idx = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0)
    confusion = confusion_matrix(y_true, y_pred, labels=idx)
    predicted = confusion.sum(axis=0)  # test images given each label (a class without test images may get some)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i]), "predicted": int(predicted[i])} for i, name in enumerate(labels)}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n": int(len(y_true)),
        "labels": labels,
        "per_class": per_class,
        "macro_f1": rf.macro_f1(per_class),  # over the classes with test images
        "confusion_matrix": confusion.tolist(),
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A short plain-text summary table."""
    if metrics.get("task") == "multi":
        return format_multi_table(metrics)
    width = max(5, *(len(k) for k in metrics["per_class"]))
    lines = [f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, m in metrics["per_class"].items():
        figures = " ".join(f"{v:>9}" for v in rf.class_figures(m))
        lines.append(f"{name:<{width}} {figures} {m['support']:>8d}")
    f1 = rf.macro_f1(metrics["per_class"])
    lines.append(f"accuracy: {metrics['accuracy']:.4f}, macro F1: {'n/a' if f1 is None else f'{f1:.4f}'} "
                 f"on {metrics['n']} test images")
    empty = [name for name, m in metrics["per_class"].items() if not m["support"]]
    if empty:
        lines.append(f"no test images of {', '.join(empty)}: left out of the macro F1")
    return "\n".join(lines)


def format_multi_table(metrics: dict[str, Any]) -> str:
    """The multi-label summary: each label's precision, recall, F1, average precision, support and threshold."""
    width = max(5, *(len(k) for k in metrics["per_label"]))
    lines = [f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'AP':>9} {'support':>8} {'threshold':>9}"]
    for name, m in metrics["per_label"].items():
        ap = f"{m['ap']:>9.4f}" if m["ap"] is not None else f"{'-':>9}"
        lines.append(f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {ap} "
                     f"{m['support']:>8d} {m['threshold']:>9.3f}")
    lines.append(f"mAP {metrics['map']:.4f}, F1 macro {metrics['f1_macro']:.4f}, micro {metrics['f1_micro']:.4f}, "
                 f"subset accuracy {metrics['subset_accuracy']:.4f}, Hamming loss {metrics['hamming_loss']:.4f} "
                 f"on {metrics['n']} test images")
    return "\n".join(lines)


def _scores(y: np.ndarray, probs: np.ndarray, b: bundle.Bundle) -> dict[str, Any]:
    """The metrics of the test split: single-label (accuracy, per class, confusion, calibration) or
    multi-label (:func:`pipeline.model.multilabel.metrics` at the bundle's per-label thresholds)."""
    if y.ndim == 2:
        cuts = (b.calibration or {}).get("thresholds") or [multilabel.DEFAULT_THRESHOLD] * len(b.labels)
        return multilabel.metrics(y, probs, np.asarray(cuts, float), b.labels)
    metrics = {"task": "single", **compute_metrics(y, probs.argmax(axis=1), b.labels)}
    t = float((b.calibration or {}).get("temperature", 1.0))
    metrics["calibration"] = {"ece": calibrate.ece(probs, y), "temperature": t, "bins": calibrate.BINS,
                              "ece_before": calibrate.ece(calibrate.uncalibrated(probs, t), y)}
    return metrics


def _agreement(model_dir: Path, x: np.ndarray, got: Output, p: EvaluateParams) -> dict[str, Any]:
    """How the light runtime's predictions of the test split agree with TensorFlow's (logged and recorded)."""
    reference = Predictor(bundle.load(model_dir, bundle.TENSORFLOW), p.batch_size)(x)
    a = agreement(got, reference)
    log.info("evaluate: onnx runtime against tensorflow on %d test images: top-1 %.4f%s, probabilities within %.1g",
             a["images"], a["top1"], f", familiar {a['familiar']:.4f}" if "familiar" in a else "",
             a["max_abs_prob_diff"])
    return a


def evaluate(run: Path, p: EvaluateParams) -> dict[str, Any]:
    """Predict the test split with the run's bundle and write ``metrics.json``."""
    prep = rf.Prepared.open(run)
    model_dir = run / rf.BUNDLE
    rf.require(model_dir, bundle.MARKER, "train")
    info = bundle.read_info(model_dir)
    prep.check_bundle(bundle.read_labels(model_dir), bundle.read_preprocess_of(model_dir).input_shape,
                      f"the model {model_dir}")
    runtime = bundle.resolve_runtime(p.runtime, info, model_dir)
    fp = rf.fingerprint("evaluate", upstream=[prep.fingerprint, info["model_sha256"]], params=[p], extra=[runtime])
    out = run / rf.METRICS
    if rf.is_current(out, fp, [run / rf.PROBS]):
        log.info("evaluate: %s is up to date; skipped", out)
        return rf.read_marker(out)
    b = bundle.load(model_dir, runtime)
    x, y = prep.x("test"), prep.y("test")
    if len(y) == 0:
        raise artifacts.StageError(f"{run}: the test split is empty; nothing to evaluate")
    # the same path as `pipeline predict` (the novelty columns only to compare the runtimes' familiar)
    got = Predictor(b, p.batch_size, novelty=b.runtime == bundle.ONNX)(x)
    probs = got.probs
    metrics = _scores(np.asarray(y), probs, b)
    metrics["runtime"] = {"used": b.runtime, **({"agreement_with_tensorflow": _agreement(model_dir, x, got, p)}
                                                if b.runtime == bundle.ONNX else {})}
    metrics.update({"model_sha256": info["model_sha256"], "model": info.get("model"),
                    "model_prepared_earlier": _prepared_earlier(info, prep, model_dir),
                    "params": params_mod.to_dict(p), "environment": environment()})
    # Per-image probabilities, in X_test order: the report's gallery and calibration use them.
    artifacts.save_npy(run / rf.PROBS, probs.astype(np.float32))
    metrics = rf.write_marker(out, fp, **metrics)  # last: metrics.json marks the evaluation finished
    log.info("evaluate: read %s, X_test.npy, y_test.npy from %s", model_dir, run)
    log.info("evaluate: wrote %s, %s", out, run / PROBS)
    if "map" in metrics:
        log.info("evaluate: mAP %.4f, F1 macro %.4f on %d test images -> %s", metrics["map"], metrics["f1_macro"],
                 len(y), out)
    else:
        log.info("evaluate: accuracy %.4f on %d test images -> %s", metrics["accuracy"], len(y), out)
    return metrics


def _prepared_earlier(info: dict[str, Any], prep: rf.Prepared, model_dir: Path) -> bool:
    """True (and said) when the model was trained on an earlier preparation of the run than the one evaluated."""
    earlier = info.get("prepared") not in (None, prep.fingerprint)
    if earlier:
        log.warning("evaluate: %s was trained on an earlier preparation of this run (the data or the review's "
                    "decisions changed since): these figures are of that model; make train to train on them", model_dir)
    return earlier


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    cli.add_params_option(parser)
    cli.add_runtime_option(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "evaluate")


def main(args: argparse.Namespace) -> int:
    """CLI: evaluate and print the summary table (``pipeline evaluate`` then writes the report)."""
    p = params_mod.load(args.params, "evaluate", Path(args.run).name)
    if args.runtime:
        p = dataclasses.replace(p, runtime=args.runtime)
    metrics = evaluate(Path(args.run), p)
    cli.result(format_table(metrics))
    return 0

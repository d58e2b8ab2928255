"""Evaluate: the model bundle on the prepared test split -> ``metrics.json``, a summary table and ``report.html``.

``metrics.json`` holds ``accuracy``, ``per_class`` {label: precision, recall,
f1, support}, ``confusion_matrix`` (rows = true, columns = predicted, in label
order), ``labels``, ``calibration`` {ece, ece_before, temperature} (the expected
calibration error on the test split with and without the bundle's temperature), the
bundle it measured and the environment;
``test_probs.npy`` the class probabilities of each test image (the report's
gallery and calibration plots come from it).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.model import calibrate
from pipeline.model.infer import predict_probs
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
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n": int(len(y_true)),
        "labels": labels,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A short plain-text summary table."""
    width = max(5, *(len(k) for k in metrics["per_class"]))
    lines = [f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>8d}")
    lines.append(f"accuracy: {metrics['accuracy']:.4f} on {metrics['n']} test images")
    return "\n".join(lines)


def evaluate(run: Path, p: EvaluateParams) -> dict[str, Any]:
    """Predict the test split with the run's bundle and write ``metrics.json``."""
    prep = rf.Prepared.open(run)
    model_dir = run / rf.BUNDLE
    rf.require(model_dir, bundle.MARKER, "train")
    info = bundle.read_info(model_dir)
    prep.check_bundle(bundle.read_labels(model_dir), bundle.read_preprocess_of(model_dir).input_shape,
                      f"the model {model_dir}")
    fp = rf.fingerprint("evaluate", upstream=[prep.fingerprint, info["model_sha256"]], params=[p])
    out = run / rf.METRICS
    if rf.is_current(out, fp, [run / rf.PROBS]):
        log.info("evaluate: %s is up to date; skipped", out)
        return rf.read_marker(out)
    b = bundle.load(model_dir)
    x, y = prep.x("test"), prep.y("test")
    if len(y) == 0:
        raise artifacts.StageError(f"{run}: the test split is empty; nothing to evaluate")
    probs = predict_probs(b, x, p.batch_size)  # the same path as `pipeline predict`
    metrics = compute_metrics(y, probs.argmax(axis=1), b.labels)
    t = float((b.calibration or {}).get("temperature", 1.0))
    metrics["calibration"] = {"ece": calibrate.ece(probs, y), "temperature": t, "bins": calibrate.BINS,
                              "ece_before": calibrate.ece(calibrate.uncalibrated(probs, t), y)}
    metrics.update({"model_sha256": info["model_sha256"], "model": info.get("model"),
                    "params": params_mod.to_dict(p), "environment": environment()})
    # Per-image probabilities, in X_test order: the report's gallery and calibration use them.
    artifacts.save_npy(run / rf.PROBS, probs.astype(np.float32))
    metrics = rf.write_marker(out, fp, **metrics)  # last: metrics.json marks the evaluation finished
    log.info("evaluate: read %s, X_test.npy, y_test.npy from %s", model_dir, run)
    log.info("evaluate: wrote %s, %s", out, run / PROBS)
    log.info("evaluate: accuracy %.4f on %d test images -> %s", metrics["accuracy"], len(y), out)
    return metrics


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "evaluate")


def main(args: argparse.Namespace) -> int:
    """CLI: evaluate and print the summary table (``pipeline evaluate`` then writes the report)."""
    metrics = evaluate(Path(args.run), params_mod.load(args.params, "evaluate", Path(args.run).name))
    cli.result(format_table(metrics))
    return 0

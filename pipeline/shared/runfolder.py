"""The run folder's catalog: the name of every artifact and marker, and one freshness rule.

Every stage writes into ``runs/<name>/``; the names below are the only place they
are spelt. A stage's *marker* (a JSON file written last) records the fingerprint of
what made it; :func:`is_current` is the one rule every stage uses to decide that
its outputs are up to date, and :func:`require` the one way a stage refuses a run
folder whose earlier stage has not finished.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.shared import artifacts
from pipeline.shared.errors import StageError

SPLITS = ("train", "val", "test")

# prepare
PREPARE = "prepare.json"          # marker
MANIFEST = "manifest.csv"
REJECTED = "rejected.csv"
LABELS = "labels.json"
DATASET = "dataset.json"
SAMPLES = "samples.png"
CORRECTIONS = "corrections.csv"   # the user's relabel/exclude list, applied by prepare
# train
BUNDLE = "model"                  # the bundle folder; its marker is bundle.MARKER
HISTORY = "history.csv"
CHECKPOINT = "checkpoints/best.keras"
CHECKPOINTS = "checkpoints"
BACKUP = "train_backup"
BACKUP_STATE = "train_backup/state.json"  # marker of a resumable backup
TENSORBOARD = "tensorboard"
# evaluate / report
METRICS = "metrics.json"          # marker
PROBS = "test_probs.npy"
REPORT = "report.html"
REPORT_MARKER = "report.json"     # marker
REPORT_PNGS = {"counts": "class_counts.png", "samples": SAMPLES, "curves": "curves.png",
               "confusion": "confusion_matrix.png", "misclassified": "misclassified.png",
               "calibration": "calibration.png", "risk": "risk_coverage.png", "suspects": "suspects.png"}
# suspects
SUSPECTS = "suspects.csv"
SUSPECTS_MARKER = "suspects.json"  # marker
SUSPECTS_PNG = "suspects.png"
SUSPECTS_WORK = "suspects_folds"   # finished folds, kept so a killed run resumes
# apply
PREDICTIONS = "predictions"        # + .csv / .jsonl
PREVIEW = "preview.png"
EXPORT = "export"
LOGS = "logs"


def x_file(split: str) -> str:
    """The prepared images of a split."""
    return f"X_{split}.npy"


def y_file(split: str) -> str:
    """The label indices of a split."""
    return f"y_{split}.npy"


def prepared_arrays() -> list[str]:
    """Every prepared array, in split order."""
    return [name for s in SPLITS for name in (x_file(s), y_file(s))]


def read_marker(path: Path) -> dict[str, Any]:
    """A marker's content; {} when it is missing or unreadable (then nothing is current)."""
    if not path.is_file():
        return {}
    try:
        content = artifacts.read_json(path, "marker")
    except StageError:
        return {}
    return content if isinstance(content, dict) else {}


def is_current(marker: Path, fingerprint: str, outputs: Iterable[Path] = ()) -> bool:
    """The freshness rule: ``marker`` records ``fingerprint`` and every one of ``outputs`` exists."""
    return read_marker(marker).get("fingerprint") == fingerprint and all(Path(p).exists() for p in outputs)


def write_marker(marker: Path, fingerprint: str, **content: Any) -> dict[str, Any]:
    """Write a marker (atomically, last of a stage's outputs); return what it holds."""
    record = {**content, "fingerprint": fingerprint}
    artifacts.write_json(marker, record)
    return record


def require(run: Path, marker: str, stage: str) -> dict[str, Any]:
    """The marker of an earlier stage; a StageError naming the command to run when it is absent."""
    path = run / marker
    if not path.is_file():
        raise StageError(f"{run} has no finished {stage} stage ({marker} missing); run `make {stage}` "
                         f"(python -m pipeline {stage}) first")
    return artifacts.read_json(path, f"{stage} marker")

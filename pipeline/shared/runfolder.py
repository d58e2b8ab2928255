"""The run folder's catalog: the name of every artifact and marker, the one freshness rule, the one
fingerprint recipe, the one default-run rule, and :class:`Prepared`, the typed reader of a finished
prepare stage that every later stage uses.

Every stage writes into ``runs/<name>/``; the names below are the only place they are spelt. A
stage's *marker* (a JSON file written last) records the fingerprint of what made it;
:func:`is_current` is the one rule every stage uses to decide that its outputs are up to date,
:func:`fingerprint` the one way a stage declares what its outputs depend on, and :func:`require`
the one way a stage refuses a run folder whose earlier stage has not finished.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.shared import artifacts
from pipeline.shared.errors import StageError, UserError
from pipeline.shared.params import IngestParams, PreprocessParams, from_dict

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

RUNS = Path("runs")               # where run folders go by default (relative to the working folder)
LAST_RUN = RUNS / ".last-run"     # the run the last `prepare` wrote: the default of every later stage
# prepare
PREPARE = "prepare.json"          # marker
MANIFEST = "manifest.csv"
MULTI_JOIN = ";"                  # a multi-label image's labels in manifest.csv and predictions, joined by this
REJECTED = "rejected.csv"
LABELS = "labels.json"
DATASET = "dataset.json"
SAMPLES = "samples.png"
CORRECTIONS = "corrections.csv"   # the user's relabel/exclude/keep decisions, applied by prepare
LABELED = "labeled.csv"           # labels given to new (unlabeled) images: more training data at the next prepare
REVIEW_LOG = "review_log.jsonl"   # every review decision in order (undo, across restarts)
QUALITY = "quality.csv"           # the audit's image-quality issues: path,label,split,issue,score
SIMILAR = "similar.csv"           # copies and look-alikes: group,path,label,split,kind,similarity
OUTLIERS = "outliers.csv"         # images unlike their class: path,label,split,score,z
# train
BUNDLE = "model"                  # the bundle folder (its files: pipeline.shared.bundle)
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
               "calibration": "calibration.png", "risk": "risk_coverage.png", "suspects": "suspects.png",
               "pr": "pr_curves.png", "errors": "label_errors.png"}  # (the last two: multi-label runs)
# suspects
SUSPECTS = "suspects.csv"
SUSPECTS_MARKER = "suspects.json"  # marker
SUSPECTS_PNG = "suspects.png"
SUSPECTS_WORK = "suspects_folds"   # finished folds, kept so a killed run resumes
SUSPECTS_RANKED = "suspects_ranked.csv"  # every checked image, most doubtful first (the review page's queue)
# apply
PREDICTIONS = "predictions"        # + .csv / .jsonl
PREVIEW = "preview.png"
EXPORT = "export"
EXPORT_MARKER = "export.json"   # marker, in each export folder
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


# ---------------------------------------------------------------- markers and freshness
def class_figures(m: dict[str, Any]) -> tuple[str, str, str]:
    """A class's precision, recall and F1 as shown: "n/a" where undefined (recall and F1 without test images of
    it; precision when nothing was predicted as it either: test images predicted as a class without any of its
    own give it precision 0, a mistake worth seeing)."""
    if m["support"]:
        return f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}"
    return (f"{m['precision']:.4f}" if m.get("predicted") else "n/a"), "n/a", "n/a"


def macro_f1(per_class: dict[str, dict[str, Any]]) -> float | None:
    """The macro F1 of ``metrics.json``'s per-class (or per-label) figures: the mean F1 of the classes with
    test images (a class without any has no F1: counted as 0 it would pull the mean down for nothing);
    None when no class has any."""
    f1 = [m["f1"] for m in per_class.values() if m.get("support", 1) > 0]
    return sum(f1) / len(f1) if f1 else None


def read_history(run: Path) -> list[dict[str, float]]:
    """``history.csv`` of a run, a dict of numbers per epoch (empty cells left out; no file: no rows)."""
    if not (run / HISTORY).is_file():
        return []
    with open(run / HISTORY, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


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
                         f"(pipeline {stage}) first")
    return artifacts.read_json(path, f"{stage} marker")


def _plain(value: Any) -> Any:
    """A params dataclass as a dict (what fingerprints hash); anything else as it is."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def fingerprint(stage: str, *, upstream: Iterable[str | None] = (), params: Iterable[Any] = (),
                files: Iterable[Path] = (), extra: Iterable[Any] = ()) -> str:
    """A stage's fingerprint from its declared dependencies, like a ``dvc.yaml`` stage: the
    fingerprints of the stages it reads (``upstream``), its params (dataclasses or dicts), the
    content of ``files`` (None for a missing one), anything else that changes its outputs
    (``extra``), and the package version."""
    hashes = [artifacts.sha256_file(f) if Path(f).is_file() else None for f in files]
    return artifacts.fingerprint(stage, __version__, list(upstream), [_plain(p) for p in params], hashes,
                                 list(extra))


# ---------------------------------------------------------------- which run folder
def default_run(data: str | os.PathLike) -> Path:
    """The run folder of a dataset: ``runs/<name>``, the name of the folder ``DATA`` is, or for a
    mapping file (``pets/labels.csv``) the folder holding it, so that every dataset whose mapping
    file is called ``labels.csv`` gets its own run. ``.`` and ``..`` are named as the folders they are."""
    path = Path(os.path.abspath(str(data)))
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return RUNS / (path.parent.name or path.stem)
    return RUNS / (path.name or "root")


def remember_run(run: Path) -> None:
    """Record ``run`` as the last prepared run (the default of the stages that follow)."""
    try:
        artifacts.write_text(LAST_RUN, f"{run}\n")
    except OSError as exc:  # a read-only working folder: the default is simply not remembered
        log.debug("cannot record the last run in %s: %s", LAST_RUN, exc)


def stale_suspects(run: Path) -> bool:
    """Whether ``suspects.csv`` checked an earlier preparation of the run (its labels may have changed since:
    a review's decisions, new data). Unknown (a marker from before it recorded this): False."""
    checked = read_marker(run / SUSPECTS_MARKER).get("prepared")
    return bool(checked) and checked != read_marker(run / PREPARE).get("fingerprint")


def resolve_run(run: str | os.PathLike | None, data: str | os.PathLike | None = None,
                stage: str = "") -> Path:
    """The one default-run rule: ``--run`` when given; else the run of ``--data``; else the last run
    ``prepare`` wrote (said in one log line); else a clear error."""
    if run:
        return Path(run)
    if data:
        return default_run(data)
    if LAST_RUN.is_file():
        last = Path(LAST_RUN.read_text(encoding="utf-8").strip())
        if last.is_dir():
            log.info("%s: using %s, the last prepared run (RUN=... or DATA=... picks another)", stage or "run", last)
            return last
    raise UserError("which run? no run has been prepared here yet: run `make prepare DATA=<your images>` "
                    "first (or give RUN=runs/<name>; on the command line --run, or --model for a model bundle)")


# ---------------------------------------------------------------- the prepared run, typed
def labels_from_map(mapping: Any, where: str) -> list[str]:
    """Validate a label map {name: index} (indices 0..n-1) and return names by index."""
    if not isinstance(mapping, dict) or not mapping:
        raise StageError(f"{where}: label map must be a non-empty JSON object")
    by_index = sorted(mapping.items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else -1)
    if [i for _, i in by_index] != list(range(len(mapping))):
        raise StageError(f"{where}: label indices must be 0..{len(mapping) - 1}")
    return [name for name, _ in by_index]


def read_preprocess(config: Any, where: str = "preprocessing config") -> PreprocessParams:
    """A recorded (resolved) preprocessing config, validated."""
    try:
        cfg = from_dict(PreprocessParams, "preprocess", config)
    except (ValueError, TypeError) as exc:
        raise StageError(f"{where}: bad preprocessing config: {exc}") from None
    if not cfg.resolved:
        raise StageError(f'{where}: color and size must be resolved, not "auto"')
    return cfg


@dataclass(frozen=True)
class ManifestRow:
    """One row of ``manifest.csv``."""

    path: str
    label: str
    split: str
    note: str = ""


@dataclass(frozen=True)
class Prepared:
    """A finished prepare stage, read once: what every later stage needs of it."""

    run: Path
    fingerprint: str
    labels: list[str]              # by class index
    preprocess: PreprocessParams   # resolved: what the bundle records and predict applies
    seed: int                      # the split seed
    imbalance_ratio: float         # the audit's threshold (train's class weights follow it)
    choices: dict[str, Any]        # the settings "auto" resolved to, and why
    hflip: dict[str, Any] | None   # the class-symmetry facts behind [augment] hflip = "auto"
    params: dict[str, Any]         # [prepare] as recorded
    marker: dict[str, Any]

    @classmethod
    def open(cls, run: str | os.PathLike) -> "Prepared":
        """Read the prepare marker, label map and audit choices (a clear error when prepare has not finished)."""
        run = Path(run)
        marker = require(run, PREPARE, "prepare")
        labels = labels_from_map(artifacts.read_json(run / LABELS, "label map"), str(run / LABELS))
        dataset = artifacts.read_json(run / DATASET, "dataset summary") if (run / DATASET).is_file() else {}
        choices = dataset.get("choices", {})
        return cls(run, marker.get("fingerprint", ""), labels,
                   read_preprocess(marker.get("preprocess"), str(run / PREPARE)),
                   int(marker.get("params", {}).get("seed", 0)),
                   float(marker.get("ingest", {}).get("imbalance_ratio", IngestParams().imbalance_ratio)),
                   {**marker.get("preprocess_choices", {}), **choices}, choices.get("hflip"),
                   marker.get("params", {}), marker)

    @property
    def multi(self) -> bool:
        """Several labels per image (``[ingest] task`` resolved to "multi"): ``y`` holds multi-hot rows."""
        return self.marker.get("task") == "multi"

    @property
    def label_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def x(self, split: str, mmap: bool = True) -> np.ndarray:
        """The prepared images of a split (memory-mapped unless ``mmap=False``)."""
        return artifacts.load_npy(self.run / x_file(split), f"prepared {split} images", mmap=mmap)

    def y(self, split: str) -> np.ndarray:
        """The label indices of a split."""
        return np.asarray(artifacts.load_npy(self.run / y_file(split), f"prepared {split} labels"))

    def manifest(self) -> list[ManifestRow]:
        """The rows of ``manifest.csv``, in the prepared arrays' order within each split."""
        with open(self.run / MANIFEST, newline="", encoding="utf-8") as fh:
            return [ManifestRow(r["path"], r["label"], r["split"], r.get("note") or "") for r in csv.DictReader(fh)]

    def paths(self, *splits: str) -> list[str]:
        """The files of the given splits' rows, in array order (split after split)."""
        rows = self.manifest()
        return [r.path for s in splits for r in rows if r.split == s]

    def dataset(self) -> dict[str, Any] | None:
        """``dataset.json`` (None for a run prepared by an older version without it)."""
        return artifacts.read_json(self.run / DATASET, "dataset summary") if (self.run / DATASET).is_file() else None

    def check_bundle(self, labels: list[str], input_shape: tuple[int, ...], where: str) -> None:
        """Refuse a model whose label map or input shape differs from this run's (evaluate, suspects,
        report and predict --resume pair a bundle with a run)."""
        if list(labels) != self.labels:
            raise StageError(f"{where} was trained on other labels than the run {self.run} holds: the model has "
                             f"{_short(labels)}, the run {_short(self.labels)}; retrain it on this run "
                             f"(make train RUN={self.run}) or use the run it was trained on")
        if tuple(input_shape) != tuple(self.preprocess.input_shape):
            raise StageError(f"{where} takes images of shape {tuple(input_shape)}, but the run {self.run} "
                             f"prepares them as {tuple(self.preprocess.input_shape)}; retrain it on this run "
                             f"(make train RUN={self.run}) or use the run it was trained on")


def _short(labels: list[str], n: int = 8) -> str:
    shown = ", ".join(repr(x) for x in labels[:n])
    return f"{len(labels)} labels [{shown}{', ...' if len(labels) > n else ''}]"


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` is a run folder that prepare finished."""
    return (folder / PREPARE).is_file()

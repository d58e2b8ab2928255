"""Report: one self-contained ``report.html`` for a run (images inline, no network), plus its PNGs.

Sections: warnings; the dataset (images per class and split, samples, rejected
files, duplicates and leakage); training (loss/accuracy curves, learning rate,
time per epoch, best epoch); test results (accuracy, per-class table,
confusion matrix, most confused pairs, worst misclassified images,
confidence histogram and reliability diagram); the settings and the
environment that made it. ``make evaluate`` writes it; ``make report``
rewrites it from the run folder alone.
"""
from __future__ import annotations

import argparse
import csv
import logging
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.data.inputs import original
from pipeline.model import calibrate, recipe
from pipeline.model.explain import occlusion
from pipeline.model.infer import Predictor
from pipeline.shared import artifacts, bundle, cli, plots
from pipeline.shared import runfolder as rf
from pipeline.stages.report import multi, sections
from pipeline.stages.report.sections import (dataset_section, esc, results_section, review_section,
                                             settings_section, suspects_section, training_section)

log = logging.getLogger(__name__)

REPORT = rf.REPORT
# The page skeleton and its CSS. string.Template, not Jinja2: the sections are built (and
# escaped) in Python, so the template needs no logic, and the package no new dependency.
TEMPLATE = Path(__file__).with_name("template.html")
WORST = 24  # misclassified images in the gallery
LOW_ACCURACY = 0.5


# ---------------------------------------------------------------- reading the run folder
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _json_or_none(path: Path, what: str) -> Any:
    return artifacts.read_json(path, what) if path.is_file() else None


# What the report shows: a change to any of these files rewrites it.
SOURCES = (rf.METRICS, rf.PROBS, rf.HISTORY, rf.DATASET, rf.PREPARE, f"{rf.BUNDLE}/{bundle.MARKER}",
           rf.SUSPECTS_MARKER)


# ---------------------------------------------------------------- analysis (pure)
def confused_pairs(cm: np.ndarray, labels: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    cm = np.asarray(cm)
    pairs = [(int(cm[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and cm[i, j]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    support = cm.sum(axis=1)
    return [{"true": labels[i], "predicted": labels[j], "count": n, "share": n / max(int(support[i]), 1)}
            for n, i, j in pairs[:top]]


def worst_misclassified(probs: np.ndarray, y: np.ndarray, top: int = WORST) -> np.ndarray:
    """Indices of wrong predictions, most confident first (the model's worst mistakes)."""
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:top]


def warnings_for(metrics: dict[str, Any], dataset: dict[str, Any] | None, info: dict[str, Any],
                 history: list[dict[str, float]] | None = None) -> list[str]:
    """The audit's warnings plus what evaluation and training reveal."""
    out = list((dataset or {}).get("warnings", []))
    acc, n_labels = metrics["accuracy"], len(metrics["labels"])
    if acc < LOW_ACCURACY:
        out.append(f"low accuracy: {acc:.1%} on the test split (chance is {1 / n_labels:.1%}); "
                   "more data per class, other preprocessing or more epochs may help")
    by_heart = recipe.learned_by_heart(history or [], n_labels, (info.get("input_shape") or [0])[-1] == 3)
    if by_heart:
        out.append(by_heart)
    empty = [name for name, m in metrics["per_class"].items() if m["support"] == 0]
    if empty and not any(w.startswith("no test images of") for w in out):  # prepare's own says it already
        out.append(f"no test images for: {', '.join(empty)} (their precision/recall mean nothing)")
    if metrics.get("model_prepared_earlier"):
        out.append("the model was trained on an earlier preparation of this run (the data or the review's decisions "
                   "changed since): make train, then make evaluate")
    if info.get("monitor") == "loss":
        out.append("no validation split: early stopping and the best checkpoint followed the training loss")
    return out + planned(info)


def planned(info: dict[str, Any]) -> list[str]:
    """What the training plan warned about (a training far too short, say: why a model is weak)."""
    return ["train: " + w for w in (info.get("plan") or {}).get("warnings", [])]


# ---------------------------------------------------------------- the stage
@dataclass
class RunData:
    """Everything the report shows, read from the run folder."""

    run: Path
    prep: rf.Prepared
    metrics: dict[str, Any]
    labels: list[str]
    info: dict[str, Any]
    dataset: dict[str, Any] | None
    history: list[dict[str, float]]
    probs: np.ndarray
    y: np.ndarray
    x: np.ndarray
    names: list[str]


def _read_run(run: Path) -> RunData:
    """Read what an evaluated run folder holds (a clear error when evaluation has not finished)."""
    if not (run / rf.METRICS).is_file() or not (run / rf.PROBS).is_file():
        raise artifacts.StageError(f"{run} has no finished evaluation ({rf.METRICS}, {rf.PROBS}); "
                                   "run `make evaluate` first")
    prep = rf.Prepared.open(run)
    metrics = artifacts.read_json(run / rf.METRICS, "metrics")
    model_dir = run / rf.BUNDLE
    prep.check_bundle(bundle.read_labels(model_dir), bundle.read_preprocess_of(model_dir).input_shape,
                      f"the model {model_dir}")
    probs = artifacts.load_npy(run / rf.PROBS, "test probabilities", mmap=False)
    y = prep.y("test")
    if len(probs) != len(y) or list(metrics.get("labels", [])) != prep.labels:
        raise artifacts.StageError(f"{run}: {rf.METRICS} and {rf.PROBS} were made before the run changed "
                                   f"({len(probs)} rows for {len(y)} test images); re-run `make evaluate`")
    names = prep.paths("test")
    return RunData(run, prep, metrics, prep.labels, artifacts.read_json(model_dir / bundle.MARKER, "model bundle marker"),
                   prep.dataset(), rf.read_history(run), probs, y, prep.x("test"),
                   names if len(names) == len(y) else [f"test #{i}" for i in range(len(y))])


@dataclass
class Figures:
    """The report's PNGs (None: not available) and the tables drawn beside them."""

    pngs: dict[str, bytes | None]
    gallery: list[list[Any]]
    calibration: dict[str, Any] | None
    suspects: dict[str, Any] | None = None


def _samples_png(d: RunData) -> bytes:
    if (d.run / rf.SAMPLES).is_file():  # written by prepare
        return (d.run / rf.SAMPLES).read_bytes()
    return plots.sample_grid(d.prep.x("train"), d.prep.y("train"), d.labels)


def _saliency(d: RunData, rows: np.ndarray, classes: np.ndarray) -> list[np.ndarray] | None:
    """Occlusion maps of the given test images for the given classes (None when the bundle cannot load)."""
    try:
        predictor = Predictor(bundle.load(d.run / rf.BUNDLE), 256)
    except artifacts.StageError as exc:
        log.warning("report: no saliency maps (%s)", exc)
        return None
    return [occlusion(predictor, np.asarray(d.x[i]), int(c)) for i, c in zip(rows, classes)]


def _figures(d: RunData) -> Figures:
    """Draw every figure of the report."""
    pngs: dict[str, bytes | None] = {
        "counts": plots.class_counts(d.dataset["counts"]) if d.dataset else None,
        "samples": _samples_png(d),
        "curves": plots.curves(d.history, d.info.get("best_epoch")) if d.history else None}
    if d.metrics.get("task") == "multi":
        more, gallery = multi.figures(d.x, d.y, d.probs, d.labels, d.metrics, d.names)
        if (d.run / rf.SUSPECTS_PNG).is_file():
            more["suspects"] = (d.run / rf.SUSPECTS_PNG).read_bytes()
        return Figures({**pngs, **more}, gallery, None,
                       _json_or_none(d.run / rf.SUSPECTS_MARKER, "suspects marker"))
    pngs["confusion"] = plots.confusion(np.array(d.metrics["confusion_matrix"]), d.labels)
    probs, y, labels = d.probs, d.y, d.labels
    worst = worst_misclassified(probs, y)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    second = np.argsort(-probs, axis=1)[:, 1] if probs.shape[1] > 1 else pred
    pngs["misclassified"] = plots.misclassified(
        np.asarray(d.x[worst]), [labels[y[i]] for i in worst], [labels[pred[i]] for i in worst],
        [float(conf[i]) for i in worst], [d.names[i] for i in worst],
        overlays=_saliency(d, worst, pred[worst])) if len(worst) else None
    gallery = [[d.names[i], labels[y[i]], labels[pred[i]], f"{conf[i]:.3f}",
                f"{labels[second[i]]} ({probs[i, second[i]]:.3f})"] for i in worst]
    cal = _json_or_none(d.run / rf.BUNDLE / bundle.CALIBRATION, "calibration") or {}
    before = calibrate.uncalibrated(probs, float(cal["temperature"])) if "temperature" in cal else None
    pngs["calibration"], calib = plots.calibration(probs, y, before) if len(y) else (None, None)
    if calib is not None and "val_images" in cal:
        calib["val_images"] = int(cal["val_images"])  # how much to trust the temperature
    table = calibrate.risk_coverage(probs, y) if len(y) else None
    cut = calibrate.threshold_for(cal["risk_coverage"], 0.99)[0] if cal.get("risk_coverage") else None
    pngs["risk"] = plots.risk_coverage(table, cut) if table else None
    record = _json_or_none(d.run / rf.SUSPECTS_MARKER, "suspects marker")
    if record is not None:
        record["stale"] = rf.stale_suspects(d.run)
    if (d.run / rf.SUSPECTS_PNG).is_file():
        pngs["suspects"] = (d.run / rf.SUSPECTS_PNG).read_bytes()
    return Figures(pngs, gallery, calib, record)


def _settings(d: RunData) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved params of every stage, and the environments of training and evaluation."""
    prepare_marker = d.prep.marker
    bundle_params = _json_or_none(d.run / rf.BUNDLE / bundle.PARAMS, "bundle params") or {}
    params = {"ingest": prepare_marker.get("ingest") or {}, "prepare": prepare_marker.get("params") or {},
              "preprocess": prepare_marker.get("preprocess") or {}, "train": bundle_params.get("train") or {},
              "augment": bundle_params.get("augment") or {}, "evaluate": d.metrics.get("params") or {}}
    envs = {"train": d.info.get("environment") or {}, "evaluate": d.metrics.get("environment") or {}}
    return params, envs


SECTIONS = (("dataset", "Dataset"), ("training", "Training"), ("results", "Test results"),
            ("suspects", "Label errors"), ("review", "Review"), ("settings", "Settings"))


def _file_thumbnails(d: RunData) -> tuple[dict[str, bytes | None], dict[str, str]]:
    """Thumbnails of the rejected, outlier and poor-quality files the dataset section shows (as a person sees them,
    transparent parts on the run's background), and why the others cannot be shown."""
    dataset = d.dataset or {}
    root = Path(dataset.get("root") or dataset.get("data") or ".")
    root = root.parent if root.is_file() else root
    shown = [r["path"] for r in _read_csv(d.run / rf.REJECTED)[:sections.REJECTED_SHOWN]]
    shown += sections.shown_files(dataset)
    files: dict[str, bytes | None] = {}
    why: dict[str, str] = {}
    for path in dict.fromkeys(shown):
        inside = _inside(root, path)
        arr, reason = ((None, "outside the dataset folder: not shown") if inside is None else
                       original(inside, d.prep.preprocess.background, 2 * plots.THUMB))
        files[path] = plots.thumbnail_png(arr, plots.THUMB) if arr is not None else None
        if arr is None:
            why[path] = reason
    return files, why


def _inside(root: Path, path: str) -> Path | None:
    """``root / path`` when it stays inside ``root`` once resolved (symlinks too), else None: a report is
    shared, so it shows no file from outside the dataset (a mapping file's ``../`` row, an absolute path)."""
    try:
        real, base = (root / path).resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return real if real.is_relative_to(base) else None


def render(d: RunData, figs: Figures) -> str:
    """The whole page, from the template."""
    is_multi = d.metrics.get("task") == "multi"
    warnings = (d.dataset or {}).get("warnings", []) + planned(d.info) if is_multi else \
        warnings_for(d.metrics, d.dataset, d.info, d.history)
    params, envs = _settings(d)
    calibration = _json_or_none(d.run / rf.BUNDLE / bundle.CALIBRATION, "calibration")
    if is_multi:
        warnings = warnings + multi.few_positives(calibration, d.labels)
    files, unseen = _file_thumbnails(d)
    results = (multi.results_section(d.metrics, d.dataset, figs.gallery, figs.pngs) if is_multi else
               results_section(d.metrics, confused_pairs(np.array(d.metrics["confusion_matrix"]), d.labels),
                               figs.gallery, figs.calibration, figs.pngs))
    parts = [dataset_section(d.dataset, _read_csv(d.run / rf.REJECTED), figs.pngs, files, unseen),
             training_section(d.history, d.info, figs.pngs, calibration), results,
             suspects_section(figs.suspects, figs.pngs), review_section(d.dataset, d.metrics),
             settings_section(params, envs)]
    score = (f"{d.metrics['map']:.2%} test mAP, every label right on {d.metrics['subset_accuracy']:.2%} of the images"
             if is_multi else f"{d.metrics['accuracy']:.2%} test accuracy")
    title = f"{d.run.name}: {d.info.get('model', 'model')} — {score}"
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=esc(title), run=esc(d.run), model=esc(d.info.get("model", "?")), n_test=d.metrics["n"],
        n_classes=f"{len(d.labels)} {'labels' if is_multi else 'classes'}", written=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        nav="".join(f'<a href="#{anchor}">{name}</a>' for anchor, name in SECTIONS),
        warnings=("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings)
                  + "</ul></div>") if warnings else "",
        sections="\n".join(parts))


def build_report(run: Path, force: bool = False) -> Path:
    """Write ``report.html`` and its PNGs into ``run``; skipped when its inputs are unchanged."""
    out, marker = run / rf.REPORT, run / rf.REPORT_MARKER
    fp = rf.fingerprint("report", files=[run / f for f in SOURCES])
    previous = rf.read_marker(marker).get("pngs", [])
    if not force and rf.is_current(marker, fp, [out, *(run / name for name in previous)]):
        log.info("report: %s is up to date; skipped", out)
        return out
    t0 = time.perf_counter()
    d = _read_run(run)
    if d.metrics.get("task") != "multi":  # what evaluation and training reveal (prepare said the audit's own)
        for w in warnings_for(d.metrics, None, d.info, d.history):
            log.warning("report: %s", w)
    figs = _figures(d)
    written = []
    for key, png in figs.pngs.items():
        name = rf.REPORT_PNGS[key]
        if png is not None and not (key in ("samples", "suspects") and (run / name).is_file()):
            artifacts.write_bytes(run / name, png)
        if png is not None:
            written.append(name)
    artifacts.write_text(out, render(d, figs))
    rf.write_marker(marker, fp, stage="report", version=__version__, pngs=written)
    log.info("report: read %s in %s", ", ".join(f for f in SOURCES if (run / f).is_file()), run)
    log.info("report: wrote %s, %s and %s (%.1f s)", out, marker, ", ".join(written), time.perf_counter() - t0)
    return out


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "report")


def main(args: argparse.Namespace) -> int:
    """CLI: (re)write the report of an evaluated run (after ``evaluate`` or ``suspects``: only when its
    inputs changed, and only once the run is evaluated)."""
    if getattr(args, "follow_up", False) and not (Path(args.run) / rf.METRICS).is_file():
        log.info("report: not written yet: it needs `make evaluate` first")
        return 0
    cli.result(f"report: {build_report(Path(args.run), force=getattr(args, 'force', True))}")
    return 0

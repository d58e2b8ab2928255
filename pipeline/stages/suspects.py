"""Suspects: images whose label is probably wrong, found by cross-validation and confident learning.

    pipeline suspects --run runs/<name> [--folds 5] [--write-corrections]

Every train and val image gets out-of-sample class probabilities: the images are cut
into k stratified, seeded folds, and each fold is predicted by a model trained on the
others (a short training with the run's own recipe, ``[suspects] step_budget`` steps).
A finished fold is kept in ``suspects_folds/``, so a killed run resumes at the next
one. Confident learning (:mod:`pipeline.model.confident`) then flags the images whose label
the probabilities contradict. Writes ``suspects.csv`` (``path,label,suggested,score,reason``:
only the flagged images, most suspicious first; ``score`` is how sure the models are
that the label is wrong, 1 - p(given label)), the gallery ``suspects.png``, and the marker
``suspects.json``; ``make report`` shows them. ``--write-corrections`` pre-fills
``corrections.csv`` with the suggestions, for you to review before the next ``make prepare``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.model import confident
from pipeline.model.fitting import fit_on_arrays
from pipeline.model.infer import Predictor
from pipeline.shared import artifacts, bundle, cli, plots
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError
from pipeline.shared.params import AugmentParams, SuspectsParams, TrainParams

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "suggested", "score", "reason")


# ---------------------------------------------------------------- folds
def folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of each of ``k`` stratified, seeded folds (a class smaller than k: fewer folds hold it)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k_eff = int(min(k, max(2, counts[counts > 0].min()))) if len(counts) else k
    if k_eff < k:
        log.warning("suspects: the smallest class has %d images: %d folds instead of %d", counts[counts > 0].min(),
                    k_eff, k)
    splitter = StratifiedKFold(n_splits=k_eff, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(y)), y)]


def fold_probs(x: np.ndarray, y: np.ndarray, held: np.ndarray, p: TrainParams, aug: AugmentParams,
               prep: rf.Prepared, desc: str) -> np.ndarray:
    """Train on everything but ``held`` (the run's recipe, ``p.step_budget`` steps), predict ``held``."""
    keep = np.setdiff1d(np.arange(len(y)), held)
    model = fit_on_arrays(np.asarray(x[keep]), y[keep], p, aug, len(prep.labels), prep.hflip, prep.imbalance_ratio,
                          desc)
    return Predictor(bundle.Bundle(model, prep.labels, prep.preprocess, {}), 1024)(np.asarray(x[held])).probs


# ---------------------------------------------------------------- the stage
def _load(prep: rf.Prepared) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The train+val images and labels, and their manifest paths (same order)."""
    x = np.concatenate([prep.x(s, mmap=False) for s in ("train", "val")])
    y = np.concatenate([prep.y(s) for s in ("train", "val")])
    paths = prep.paths("train", "val")
    if len(paths) != len(y):
        raise artifacts.StageError(f"{prep.run}: the manifest does not match the prepared arrays; re-run `make prepare`")
    if len(np.unique(y)) < 2:
        raise UserError(f"{prep.run}: the train and val splits hold fewer than 2 classes; nothing to cross-check")
    return x, y, paths


def _probabilities(prep: rf.Prepared, x: np.ndarray, y: np.ndarray, fp: str, sp: SuspectsParams, p: TrainParams,
                   aug: AugmentParams) -> np.ndarray:
    """Out-of-fold probabilities of every image; finished folds are read back, the others trained."""
    work = prep.run / rf.SUSPECTS_WORK
    work.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(work)
    held_out = folds(y, sp.folds, prep.seed)
    probs = np.zeros((len(y), len(prep.labels)), np.float32)
    for k in tqdm(range(len(held_out)), desc="suspects: folds", unit="fold"):
        held, name = held_out[k], f"fold{k + 1}of{len(held_out)}"
        if rf.is_current(work / f"{name}.json", fp, [work / f"{name}.npy"]):
            log.info("suspects: %s done before; kept", name)
            probs[held] = artifacts.load_npy(work / f"{name}.npy", "fold probabilities", mmap=False)
            continue
        t0 = time.perf_counter()
        probs[held] = fold_probs(x, y, held, p, aug, prep, name)
        artifacts.save_npy(work / f"{name}.npy", probs[held])
        rf.write_marker(work / f"{name}.json", fp, fold=k + 1, folds=len(held_out), images=int(len(held)),
                        seconds=round(time.perf_counter() - t0, 1))
        log.info("suspects: %s: %d images in %.0f s", name, len(held), time.perf_counter() - t0)
    return probs


def rows_for(issues: confident.Issues, probs: np.ndarray, y: np.ndarray, labels: list[str],
             paths: list[str]) -> list[dict[str, Any]]:
    """One row per flagged image, most suspicious first."""
    out = []
    for i, s in zip(issues.index.tolist(), issues.suggested.tolist()):
        given, score = labels[y[i]], 1.0 - float(probs[i, y[i]])
        out.append({"path": paths[i], "label": given, "suggested": labels[s], "score": round(score, 4),
                    "reason": f"cross-validated models: {labels[s]!r} {probs[i, s]:.2f}, "
                              f"given {given!r} {probs[i, y[i]]:.2f}"})
    return out


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _gallery(run: Path, x: np.ndarray, issues: confident.Issues, rows: list[dict[str, Any]], n: int) -> None:
    shown = issues.index[:n]
    if not len(shown):
        (run / rf.SUSPECTS_PNG).unlink(missing_ok=True)
        return
    titles = [f"{r['label'][:6]} → {r['suggested'][:6]}\n{r['score']:.2f}" for r in rows[:n]]
    png = plots.gallery(np.asarray(x[shown]), titles, [r["path"] for r in rows[:n]],
                        "Suspected label errors, as the model sees them: given → suggested, score")
    artifacts.write_bytes(run / rf.SUSPECTS_PNG, png)


def suspects(run: Path, sp: SuspectsParams, p: TrainParams, aug: AugmentParams) -> dict[str, Any]:
    """Run the stage: out-of-fold probabilities, confident learning, suspects.csv/png and the marker."""
    prep = rf.Prepared.open(run)
    labels = prep.labels
    x, y, paths = _load(prep)
    fp = rf.fingerprint("suspects", upstream=[prep.fingerprint], params=[sp, p.learned(), aug])
    p = dataclasses.replace(p, epochs=params_mod.AUTO, step_budget=sp.step_budget)
    if rf.is_current(run / rf.SUSPECTS_MARKER, fp, [run / rf.SUSPECTS]):
        log.info("suspects: %s is up to date; skipped", run / rf.SUSPECTS)
        return rf.read_marker(run / rf.SUSPECTS_MARKER)
    t0 = time.perf_counter()
    probs = _probabilities(prep, x, y, fp, sp, p, aug)
    issues = confident.find_issues(probs, y)
    rows = rows_for(issues, probs, y, labels, paths)
    artifacts.write_text(run / rf.SUSPECTS, _csv(rows, COLUMNS))
    _gallery(run, x, issues, rows, sp.gallery)
    accuracy = float((probs.argmax(axis=1) == y).mean())
    record = rf.write_marker(
        run / rf.SUSPECTS_MARKER, fp, stage="suspects", version=__version__, images=int(len(y)),
        flagged=len(rows), folds=sp.folds, step_budget=sp.step_budget, out_of_fold_accuracy=accuracy,
        thresholds={labels[j]: round(float(t), 4) for j, t in enumerate(issues.thresholds)},
        confident_joint=issues.confident_joint.tolist(), seconds=round(time.perf_counter() - t0, 1),
        method="confident learning: the confident joint counts the errors, self-confidence ranks them "
               "(Northcutt et al. 2021)", estimated_errors=len(rows), top=rows[:sp.gallery])
    log.info("suspects: %d of %d train/val images flagged (out-of-fold accuracy %.4f) -> %s", len(rows), len(y),
             accuracy, run / rf.SUSPECTS)
    return record


def write_corrections(run: Path, force: bool = False) -> Path:
    """Pre-fill ``corrections.csv`` with each suspect's suggested label, for the user to review."""
    out = run / rf.CORRECTIONS
    if out.exists() and not force:
        raise UserError(f"{out} exists; edit it by hand, or add --force to replace it with the suggestions")
    with open(run / rf.SUSPECTS, newline="", encoding="utf-8") as fh:
        rows = [{**r, "label": r["suggested"], "given": r["label"]} for r in csv.DictReader(fh)]
    artifacts.write_text(out, _csv(rows, ("path", "label", "given", "score", "reason")))
    log.info("suspects: wrote %d suggestions to %s: review them (a label, `exclude`, or delete the row), then "
             "`make prepare`", len(rows), out)
    return out


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    parser.add_argument("--folds", type=int, help="cross-validation folds (default: [suspects] folds)")
    parser.add_argument("--write-corrections", action="store_true",
                        help="pre-fill corrections.csv with the suggested labels, for review")
    parser.add_argument("--force", action="store_true", help="with --write-corrections: replace an existing file")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: find the suspects, print the most suspicious, optionally pre-fill corrections.csv."""
    run = Path(args.run)
    sp = params_mod.load(args.params, "suspects", run.name)
    if args.folds is not None:
        sp = dataclasses.replace(sp, folds=args.folds)
    record = suspects(run, sp, params_mod.load(args.params, "train", run.name),
                      params_mod.load(args.params, "augment", run.name))
    cli.result(f"{record['flagged']} suspects of {record['images']} images -> {run / rf.SUSPECTS}")
    for r in record.get("top", [])[:10]:
        cli.result(f"  {r['score']:.3f}  {r['path']}: {r['label']} -> {r['suggested']}")
    if args.write_corrections:
        cli.result(f"suggestions for review: {write_corrections(run, args.force)}")
    return 0


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "suspects")

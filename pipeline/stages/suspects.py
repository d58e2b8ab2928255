"""Suspects: images whose label is probably wrong, found by cross-validation and confident learning.

    pipeline suspects --run runs/<name> [--folds 5] [--write-corrections]

Every image gets out-of-sample class probabilities. Train and val images: they are cut
into k stratified, seeded folds, and each fold is predicted by a model trained on the
others (a short training with the run's own recipe: ``[suspects] step_budget`` steps at
most, and the folds together at most twice the steps of the run's training, so a small
set is checked in about the time it trains). Test images: the trained model's probabilities
(it never trained on them), when it was trained on this preparation of the run; wrong
test labels distort the accuracy users report (Northcutt et al. 2021). A finished fold is
kept in ``suspects_folds/``, so a killed run resumes at the next one. Confident learning
(:mod:`pipeline.model.confident`) then flags the images whose label the probabilities
contradict. Writes ``suspects.csv`` (``path,label,suggested,score,reason``:
only the flagged images, most suspicious first; ``score`` is how sure the models are
that the label is wrong, 1 - p(given label)), the gallery ``suspects.png``, and the marker
``suspects.json``; ``make report`` shows them. ``--write-corrections`` pre-fills
``corrections.csv`` with the suggestions, for you to review before the next ``make prepare``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.model import confident, recipe
from pipeline.model.fitting import fit_on_arrays
from pipeline.model.infer import Predictor, predict_probs
from pipeline.shared import artifacts, bundle, cli, cluster, plots
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError
from pipeline.shared.params import AugmentParams, ClusterParams, SuspectsParams, TrainParams

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "suggested", "score", "reason")
RANKED_COLUMNS = ("path", "label", "suggested", "confidence", "score", "split", "flagged")
REVIEW_SHARE = 0.005  # the review queue: the most doubtful 0.5% of the checked images (the strict cut marked)...
REVIEW_MIN = 25       # ... and at least this many
FOLD_SHARE = 2.0      # the folds together train at most this many times the steps of the run's own training
FOLD_MIN_STEPS = 100  # ... but each at least this many


# ---------------------------------------------------------------- folds
def folds(y: np.ndarray, k: int, seed: int, copies: np.ndarray | None = None) -> list[np.ndarray]:
    """Held-out indices of each of ``k`` stratified, seeded folds (a class smaller than k: fewer folds hold it;
    multi-label data: shuffled, seeded folds). Images with the same ``copies`` id (the same pixels) are held
    out together, in the fold of the first of them: a fold's model that learned one copy under one label
    would otherwise "find" the other copy's label wrong, whichever label is right."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if np.ndim(y) == 2:
        held = [h for _, h in KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)))]
    else:
        splitter = StratifiedKFold(n_splits=effective_folds(y, k), shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a class smaller than the folds: said once, by the stage
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            held = [h for _, h in splitter.split(np.zeros(len(y)), y)]
    if copies is None:
        return held
    fold_of = np.empty(len(y), np.int64)
    for f, h in enumerate(held):
        fold_of[h] = f
    _, first, which = np.unique(copies, return_index=True, return_inverse=True)
    fold_of = fold_of[first[which]]
    return [np.flatnonzero(fold_of == f) for f in range(len(held))]


def same_pixels(x: np.ndarray) -> np.ndarray:
    """An id per image, shared by the images whose prepared arrays are identical (copies of one file)."""
    ids: dict[bytes, int] = {}
    return np.array([ids.setdefault(hashlib.sha1(row.tobytes()).digest(), len(ids)) for row in x], np.int64)


def effective_folds(y: np.ndarray, k: int) -> int:
    """The folds ``k`` asked for; fewer (at least 2) only when even the largest class has fewer images than
    that (scikit-learn's stratified folds need one class that fills them); multi-label data: ``k``.

    A class smaller than ``k`` does not lower the folds: fewer folds hold it out, and whichever fold holds
    one of its images, the fold's model saw the same share of the rest of its class (fewer folds would only
    train every other check on less data: one single-image class made it 2 folds of half the data)."""
    if np.ndim(y) == 2 or not len(y):
        return k
    return int(min(k, max(2, np.bincount(y).max())))


def small_classes(y: np.ndarray, k: int) -> dict[int, int]:
    """The classes (index: images) with fewer images than the ``k`` folds (single-label data)."""
    if np.ndim(y) == 2 or not len(y):
        return {}
    counts = np.bincount(y)
    return {c: int(n) for c, n in enumerate(counts.tolist()) if 0 < n < k}


def fold_probs(x: np.ndarray, y: np.ndarray, held: np.ndarray, p: TrainParams, aug: AugmentParams,
               prep: rf.Prepared, desc: str) -> np.ndarray:
    """Train on everything but ``held`` (the run's recipe, ``p.step_budget`` steps), predict ``held``."""
    keep = np.setdiff1d(np.arange(len(y)), held)
    model = fit_on_arrays(np.asarray(x[keep]), y[keep], p, aug, len(prep.labels), prep.hflip, prep.imbalance_ratio,
                          desc)
    return Predictor(bundle.Bundle(model, prep.labels, prep.preprocess, {}), 1024)(np.asarray(x[held])).probs


# ---------------------------------------------------------------- the stage
@dataclass
class Checked:
    """The images checked (train and val, then test when a model trained on this run covers it): their
    prepared arrays, labels, files and split, and their out-of-sample class probabilities."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    splits: list[str]
    copies: np.ndarray  # an id per image, the same for identical ones (:func:`same_pixels`)
    probs: np.ndarray | None = None


def _load(prep: rf.Prepared) -> Checked:
    """The train+val images and labels, and their manifest paths (same order)."""
    x = np.concatenate([prep.x(s, mmap=False) for s in ("train", "val")])
    y = np.concatenate([prep.y(s) for s in ("train", "val")])
    paths = prep.paths("train", "val")
    if len(paths) != len(y):
        raise artifacts.StageError(f"{prep.run}: the manifest does not match the prepared arrays; re-run `make prepare`")
    if len(np.unique(y)) < 2:
        raise UserError(f"{prep.run}: the train and val splits hold fewer than 2 classes; nothing to cross-check")
    splits = ["train"] * len(prep.y("train")) + ["val"] * len(prep.y("val"))
    return Checked(x, y, paths, splits, same_pixels(x))


def fold_steps(p: TrainParams, aug: AugmentParams, prep: rf.Prepared, sp: SuspectsParams) -> int:
    """The step budget of a fold: ``[suspects] step_budget``, but the folds together no more than
    :data:`FOLD_SHARE` times the steps of the run's own training, so small data checks in about the
    time it trains (at least :data:`FOLD_MIN_STEPS` a fold; the recipe's ``min_epochs`` passes still
    apply, as in training)."""
    y = prep.y("train")
    counts = (y.sum(axis=0) if prep.multi else np.bincount(y, minlength=len(prep.labels))).tolist()
    main = recipe.plan(p, aug, len(y), counts, prep.hflip, prep.imbalance_ratio)
    return int(min(sp.step_budget, max(FOLD_MIN_STEPS, round(FOLD_SHARE * main.total_steps / sp.folds))))


def _fold_name(k: int, n: int) -> str:
    return f"fold{k + 1}of{n}"


def _train_fold(prep: rf.Prepared, c: Checked, held_out: list[np.ndarray], k: int, fp: str, p: TrainParams,
                aug: AugmentParams) -> np.ndarray:
    """Train fold ``k`` and keep its probabilities in ``suspects_folds/`` (a killed run resumes after it)."""
    work, held, name = prep.run / rf.SUSPECTS_WORK, held_out[k], _fold_name(k, len(held_out))
    t0 = time.perf_counter()
    probs = fold_probs(c.x, c.y, held, p, aug, prep, name)
    artifacts.save_npy(work / f"{name}.npy", probs)
    rf.write_marker(work / f"{name}.json", fp, fold=k + 1, folds=len(held_out), images=int(len(held)),
                    seconds=round(time.perf_counter() - t0, 1))
    log.info("suspects: %s: %d images in %.0f s", name, len(held), time.perf_counter() - t0)
    return probs


def _fold_task(run: Path, k: int, fp: str, sp: SuspectsParams, p: TrainParams, aug: AugmentParams) -> np.ndarray:
    """One fold as a Ray task: the same arrays, folds and seeds as the local loop, read from the run folder."""
    prep = rf.Prepared.open(run)
    c = _load(prep)
    return _train_fold(prep, c, folds(c.y, sp.folds, prep.seed, c.copies), k, fp, p, aug)


def _probabilities(prep: rf.Prepared, c: Checked, fp: str, sp: SuspectsParams, p: TrainParams,
                   aug: AugmentParams, cp: ClusterParams | None = None) -> np.ndarray:
    """Out-of-fold probabilities of every image; finished folds are read back, the others trained (one after
    another, or with ``[cluster] engine = "ray"`` as parallel Ray tasks)."""
    work = prep.run / rf.SUSPECTS_WORK
    work.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(work)
    held_out = folds(c.y, sp.folds, prep.seed, c.copies)
    probs = np.zeros((len(c.y), len(prep.labels)), np.float32)
    todo = []
    for k, held in enumerate(held_out):
        name = _fold_name(k, len(held_out))
        if rf.is_current(work / f"{name}.json", fp, [work / f"{name}.npy"]):
            log.info("suspects: %s done before; kept", name)
            probs[held] = artifacts.load_npy(work / f"{name}.npy", "fold probabilities", mmap=False)
        else:
            todo.append(k)
    if cp is not None and cp.engine == "ray" and todo:
        tasks = {k: cluster.remote(cp, _fold_task, prep.run.resolve(), k, fp, sp, p, aug) for k in todo}
        for k in tqdm(todo, desc="suspects: folds (ray)", unit="fold"):
            probs[held_out[k]] = tasks[k].get()
        return probs
    for k in tqdm(todo, desc="suspects: folds", unit="fold"):
        probs[held_out[k]] = _train_fold(prep, c, held_out, k, fp, p, aug)
    return probs


def _trained_model(prep: rf.Prepared) -> Path | None:
    """The run's bundle when it was trained on this very preparation (its test split never trained on),
    else None (said in the log)."""
    model_dir = prep.run / rf.BUNDLE
    if not bundle.is_bundle(model_dir):
        log.warning("suspects: no trained model in %s yet: the test split is not checked (make train, then "
                    "make suspects again, covers it)", prep.run)
        return None
    prep.check_bundle(bundle.read_labels(model_dir), bundle.read_preprocess_of(model_dir).input_shape,
                      f"the model {model_dir}")
    if bundle.read_info(model_dir).get("prepared") != prep.fingerprint:
        log.warning("suspects: %s was trained on an earlier preparation of this run: the test split is not "
                    "checked (make train first)", model_dir)
        return None
    return model_dir


def _with_test(prep: rf.Prepared, c: Checked, model_dir: Path | None) -> Checked:
    """The test split added with the trained model's probabilities (it never saw them: out of sample)."""
    if model_dir is None or not len(prep.y("test")):
        return c
    x_test, y_test = prep.x("test", mmap=False), prep.y("test")
    test_probs = predict_probs(bundle.load(model_dir), x_test, 1024)
    return Checked(np.concatenate([c.x, x_test]), np.concatenate([c.y, y_test]), c.paths + prep.paths("test"),
                   c.splits + ["test"] * len(y_test), np.concatenate([c.copies, -1 - np.arange(len(y_test))]),
                   np.concatenate([c.probs, test_probs]))


def rows_for(issues: confident.Issues, c: Checked, labels: list[str]) -> list[dict[str, Any]]:
    """One row per flagged image, most suspicious first."""
    out = []
    for i, s in zip(issues.index.tolist(), issues.suggested.tolist()):
        given, p = labels[c.y[i]], c.probs[i]
        who = "the trained model (never trained on the test split)" if c.splits[i] == "test" else \
            "cross-validated models"
        out.append({"path": c.paths[i], "label": given, "suggested": labels[s], "score": round(1.0 - float(p[c.y[i]]), 4),
                    "reason": f"{c.splits[i]} split: {who}: {labels[s]!r} {p[s]:.2f}, given {given!r} {p[c.y[i]]:.2f}",
                    "split": c.splits[i]})
    return out


def ranked_rows(issues: confident.Issues, c: Checked, labels: list[str]) -> list[dict[str, Any]]:
    """The most doubtful images, whether or not confident learning flagged them, most doubtful first (lowest
    probability of the given label): the review queue, deep enough to hold the real errors the strict cut
    misses (:data:`REVIEW_SHARE` of the images, at least :data:`REVIEW_MIN`, and every flagged one)."""
    n = len(c.y)
    quality = c.probs[np.arange(n), c.y]
    depth = max(len(issues.index), math.ceil(REVIEW_SHARE * n), REVIEW_MIN)
    order = np.argsort(quality, kind="stable")[:depth]
    flagged = np.isin(order, issues.index)
    others = c.probs[order].copy()
    others[np.arange(len(order)), c.y[order]] = -1.0
    # a flagged image: the likeliest other label; one past the strict cut: the model's likeliest label, which
    # may be the given one (then accepting the suggestion keeps it: a doubt to look at, not a change to make)
    suggested = np.where(flagged, others.argmax(axis=1), c.probs[order].argmax(axis=1))
    return [{"path": c.paths[i], "label": labels[c.y[i]], "suggested": labels[int(s)],
             "confidence": round(float(c.probs[i, s]), 4), "score": round(1.0 - float(quality[i]), 4),
             "split": c.splits[i], "flagged": bool(f)}
            for i, s, f in zip(order.tolist(), suggested.tolist(), flagged.tolist())]


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _gallery(run: Path, x: np.ndarray, shown: np.ndarray, rows: list[dict[str, Any]], n: int) -> None:
    shown = shown[:n]
    if not len(shown):
        (run / rf.SUSPECTS_PNG).unlink(missing_ok=True)
        return
    titles = [plots.pair_title(r["label"], r["suggested"], r["score"]) for r in rows[:n]]
    png = plots.gallery(np.asarray(x[shown]), titles, [r["path"] for r in rows[:n]],
                        "Suspected label errors, as the model sees them: given → suggested, score")
    artifacts.write_bytes(run / rf.SUSPECTS_PNG, png)


def _marker(run: Path, fp: str, c: Checked, rows: list[dict[str, Any]], sp: SuspectsParams, steps: int,
            seconds: float, **found: Any) -> dict[str, Any]:
    """Write the marker: what was checked and how, the flagged rows (both tasks alike), and what the task's
    confident learning ``found``."""
    by_split = {s: c.splits.count(s) for s in ("train", "val", "test")}
    return rf.write_marker(
        run / rf.SUSPECTS_MARKER, fp, stage="suspects", version=__version__,
        prepared=rf.read_marker(run / rf.PREPARE).get("fingerprint"), images=len(c.y), checked=by_split,
        test_checked=by_split["test"] > 0, flagged=len(rows),
        flagged_by_split={s: sum(r["split"] == s for r in rows) for s in by_split}, folds=sp.folds,
        step_budget=sp.step_budget, fold_steps=steps, seconds=round(seconds, 1),
        top=[{k: v for k, v in r.items() if k != "image"} for r in rows[:sp.gallery]], **found)


def _record(run: Path, fp: str, c: Checked, issues: confident.Issues, rows: list[dict[str, Any]], labels: list[str],
            sp: SuspectsParams, steps: int, seconds: float) -> dict[str, Any]:
    """The marker of single-label data: what was checked, found and how."""
    folded = [i for i, s in enumerate(c.splits) if s != "test"]
    return _marker(
        run, fp, c, rows, sp, steps, seconds,
        out_of_fold_accuracy=float((c.probs[folded].argmax(axis=1) == c.y[folded]).mean()),
        thresholds={labels[j]: round(float(t), 4) for j, t in enumerate(issues.thresholds)},
        confident_joint=issues.confident_joint.tolist(),
        method="confident learning: the confident joint counts the errors, self-confidence ranks them "
               "(Northcutt et al. 2021)", estimated_errors=len(rows))


# ---------------------------------------------------------------- several labels per image
def multi_rows(issues: confident.LabelIssues, c: Checked, labels: list[str]) -> list[dict[str, Any]]:
    """One row per image with a flagged label decision, most suspicious first: its given labels, the labels
    suggested (the wrong tags removed, the missing ones added), and why."""
    by_image: dict[int, list[int]] = {}
    for k, i in enumerate(issues.image.tolist()):
        by_image.setdefault(i, []).append(k)
    out = []
    for i, ks in by_image.items():
        given = {j for j in range(len(labels)) if c.y[i, j]}
        flips = [int(issues.label[k]) for k in ks]
        why = ", ".join(f"{labels[j]!r} {'wrong' if j in given else 'missing'} (p {c.probs[i, j]:.2f})" for j in flips)
        who = "the trained model" if c.splits[i] == "test" else "cross-validated models"
        out.append({"path": c.paths[i], "label": rf.MULTI_JOIN.join(labels[j] for j in sorted(given)),
                    "suggested": rf.MULTI_JOIN.join(labels[j] for j in sorted(given ^ set(flips))),
                    "score": round(1.0 - float(issues.quality[ks[0]]), 4), "reason": f"{c.splits[i]} split: {who}: {why}",
                    "split": c.splits[i], "image": i})
    return out


def _multi_label(run: Path, fp: str, c: Checked, labels: list[str], sp: SuspectsParams, steps: int,
                 t0: float) -> dict[str, Any]:
    """Multi-label data: per-label confident learning (:func:`pipeline.model.confident.find_label_issues`),
    suspects.csv (one row per image, the suggested label set), the ranked queue, gallery and marker."""
    issues = confident.find_label_issues(c.probs, c.y)
    rows = multi_rows(issues, c, labels)
    artifacts.write_text(run / rf.SUSPECTS_RANKED, _csv([{**r, "confidence": r["score"], "flagged": True}
                                                         for r in rows], RANKED_COLUMNS))
    artifacts.write_text(run / rf.SUSPECTS, _csv(rows, COLUMNS))
    _gallery(run, c.x, np.array([r["image"] for r in rows], np.int64), rows, sp.gallery)
    folded = [i for i, s in enumerate(c.splits) if s != "test"]
    record = _marker(
        run, fp, c, rows, sp, steps, time.perf_counter() - t0, task="multi", flagged_decisions=len(issues.image),
        # the share of right label decisions (at 0.5) of the cross-validated models
        out_of_fold_accuracy=float(((c.probs[folded] >= 0.5) == (c.y[folded] == 1)).mean()) if folded else 0.0,
        estimated_by_label={labels[j]: int(n) for j, n in enumerate(issues.estimated)},
        estimated_errors=len(issues.image),
        method="confident learning on each label as present/absent (a wrong tag and a missing tag), ranked by "
               "label quality (Northcutt et al. 2021)")
    log.info("suspects: %d of %d images with a doubtful label (%d decisions) -> %s", len(rows), len(c.y),
             len(issues.image), run / rf.SUSPECTS)
    return record


def suspects(run: Path, sp: SuspectsParams, p: TrainParams, aug: AugmentParams,
             cp: ClusterParams | None = None) -> dict[str, Any]:
    """Run the stage: out-of-fold probabilities (and the trained model's on the test split), confident
    learning, suspects.csv/png and the marker."""
    prep = rf.Prepared.open(run)
    model_dir = _trained_model(prep)
    sha = bundle.read_info(model_dir)["model_sha256"] if model_dir else None
    fp = rf.fingerprint("suspects", upstream=[prep.fingerprint, sha], params=[sp, p.learned(), aug])
    if rf.is_current(run / rf.SUSPECTS_MARKER, fp, [run / rf.SUSPECTS, run / rf.SUSPECTS_RANKED]):
        log.info("suspects: %s is up to date; skipped", run / rf.SUSPECTS)
        return rf.read_marker(run / rf.SUSPECTS_MARKER)
    t0 = time.perf_counter()
    c = _load(prep)
    k = effective_folds(c.y, sp.folds)
    small = small_classes(c.y, k)
    if small:
        log.warning("suspects: %d class(es) with fewer images than the %d folds (%s): a model that checks one of "
                    "their images saw few or none of the rest (an only image cannot be checked: it comes out as "
                    "a suspect)", len(small), k, ", ".join(f"{prep.labels[i]} {n}" for i, n in list(small.items())[:10]))
    if k < sp.folds:
        log.warning("suspects: the largest class has %d images: %d folds instead of %d", np.bincount(c.y).max(), k,
                    sp.folds)
        sp = dataclasses.replace(sp, folds=k)  # what runs, what the marker and the report say
    steps = fold_steps(p, aug, prep, sp)
    log.info("suspects: %d folds of %d optimizer steps each", sp.folds, steps)
    c.probs = _probabilities(prep, c, fp, sp, dataclasses.replace(p, epochs=params_mod.AUTO, step_budget=steps), aug,
                             cp)
    c = _with_test(prep, c, model_dir)
    if prep.multi:
        return _multi_label(run, fp, c, prep.labels, sp, steps, t0)
    issues = confident.find_issues(c.probs, c.y)
    rows = rows_for(issues, c, prep.labels)
    artifacts.write_text(run / rf.SUSPECTS_RANKED, _csv(ranked_rows(issues, c, prep.labels), RANKED_COLUMNS))
    artifacts.write_text(run / rf.SUSPECTS, _csv(rows, COLUMNS))
    _gallery(run, c.x, issues.index, rows, sp.gallery)
    record = _record(run, fp, c, issues, rows, prep.labels, sp, steps, time.perf_counter() - t0)
    log.info("suspects: %d of %d images flagged (%s) -> %s", len(rows), len(c.y),
             ", ".join(f"{s} {n}" for s, n in record["checked"].items() if n), run / rf.SUSPECTS)
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
    cli.add_params_option(parser)
    parser.add_argument("--folds", type=int, help="cross-validation folds (default: [suspects] folds)")
    parser.add_argument("--write-corrections", action="store_true",
                        help="pre-fill corrections.csv with the suggested labels, for review")
    parser.add_argument("--force", action="store_true", help="with --write-corrections: replace an existing file")
    cli.add_engine_option(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: find the suspects, print the most suspicious, optionally pre-fill corrections.csv."""
    run = Path(args.run)
    sp = params_mod.load(args.params, "suspects", run.name)
    if args.folds is not None:
        sp = dataclasses.replace(sp, folds=args.folds)
    record = suspects(run, sp, params_mod.load(args.params, "train", run.name),
                      params_mod.load(args.params, "augment", run.name), cli.cluster_params(args, run.name))
    checked = ", ".join(f"{n} {s}" for s, n in record.get("checked", {}).items() if n)
    cli.result(f"{record['flagged']} suspects of {record['images']} images ({checked}) -> {run / rf.SUSPECTS}")
    for r in record.get("top", [])[:10]:
        cli.result(f"  {r['score']:.3f}  {r['path']}: {r['label']} -> {r['suggested']}")
    if args.write_corrections:
        cli.result(f"suggestions for review: {write_corrections(run, args.force)}")
    return 0


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "suspects")

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
from pipeline.model import confident, recipe
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


class _EpochBar:
    """A tqdm bar over a fold's epochs (a Keras callback), with its ETA."""

    def __init__(self, epochs: int, desc: str) -> None:
        import keras

        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}")

            def on_train_end(self, logs: dict | None = None) -> None:
                bar.close()

        self.callback = Callback()


def fold_probs(x: np.ndarray, y: np.ndarray, held: np.ndarray, p: TrainParams, aug: AugmentParams,
               labels: list[str], cfg: Any, facts: dict[str, Any], desc: str) -> np.ndarray:
    """Train on everything but ``held`` (the run's recipe, ``p.step_budget`` steps), predict ``held``."""
    import keras

    from pipeline.model.infer import Predictor
    from pipeline.data.batches import make_dataset
    from pipeline.stages.train import Data, compile_model

    keep = np.setdiff1d(np.arange(len(y)), held)
    data = Data(np.asarray(x[keep]), y[keep], x[:0], y[:0], len(labels))
    counts = np.bincount(y[keep], minlength=len(labels)).tolist()
    plan = recipe.plan(p, aug, len(keep), counts, facts["symmetry"], facts["imbalance_ratio"])
    keras.utils.set_random_seed(p.seed)
    model = compile_model(p, plan, data, None)
    from pipeline.data.augment import build_augmenter

    augmenter = build_augmenter(dataclasses.replace(aug, hflip=plan.hflip), p.seed)
    ds = make_dataset(data.x_train, data.y_train, p.batch_size, True, p.seed, augmenter, n_classes=len(labels),
                      class_weights=plan.class_weights, data_threads=p.data_threads)
    model.fit(ds, epochs=plan.epochs, verbose=0, shuffle=False, callbacks=[_EpochBar(plan.epochs, desc).callback])
    return Predictor(bundle.Bundle(model, labels, cfg, {}), 1024)(np.asarray(x[held])).probs


# ---------------------------------------------------------------- the stage
def _load(run: Path) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray, list[str]]:
    """The prepare marker, labels, train+val images and labels, and their manifest paths (same order)."""
    marker = rf.require(run, rf.PREPARE, "prepare")
    labels = bundle.labels_from_map(artifacts.read_json(run / rf.LABELS, "label map"), str(run / rf.LABELS))
    xs = [artifacts.load_npy(run / rf.x_file(s), f"prepared {s} images", mmap=False) for s in ("train", "val")]
    ys = [np.asarray(artifacts.load_npy(run / rf.y_file(s), f"prepared {s} labels")) for s in ("train", "val")]
    with open(run / rf.MANIFEST, newline="", encoding="utf-8") as fh:
        by_split: dict[str, list[str]] = {"train": [], "val": []}
        for row in csv.DictReader(fh):
            if row["split"] in by_split:
                by_split[row["split"]].append(row["path"])
    paths = by_split["train"] + by_split["val"]
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(paths) != len(y):
        raise artifacts.StageError(f"{run}: the manifest does not match the prepared arrays; re-run `make prepare`")
    if len(np.unique(y)) < 2:
        raise UserError(f"{run}: the train and val splits hold fewer than 2 classes; nothing to cross-check")
    return marker, labels, x, y, paths


def _probabilities(run: Path, x: np.ndarray, y: np.ndarray, labels: list[str], fp: str, sp: SuspectsParams,
                   p: TrainParams, aug: AugmentParams, marker: dict[str, Any]) -> np.ndarray:
    """Out-of-fold probabilities of every image; finished folds are read back, the others trained."""
    work = run / rf.SUSPECTS_WORK
    work.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(work)
    cfg = bundle.read_preprocess_dict(marker["preprocess"], str(run / rf.PREPARE))
    dataset = artifacts.read_json(run / rf.DATASET, "dataset summary") if (run / rf.DATASET).is_file() else {}
    facts = {"symmetry": dataset.get("choices", {}).get("hflip"),
             "imbalance_ratio": float(marker.get("ingest", {}).get("imbalance_ratio", 10.0))}
    held_out = folds(y, sp.folds, int(marker["params"]["seed"]))
    probs = np.zeros((len(y), len(labels)), np.float32)
    for k in tqdm(range(len(held_out)), desc="suspects: folds", unit="fold"):
        held, name = held_out[k], f"fold{k + 1}of{len(held_out)}"
        if rf.is_current(work / f"{name}.json", fp, [work / f"{name}.npy"]):
            log.info("suspects: %s done before; kept", name)
            probs[held] = artifacts.load_npy(work / f"{name}.npy", "fold probabilities", mmap=False)
            continue
        t0 = time.perf_counter()
        probs[held] = fold_probs(x, y, held, p, aug, labels, cfg, facts, name)
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
    marker, labels, x, y, paths = _load(run)
    learned = {k: v for k, v in params_mod.to_dict(p).items() if k not in ("streaming", "intra_op_threads",
                                                                          "inter_op_threads", "data_threads")}
    p = dataclasses.replace(p, epochs=params_mod.AUTO, step_budget=sp.step_budget)
    fp = artifacts.fingerprint(marker.get("fingerprint"), params_mod.to_dict(sp), learned, params_mod.to_dict(aug),
                               __version__)
    if rf.is_current(run / rf.SUSPECTS_MARKER, fp, [run / rf.SUSPECTS]):
        log.info("suspects: %s is up to date; skipped", run / rf.SUSPECTS)
        return rf.read_marker(run / rf.SUSPECTS_MARKER)
    t0 = time.perf_counter()
    probs = _probabilities(run, x, y, labels, fp, sp, p, aug, marker)
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
    parser.add_argument("--run", required=True, help="a prepared run folder")
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


if __name__ == "__main__":
    import sys

    from pipeline.shared import cli

    sys.exit(cli.run_module("suspects"))
